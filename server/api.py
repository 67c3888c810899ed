"""What the engine promises the service: request and event types, errors, and the observer
through which it reports what it does (the service turns that into Prometheus metrics)."""

from __future__ import annotations

from dataclasses import dataclass, field

DENSE = "dense"


class EngineError(Exception):
    """Base of the errors a caller can act on; the message says what to fix."""


class InvalidRequestError(EngineError):
    """A bad field or a prompt longer than the context window (gRPC INVALID_ARGUMENT)."""


class UnknownLanguageError(EngineError):
    """A language the store does not serve (gRPC NOT_FOUND)."""


class QueueFullError(EngineError):
    """The bounded queue is full (gRPC RESOURCE_EXHAUSTED)."""


class DrainingError(EngineError):
    """The engine is shutting down and takes no new work (gRPC UNAVAILABLE)."""


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
class GenerationRequest:
    prompt: str
    language: str  # one of the store's languages, or DENSE
    params: SamplingParams = field(default_factory=SamplingParams)
    deadline: float | None = None  # time.monotonic() after which the request is abandoned


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
