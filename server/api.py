"""What the engine promises the service: request and event types, errors, and the observer
through which it reports what it does (the service turns that into Prometheus metrics)."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum


class Reason(StrEnum):
    """Why a request failed, for programs: clients match on this, never on the message.

    `server/errors.py` maps each reason to a gRPC status and an HTTP status in one table; the
    gRPC API sends it as trailing metadata `submodel-error-reason`, the HTTP API as the error
    object's `code`."""

    INVALID_FIELD = "invalid_field"  # a bad field value; `field` names it
    PROMPT_TOO_LONG = "prompt_too_long"  # the prompt does not fit the context window
    FIM_UNSUPPORTED = "fim_unsupported"  # `suffix` sent, the tokenizer has no FIM tokens
    CHAT_UNSUPPORTED = "chat_unsupported"  # `messages` sent, the tokenizer has no template
    UNKNOWN_LANGUAGE = "unknown_language"  # a language or model name the server does not serve
    UNAUTHENTICATED = "unauthenticated"  # missing or wrong bearer token
    QUEUE_FULL = "queue_full"
    DRAINING = "draining"  # shutting down: retry on another replica
    DEADLINE_EXCEEDED = "deadline_exceeded"
    CANCELLED = "cancelled"  # the client went away
    STORE_INVALID = "store_invalid"  # a reload found the store damaged; the old set serves
    INTERNAL = "internal"  # a bug or an engine failure (see the server log)


class EngineError(Exception):
    """A request that cannot be served. `message` says what to fix; `reason` says why for
    programs; `field` names the request field at fault, if one is."""

    default_reason = Reason.INTERNAL

    def __init__(self, message: str, reason: Reason | None = None,
                 field: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.reason = reason or self.default_reason
        self.field = field


class InvalidRequestError(EngineError):
    """A bad field or a prompt longer than the context window (gRPC INVALID_ARGUMENT)."""

    default_reason = Reason.INVALID_FIELD


class UnknownLanguageError(EngineError):
    """A language the store does not serve (gRPC NOT_FOUND)."""

    default_reason = Reason.UNKNOWN_LANGUAGE


class QueueFullError(EngineError):
    """The bounded queue is full (gRPC RESOURCE_EXHAUSTED)."""

    default_reason = Reason.QUEUE_FULL


class DrainingError(EngineError):
    """The engine is shutting down and takes no new work (gRPC UNAVAILABLE)."""

    default_reason = Reason.DRAINING


class StoreInvalidError(EngineError):
    """A reload of the sub-models refused: the store on disk is damaged or made from other
    base weights; the message names the file. The languages served before keep serving
    (gRPC FAILED_PRECONDITION)."""

    default_reason = Reason.STORE_INVALID


@dataclass(frozen=True)
class Reload:
    """What a reload of the sub-models changed (each sorted)."""

    languages: tuple[str, ...]  # served now
    added: tuple[str, ...]
    removed: tuple[str, ...]
    changed: tuple[str, ...]  # served before and now, with another mask file


@dataclass(frozen=True)
class SamplingParams:
    max_tokens: int = 256
    temperature: float = 0.0  # 0 = greedy
    top_p: float = 1.0
    top_k: int = 0  # 0 = off
    stop: tuple[str, ...] = ()
    seed: int | None = None
    n: int = 1


@dataclass(frozen=True)
class Message:
    """One chat turn; rendered with the tokenizer's chat template."""

    role: str  # system | user | assistant
    content: str


@dataclass(frozen=True)
class GenerationRequest:
    """Exactly one prompt form: `prompt` (plain completion), `prompt` + `suffix` (fill in the
    middle: `prompt` is the text before the cursor, `suffix` the text after it), or
    `messages` (chat)."""

    prompt: str
    language: str  # one of the store's languages, or vocabulary.DENSE
    params: SamplingParams = field(default_factory=SamplingParams)
    deadline: float | None = None  # time.monotonic() after which the request is abandoned
    suffix: str | None = None
    messages: tuple[Message, ...] = ()


@dataclass(frozen=True)
class TokenEvent:
    sample: int  # which of the n samples
    text: str  # newly decoded text (may be "" while a stop string or UTF-8 char is pending)
    token_id: int


@dataclass(frozen=True)
class FinishEvent:
    sample: int
    finish_reason: str  # "stop" | "length" | "cancelled" | "deadline" | "error"
    text: str  # the whole completion of this sample
    tokens: int  # generated tokens of this sample


@dataclass(frozen=True)
class DoneEvent:
    """Last event of a request, after every sample's FinishEvent."""

    prompt_tokens: int
    generated_tokens: int
    queue_seconds: float
    ttft_seconds: float  # submit to first generated token
    total_seconds: float


class EngineObserver:
    """Callbacks from the engine thread; the defaults do nothing."""

    def queue_depth(self, language: str, depth: int) -> None: ...

    def batch_size(self, size: int) -> None: ...

    def mask_switch(self, seconds: float) -> None: ...

    def token_latency(self, seconds: float) -> None: ...

    def weight_bytes(self, kind: str, nbytes: int) -> None: ...

    def prefix_cache_lookup(self, language: str, prompt_tokens: int, hit_tokens: int) -> None:
        """A prefill looked its prompt up in the prefix cache; `hit_tokens` were reused."""

    def prefix_cache_bytes(self, nbytes: int) -> None: ...

    def sub_models(self, count: int) -> None:
        """Language sub-models served, at start and after each reload."""
