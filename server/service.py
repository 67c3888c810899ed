"""The `submodel.v1.Generator` servicer: protobuf in, `generation.Job` out, events back.

Routing, submission and metrics live in `generation.py` (shared with the HTTP API); statuses
in `errors.py`. Every generation RPC ends with exactly one `submodel_requests_total`
increment. A bad request is answered with INVALID_ARGUMENT and a message that says what to
fix, before any work is queued; a client that goes away cancels its request so the engine
frees the slot at its next step.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import grpc
from google.protobuf import empty_pb2
from google.protobuf.message import DecodeError
from google.protobuf.unknown_fields import UnknownFieldSet

from submodel.server.api import (
    DoneEvent,
    FinishEvent,
    InvalidRequestError,
    Message,
    SamplingParams,
    TokenEvent,
)
from submodel.server.errors import grpc_errors
from submodel.server.generation import (
    DEFAULT_MAX_TOKENS,
    MAX_MESSAGES,
    Generations,
    Job,
    Route,
    check_stop,
)
from submodel.server.metrics import GRPC
from submodel.v1 import submodel_pb2 as pb
from submodel.vocabulary import DENSE

SERVICE = "submodel.v1.Generator"


@dataclass(frozen=True)
class Undecodable:
    """What the lenient deserializer returns for bytes that are not a valid request."""

    message: str


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


def sampling_params(req: pb.GenerateRequest) -> SamplingParams:
    """The request's fields as engine parameters. Numeric ranges (max_tokens within the
    context, temperature, top_p, top_k, n within the batch) are the engine's to check, at
    submit; here only what the engine does not see. Raises InvalidRequestError."""
    check_stop(req.stop)
    return SamplingParams(
        max_tokens=req.max_tokens if req.HasField("max_tokens") else DEFAULT_MAX_TOKENS,
        temperature=req.temperature if req.HasField("temperature") else 0.0,
        top_p=req.top_p if req.HasField("top_p") else 1.0,
        top_k=req.top_k, stop=tuple(req.stop), n=req.n if req.HasField("n") else 1,
        seed=req.seed if req.HasField("seed") else None)


def job_of(req, context: grpc.ServicerContext) -> Job:
    """A GenerateRequest as a Job; raises InvalidRequestError for what the engine does not
    check (prompt forms, filename, stop strings)."""
    if isinstance(req, Undecodable):
        raise InvalidRequestError(req.message)
    if req.messages and (req.prompt or req.HasField("suffix")):
        raise InvalidRequestError("send either messages (chat) or prompt (with an optional "
                                  "suffix), not both", field="messages")
    if not (req.prompt or req.messages or req.HasField("suffix")):
        raise InvalidRequestError("prompt is empty: send the code to complete", field="prompt")
    if len(req.messages) > MAX_MESSAGES:
        raise InvalidRequestError(f"at most {MAX_MESSAGES} messages", field="messages")
    params = sampling_params(req)
    remaining = context.time_remaining()
    return Job(params=params, prompt=req.prompt,
               suffix=req.suffix if req.HasField("suffix") else None,
               messages=tuple(Message(m.role, m.content) for m in req.messages),
               filename=req.filename, hint=req.language if req.HasField("language") else None,
               deadline=None if remaining is None else time.monotonic() + remaining)


def routing_pb(route: Route) -> pb.Routing:
    return pb.Routing(language=route.language, confidence=route.confidence,
                      source=route.source, sub_model=route.sub_model)


def cancel_with(context: grpc.ServicerContext) -> Callable[[object], None]:
    """A `watch` for Generations.run: cancel the engine's work when the RPC ends."""

    def watch(handle) -> None:
        if not context.add_callback(handle.cancel):  # the RPC already ended
            handle.cancel()

    return watch


class GeneratorService:
    """Implements the RPCs over the shared `Generations`."""

    def __init__(self, generations: Generations) -> None:
        self.generations = generations
        self.engine = generations.engine

    @property
    def in_flight(self) -> int:
        """Generations (of either API) admitted by the engine and not finished."""
        return self.generations.in_flight

    @staticmethod
    def _summary(done: DoneEvent, route_seconds: float) -> tuple[pb.Usage, pb.Timings]:
        usage = pb.Usage(prompt_tokens=done.prompt_tokens,
                         completion_tokens=done.generated_tokens,
                         total_tokens=done.prompt_tokens + done.generated_tokens)
        timings = pb.Timings(route_seconds=route_seconds, queue_seconds=done.queue_seconds,
                             time_to_first_token_seconds=done.ttft_seconds,
                             total_seconds=done.total_seconds)
        return usage, timings

    @grpc_errors
    def Generate(self, request, context):  # noqa: N802 (gRPC method name)
        response = pb.GenerateResponse()
        with self.generations.call(GRPC) as call:
            route_seconds = 0.0
            job = job_of(request, context)
            for event in self.generations.run(job, call, cancel_with(context)):
                if isinstance(event, Route):
                    route_seconds = event.seconds
                    response.routing.CopyFrom(routing_pb(event))
                elif isinstance(event, FinishEvent):
                    response.completions.add(index=event.sample, text=event.text,
                                             finish_reason=event.finish_reason,
                                             tokens=event.tokens)
                elif isinstance(event, DoneEvent):
                    usage, timings = self._summary(event, route_seconds)
                    response.usage.CopyFrom(usage)
                    response.timings.CopyFrom(timings)
            response.completions.sort(key=lambda c: c.index)
        return response

    @grpc_errors
    def GenerateStream(self, request, context):  # noqa: N802
        with self.generations.call(GRPC) as call:
            route_seconds = 0.0
            job = job_of(request, context)
            for event in self.generations.run(job, call, cancel_with(context)):
                if isinstance(event, Route):
                    route_seconds = event.seconds
                    yield pb.GenerateChunk(routing=routing_pb(event))
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

    # --- inspection ----------------------------------------------------------------------
    @grpc_errors
    def DetectLanguage(self, request, context):  # noqa: N802
        if isinstance(request, Undecodable):
            raise InvalidRequestError(request.message)
        hint = request.language if request.HasField("language") else None
        route = self.generations.route(request.text, request.filename, hint)
        return pb.DetectLanguageResponse(routing=routing_pb(route))

    @grpc_errors
    def ListSubModels(self, request, context):  # noqa: N802
        store = self.engine.store
        m = store.manifest
        sparsity = store.report("sparsity.json") or {}
        response = pb.ListSubModelsResponse(
            base_model=m["base_model"]["id"], method=m["method"], pattern=m["pattern"],
            strategy=self.engine.strategy.name, weights=self.engine.weights,
            router_threshold=self.generations.router.threshold)
        response.sub_models.add(id=DENSE, dense=True)
        for lang in self.engine.languages:
            response.sub_models.add(
                id=lang, sparsity=sparsity.get(lang, {}).get("overall", m["sparsity"]),
                mask_bytes=store.mask_file(lang).stat().st_size)
        for pair in (store.report("overlap.json") or {}).get("pairs", []):
            response.overlap.add(a=pair["a"], b=pair["b"], jaccard_distance=pair["overall"])
        return response


    @grpc_errors
    def ReloadSubModels(self, request, context):  # noqa: N802
        if isinstance(request, Undecodable):
            raise InvalidRequestError(request.message)
        result = self.generations.reload()
        return pb.ReloadSubModelsResponse(languages=result.languages, added=result.added,
                                          removed=result.removed, changed=result.changed)


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
        "ReloadSubModels": unary(service.ReloadSubModels, pb.ReloadSubModelsRequest,
                                 pb.ReloadSubModelsResponse),
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
