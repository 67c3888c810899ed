"""The request path both APIs share: route, submit to the engine, pass its events on, and
count the request once in the metrics. gRPC (`service.py`) and HTTP (`http_api.py`) only
translate their wire formats to a `Job` and the events back; they share one engine, so their
requests batch together."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from submodel.server.api import (
    DoneEvent,
    EngineError,
    FinishEvent,
    GenerationRequest,
    InvalidRequestError,
    Message,
    Reason,
    Reload,
    SamplingParams,
    StoreInvalidError,
    TokenEvent,
    UnknownLanguageError,
)
from submodel.server.errors import status_label
from submodel.server.metrics import UNROUTED, Metrics

log = logging.getLogger("submodel.server")

EARLY = ("cancelled", "deadline", "error")  # finish reasons that fail the request
DEFAULT_MAX_TOKENS = 256
# Size limits, checked before any work (README "Limits"); grpc itself refuses messages over
# its 4 MiB receive limit.
MAX_TEXT_BYTES = 256 * 1024  # what the router reads: prompt + suffix, or the chat's contents
MAX_STOP = 8
MAX_STOP_CHARS = 256
MAX_FILENAME_CHARS = 4096
MAX_LANGUAGE_CHARS = 64
MAX_MESSAGES = 256


def check_sizes(text: str, field: str, filename: str, hint: str | None) -> None:
    """The size limits every request shares; raises InvalidRequestError naming the field."""
    size = len(text.encode())
    if size > MAX_TEXT_BYTES:
        raise InvalidRequestError(f"{field} is {size} bytes; the limit is {MAX_TEXT_BYTES}",
                                  field=field)
    if len(filename) > MAX_FILENAME_CHARS:
        raise InvalidRequestError(f"filename is longer than the limit of {MAX_FILENAME_CHARS} "
                                  "characters", field="filename")
    if hint is not None and len(hint) > MAX_LANGUAGE_CHARS:
        raise InvalidRequestError(f"language is longer than the limit of {MAX_LANGUAGE_CHARS} "
                                  "characters", field="language")


def check_stop(stop) -> None:
    """Stop strings either API accepts; raises InvalidRequestError."""
    if len(stop) > MAX_STOP:
        raise InvalidRequestError(f"at most {MAX_STOP} stop strings (got {len(stop)})",
                                  field="stop")
    for s in stop:
        if not 0 < len(s) <= MAX_STOP_CHARS:
            raise InvalidRequestError(f"stop strings must have 1 to {MAX_STOP_CHARS} "
                                      f"characters (got {len(s)})", field="stop")


@dataclass(frozen=True)
class Job:
    """One generation request, whichever protocol it came by."""

    params: SamplingParams
    prompt: str = ""  # with `suffix`: the text before the cursor
    suffix: str | None = None  # fill in the middle
    messages: tuple[Message, ...] = ()  # chat (instead of prompt)
    filename: str = ""
    hint: str | None = None  # a language, "dense", or None to route by filename and content
    deadline: float | None = None  # time.monotonic()

    def routing_text(self) -> str:
        """What the router reads: the code around the cursor, or the chat's contents."""
        if self.messages:
            return "\n".join(m.content for m in self.messages)
        return self.prompt if self.suffix is None else f"{self.prompt}\n{self.suffix}"


@dataclass(frozen=True)
class Route:
    """Where a request went, and how long deciding took. The first item `run` yields."""

    language: str
    confidence: float
    source: str
    seconds: float

    @property
    def sub_model(self) -> str:
        return self.language


@dataclass
class Call:
    """One request's bookkeeping; a context manager that records it once when it ends: ok,
    the EngineError's reason, cancelled if the consumer stopped early, internal otherwise."""

    metrics: Metrics
    protocol: str
    started: float = field(default_factory=time.monotonic)
    language: str = UNROUTED
    source: str = UNROUTED
    deadline: float | None = None

    def __enter__(self) -> Call:
        return self

    def __exit__(self, kind, exc, _tb) -> None:
        if exc is None:
            reason = None
        elif isinstance(exc, EngineError):
            reason = exc.reason
        elif isinstance(exc, GeneratorExit):  # the consumer went away
            reason = self.abandoned()
        else:
            reason = Reason.INTERNAL
        routed = self.language != UNROUTED
        self.metrics.finished(self.language, self.source, status_label(reason), self.protocol,
                              time.monotonic() - self.started if routed else None)

    def abandoned(self) -> Reason:
        """Why a request ended early: the client's deadline, or the client went away."""
        if self.deadline is not None and time.monotonic() >= self.deadline:
            return Reason.DEADLINE_EXCEEDED
        return Reason.CANCELLED


