"""The `submodel.v1.Generator` servicer: validate, route, submit to the engine, stream back.

Every RPC ends with exactly one `submodel_requests_total` increment. A bad request is answered
with INVALID_ARGUMENT and a message that says what to fix, before any work is queued; a client
that goes away cancels its request so the engine frees the slot at its next step.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import grpc
from google.protobuf import empty_pb2
from google.protobuf.message import DecodeError
from google.protobuf.unknown_fields import UnknownFieldSet

from submodel.server.api import (
    DENSE,
    DoneEvent,
    DrainingError,
    FinishEvent,
    GenerationRequest,
    InvalidRequestError,
    QueueFullError,
    SamplingParams,
    TokenEvent,
    UnknownLanguageError,
)
from submodel.server.metrics import UNROUTED, Metrics
from submodel.v1 import submodel_pb2 as pb

log = logging.getLogger("submodel.server")

SERVICE = "submodel.v1.Generator"
DEFAULT_MAX_TOKENS = 256
# Size limits, checked before any work (README "Limits"); grpc itself refuses messages over
# its 4 MiB receive limit with RESOURCE_EXHAUSTED.
MAX_PROMPT_BYTES = 256 * 1024  # also DetectLanguage's text
MAX_STOP = 8
MAX_STOP_CHARS = 256
MAX_FILENAME_CHARS = 4096
MAX_LANGUAGE_CHARS = 64
EARLY = ("cancelled", "deadline", "error")  # finish reasons that fail the RPC


@dataclass(frozen=True)
class Routed:
    """First item `_events` yields: where the request went and how long deciding took."""

    routing: pb.Routing
    seconds: float


@dataclass(frozen=True)
class Undecodable:
    """What the lenient deserializer returns for bytes that are not a valid request."""

    message: str


class Reject(Exception):
    """Ends an RPC with `code`; `message` says what to fix."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def lenient_deserializer(cls) -> Callable[[bytes], object]:
    """grpc answers INTERNAL when deserialization raises, e.g. for a string field holding bad
    UTF-8 (proto3 checks it). Return an `Undecodable` instead, so the servicer can answer
    INVALID_ARGUMENT and name the field."""
    strings = {f.number: f.name for f in cls.DESCRIPTOR.fields if f.type == f.TYPE_STRING}

    def parse(data: bytes):
        try:
            return cls.FromString(data)
        except DecodeError:
            pass
        try:  # an empty message keeps every field as unknown, undecoded
            fields = list(UnknownFieldSet(empty_pb2.Empty.FromString(data)))
        except DecodeError:
            fields = []
        for f in fields:
            if f.field_number in strings and f.wire_type == 2:
                try:
                    f.data.decode("utf-8")
                except UnicodeDecodeError as e:
                    return Undecodable(f"{strings[f.field_number]} is not valid UTF-8 "
                                       f"(byte {e.start}): send UTF-8 text")
        return Undecodable(f"the request is not a valid {cls.DESCRIPTOR.full_name} message")

    return parse


def check_sizes(text: str, field: str, filename: str, language: str) -> None:
    """The size limits the generation and detection requests share; raises Reject."""
    size = len(text.encode())
    problems = []
    if size > MAX_PROMPT_BYTES:
        problems.append(f"{field} is {size} bytes; the limit is {MAX_PROMPT_BYTES}")
    if len(filename) > MAX_FILENAME_CHARS:
        problems.append(f"filename is longer than the limit of {MAX_FILENAME_CHARS} characters")
    if len(language) > MAX_LANGUAGE_CHARS:
        problems.append(f"language is longer than the limit of {MAX_LANGUAGE_CHARS} characters")
    if problems:
        raise Reject(grpc.StatusCode.INVALID_ARGUMENT, "; ".join(problems))


def sampling_params(req: pb.GenerateRequest) -> SamplingParams:
    """The request's fields as engine parameters. Numeric ranges (max_tokens within the
    context, temperature, top_p, top_k, n within the batch) are the engine's to check, at
    submit; here only what the engine does not see. Raises Reject(INVALID_ARGUMENT)."""

    def bad(message: str) -> Reject:
        return Reject(grpc.StatusCode.INVALID_ARGUMENT, message)

    if not req.prompt:
        raise bad("prompt is empty: send the code to complete")
    check_sizes(req.prompt, "prompt", req.filename,
                req.language if req.HasField("language") else "")
    if len(req.stop) > MAX_STOP:
        raise bad(f"at most {MAX_STOP} stop strings (got {len(req.stop)})")
    for s in req.stop:
        if not 0 < len(s) <= MAX_STOP_CHARS:
            raise bad(f"stop strings must have 1 to {MAX_STOP_CHARS} characters (got {len(s)})")
    return SamplingParams(
        max_tokens=req.max_tokens if req.HasField("max_tokens") else DEFAULT_MAX_TOKENS,
        temperature=req.temperature if req.HasField("temperature") else 0.0,
        top_p=req.top_p if req.HasField("top_p") else 1.0,
        top_k=req.top_k, stop=tuple(req.stop), n=req.n if req.HasField("n") else 1,
        seed=req.seed if req.HasField("seed") else None)