class Generations:
    """Route + engine + metrics, shared by every API of one server process."""

    def __init__(self, engine, router, metrics: Metrics) -> None:
        self.engine = engine
        self.router = router
        self.metrics = metrics
        self.in_flight = 0  # generations admitted by the engine and not finished
        self._lock = threading.Lock()

    def reload(self) -> Reload:
        """Reload the engine's sub-models from its store (the ReloadSubModels RPC, SIGHUP),
        then route to the new set. Between the engine's swap and the router's, a request
        routed to a removed language is answered NOT_FOUND and one hinted to an added
        language too: the reload has not returned yet. A refused reload (StoreInvalidError,
        naming the bad file) is logged and changes nothing."""
        try:
            result = self.engine.reload()
        except StoreInvalidError as e:
            self.metrics.reloaded("refused")
            log.error("%s", e.message)
            raise
        self.router = self.router.serving(result.languages)
        self.metrics.reloaded("ok")
        log.info("reloaded sub-models: serving %s (added: %s; removed: %s; changed: %s)",
                 ", ".join(result.languages), ", ".join(result.added) or "none",
                 ", ".join(result.removed) or "none", ", ".join(result.changed) or "none")
        return result

    def call(self, protocol: str) -> Call:
        return Call(self.metrics, protocol)

    def route(self, text: str, filename: str = "", hint: str | None = None,
              field: str = "text") -> Route:
        """Check the sizes, then ask the router; `field` names `text` in a size error."""
        from submodel.router import UnknownLanguage

        check_sizes(text, field, filename, hint)
        t0 = time.perf_counter()
        try:
            d = self.router.detect(text, filename=filename or None, hint=hint or None)
        except UnknownLanguage as e:
            raise UnknownLanguageError(str(e), field="language") from None
        seconds = time.perf_counter() - t0
        self.metrics.routed(d.confidence)
        return Route(d.language, d.confidence, d.source, seconds)

    def _count(self, delta: int) -> None:
        with self._lock:
            self.in_flight += delta

    def run(self, job: Job, call: Call, watch: Callable[[object], None]
            ) -> Iterator[object]:
        """Yields the Route, then the engine's events up to DoneEvent. `watch(handle)` gets
        the engine's handle right after submission (to cancel it if the client goes away).
        Raises EngineError for every failure, including a request that ended early."""
        route = self.route(job.routing_text(), job.filename, job.hint,
                           "messages" if job.messages else "prompt")
        call.language, call.source = route.language, route.source
        call.deadline = job.deadline
        handle = self.engine.submit(GenerationRequest(
            prompt=job.prompt, suffix=job.suffix, messages=job.messages,
            language=route.language, params=job.params, deadline=job.deadline))
        watch(handle)
        self.metrics.admitted(route.language, handle.prompt_tokens)
        early = None
        self._count(+1)
        try:
            yield route
            for event in handle:
                if isinstance(event, TokenEvent):
                    self.metrics.generated(route.language, 1)
                elif isinstance(event, FinishEvent) and event.finish_reason in EARLY:
                    early = event.finish_reason
                elif isinstance(event, DoneEvent) and event.generated_tokens:
                    self.metrics.first_token(route.language, event.ttft_seconds)
                yield event
        except GeneratorExit:
            handle.cancel()
            raise
        finally:
            self._count(-1)
        if early == "error":
            raise EngineError("the engine failed on this request (see the server log)",
                              Reason.INTERNAL)
        if early == "deadline":
            raise EngineError("deadline exceeded before generation finished",
                              Reason.DEADLINE_EXCEEDED)
        if early is not None:
            reason = call.abandoned()
            raise EngineError("the client cancelled the request" if reason == Reason.CANCELLED
                              else "deadline exceeded", reason)