def _status(code: grpc.StatusCode) -> str:
    return code.name.lower()


class _Call:
    """One Generate/GenerateStream RPC's bookkeeping, recorded once when it ends."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics
        self.started = time.monotonic()
        self.language = UNROUTED
        self.source = UNROUTED
        self.deadline: float | None = None
        self.done = False

    def abandoned(self) -> grpc.StatusCode:
        """Why a request ended early: the client's deadline, or the client went away."""
        if self.deadline is not None and time.monotonic() >= self.deadline:
            return grpc.StatusCode.DEADLINE_EXCEEDED
        return grpc.StatusCode.CANCELLED

    def finish(self, code: grpc.StatusCode) -> None:
        if self.done:
            return
        self.done = True
        routed = self.language != UNROUTED
        self.metrics.finished(self.language, self.source, _status(code),
                              time.monotonic() - self.started if routed else None)


class GeneratorService:
    """Implements the four RPCs over an Engine and a Router."""

    def __init__(self, engine, router, metrics: Metrics) -> None:
        self.engine = engine
        self.router = router
        self.metrics = metrics
        self.in_flight = 0  # generation RPCs admitted by the engine and not finished
        self._lock = threading.Lock()

    def _count(self, delta: int) -> None:
        with self._lock:
            self.in_flight += delta

    # --- routing -------------------------------------------------------------------------
    def _route(self, text: str, filename: str, hint: str | None) -> Routed:
        from submodel.router import UnknownLanguage

        t0 = time.perf_counter()
        try:
            d = self.router.detect(text, filename=filename or None, hint=hint or None)
        except UnknownLanguage as e:
            raise Reject(grpc.StatusCode.NOT_FOUND, str(e)) from None
        seconds = time.perf_counter() - t0
        self.metrics.routed(d.confidence)
        return Routed(pb.Routing(language=d.language, confidence=d.confidence, source=d.source,
                                 sub_model=d.language), seconds)

    # --- generation ----------------------------------------------------------------------
    def _events(self, req, context, call: _Call) -> Iterator[object]:
        """Yields the Routing, then the engine's events; raises Reject for every failure."""
        if isinstance(req, Undecodable):
            raise Reject(grpc.StatusCode.INVALID_ARGUMENT, req.message)
        params = sampling_params(req)
        routed = self._route(req.prompt, req.filename,
                             req.language if req.HasField("language") else None)
        routing = routed.routing
        call.language, call.source = routing.language, routing.source
        remaining = context.time_remaining()
        if remaining is not None:
            call.deadline = time.monotonic() + remaining
        try:
            handle = self.engine.submit(GenerationRequest(
                prompt=req.prompt, language=routing.language, params=params,
                deadline=call.deadline))
        except InvalidRequestError as e:
            raise Reject(grpc.StatusCode.INVALID_ARGUMENT, str(e)) from None
        except UnknownLanguageError as e:
            raise Reject(grpc.StatusCode.NOT_FOUND, str(e)) from None
        except QueueFullError as e:
            raise Reject(grpc.StatusCode.RESOURCE_EXHAUSTED, str(e)) from None
        except DrainingError as e:
            raise Reject(grpc.StatusCode.UNAVAILABLE, str(e)) from None
        if not context.add_callback(handle.cancel):  # the RPC already ended
            handle.cancel()
        self.metrics.admitted(routing.language, handle.prompt_tokens)
        early = None
        self._count(+1)
        try:
            yield routed
            for event in handle:
                if isinstance(event, TokenEvent):
                    self.metrics.generated(routing.language, 1)
                elif isinstance(event, FinishEvent) and event.finish_reason in EARLY:
                    early = event.finish_reason
                elif isinstance(event, DoneEvent) and event.generated_tokens:
                    self.metrics.first_token(routing.language, event.ttft_seconds)
                yield event
        finally:
            self._count(-1)
        if early == "error":
            raise Reject(grpc.StatusCode.INTERNAL, "the engine failed on this request (see "
                         "the server log)")
        if early == "deadline":
            raise Reject(grpc.StatusCode.DEADLINE_EXCEEDED,
                         "deadline exceeded before generation finished")
        if early is not None:
            code = call.abandoned()
            raise Reject(code, "the client cancelled the request"
                         if code == grpc.StatusCode.CANCELLED else "deadline exceeded")

    @staticmethod
    def _summary(done: DoneEvent, route_seconds: float) -> tuple[pb.Usage, pb.Timings]:
        usage = pb.Usage(prompt_tokens=done.prompt_tokens,
                         completion_tokens=done.generated_tokens,
                         total_tokens=done.prompt_tokens + done.generated_tokens)
        timings = pb.Timings(route_seconds=route_seconds, queue_seconds=done.queue_seconds,
                             time_to_first_token_seconds=done.ttft_seconds,
                             total_seconds=done.total_seconds)
        return usage, timings

    def Generate(self, request, context):  # noqa: N802 (gRPC method name)
        call = _Call(self.metrics)
        try:
            response = pb.GenerateResponse()
            route_seconds = 0.0
            for event in self._events(request, context, call):
                if isinstance(event, Routed):
                    route_seconds = event.seconds
                    response.routing.CopyFrom(event.routing)
                elif isinstance(event, FinishEvent):
                    response.completions.add(index=event.sample, text=event.text,
                                             finish_reason=event.finish_reason,
                                             tokens=event.tokens)
                elif isinstance(event, DoneEvent):
                    usage, timings = self._summary(event, route_seconds)
                    response.usage.CopyFrom(usage)
                    response.timings.CopyFrom(timings)
            response.completions.sort(key=lambda c: c.index)
        except Reject as r:
            call.finish(r.code)
            context.abort(r.code, r.message)
        except Exception:
            log.exception("Generate failed")
            call.finish(grpc.StatusCode.INTERNAL)
            context.abort(grpc.StatusCode.INTERNAL, "internal error (see the server log)")
        call.finish(grpc.StatusCode.OK)
        return response

    def GenerateStream(self, request, context):  # noqa: N802
        call = _Call(self.metrics)
        try:
            route_seconds = 0.0
            for event in self._events(request, context, call):
                if isinstance(event, Routed):
                    route_seconds = event.seconds
                    yield pb.GenerateChunk(routing=event.routing)
                elif isinstance(event, TokenEvent):
                    yield pb.GenerateChunk(delta=pb.TokenDelta(
                        index=event.sample, text=event.text, token_id=event.token_id))
                elif isinstance(event, FinishEvent):
                    yield pb.GenerateChunk(completion=pb.Completion(
                        index=event.sample, text=event.text, finish_reason=event.finish_reason,
                        tokens=event.tokens))
                elif isinstance(event, DoneEvent):
                    usage, timings = self._summary(event, route_seconds)
                    yield pb.GenerateChunk(summary=pb.Summary(usage=usage, timings=timings))
        except GeneratorExit:  # grpc stopped iterating: the client went away
            call.finish(call.abandoned())
            raise
        except Reject as r:
            call.finish(r.code)
            context.abort(r.code, r.message)
        except Exception:
            log.exception("GenerateStream failed")
            call.finish(grpc.StatusCode.INTERNAL)
            context.abort(grpc.StatusCode.INTERNAL, "internal error (see the server log)")
        call.finish(grpc.StatusCode.OK)

    # --- inspection ----------------------------------------------------------------------
    def DetectLanguage(self, request, context):  # noqa: N802
        if isinstance(request, Undecodable):
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, request.message)
        hint = request.language if request.HasField("language") else None
        try:
            check_sizes(request.text, "text", request.filename, hint or "")
            routed = self._route(request.text, request.filename, hint)
        except Reject as r:
            context.abort(r.code, r.message)
        return pb.DetectLanguageResponse(routing=routed.routing)

    def ListSubModels(self, request, context):  # noqa: N802
        store = self.engine.store
        m = store.manifest
        sparsity = store.report("sparsity.json") or {}
        response = pb.ListSubModelsResponse(
            base_model=m["base_model"]["id"], method=m["method"], pattern=m["pattern"],
            strategy=self.engine.strategy.name, router_threshold=self.router.threshold)
        response.sub_models.add(id=DENSE, dense=True)
        for lang in self.engine.languages:
            response.sub_models.add(
                id=lang, sparsity=sparsity.get(lang, {}).get("overall", m["sparsity"]),
                mask_bytes=store.mask_file(lang).stat().st_size)
        for pair in (store.report("overlap.json") or {}).get("pairs", []):
            response.overlap.add(a=pair["a"], b=pair["b"], jaccard_distance=pair["overall"])
        return response


def add_to_server(service: GeneratorService, server: grpc.Server) -> None:
    """Register the servicer with lenient request parsing (see `lenient_deserializer`)."""

    def unary(fn, request_cls, response_cls):
        return grpc.unary_unary_rpc_method_handler(
            fn, request_deserializer=lenient_deserializer(request_cls),
            response_serializer=response_cls.SerializeToString)

    handlers = {
        "Generate": unary(service.Generate, pb.GenerateRequest, pb.GenerateResponse),
        "GenerateStream": grpc.unary_stream_rpc_method_handler(
            service.GenerateStream,
            request_deserializer=lenient_deserializer(pb.GenerateRequest),
            response_serializer=pb.GenerateChunk.SerializeToString),
        "DetectLanguage": unary(service.DetectLanguage, pb.DetectLanguageRequest,
                                pb.DetectLanguageResponse),
        "ListSubModels": unary(service.ListSubModels, pb.ListSubModelsRequest,
                               pb.ListSubModelsResponse),
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
