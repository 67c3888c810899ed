"""The one place where a failed request becomes a status: each `Reason` has its gRPC code, its
HTTP status and OpenAI error type. The gRPC servicer's methods are wrapped by `grpc_errors`;
the HTTP routes answer `http_error` objects; both label metrics with `status_label`."""

from __future__ import annotations

import functools
import inspect
import logging
from dataclasses import dataclass
from typing import NoReturn

import grpc

from submodel.server.api import EngineError, Reason

log = logging.getLogger("submodel.server")

REASON_KEY = "submodel-error-reason"  # gRPC trailing metadata: a Reason value
FIELD_KEY = "submodel-error-field"  # gRPC trailing metadata: the request field at fault


@dataclass(frozen=True)
class Status:
    grpc: grpc.StatusCode
    http: int
    openai_type: str


S = grpc.StatusCode
STATUS = {
    Reason.INVALID_FIELD: Status(S.INVALID_ARGUMENT, 400, "invalid_request_error"),
    Reason.PROMPT_TOO_LONG: Status(S.INVALID_ARGUMENT, 400, "invalid_request_error"),
    Reason.FIM_UNSUPPORTED: Status(S.INVALID_ARGUMENT, 400, "invalid_request_error"),
    Reason.CHAT_UNSUPPORTED: Status(S.INVALID_ARGUMENT, 400, "invalid_request_error"),
    Reason.UNKNOWN_LANGUAGE: Status(S.NOT_FOUND, 404, "not_found_error"),
    Reason.UNAUTHENTICATED: Status(S.UNAUTHENTICATED, 401, "authentication_error"),
    Reason.QUEUE_FULL: Status(S.RESOURCE_EXHAUSTED, 429, "rate_limit_error"),
    Reason.DRAINING: Status(S.UNAVAILABLE, 503, "server_error"),
    Reason.DEADLINE_EXCEEDED: Status(S.DEADLINE_EXCEEDED, 504, "server_error"),
    Reason.CANCELLED: Status(S.CANCELLED, 499, "server_error"),
    Reason.STORE_INVALID: Status(S.FAILED_PRECONDITION, 409, "server_error"),
    Reason.INTERNAL: Status(S.INTERNAL, 500, "server_error"),
}
OK = "ok"


def status_label(reason: Reason | None) -> str:
    """The `status` label of `submodel_requests_total`: the gRPC code's name in lower case,
    for either protocol (None = success)."""
    return OK if reason is None else STATUS[reason].grpc.name.lower()


def internal_error() -> EngineError:
    return EngineError("internal error (see the server log)", Reason.INTERNAL)


def http_error(error: EngineError) -> tuple[int, dict]:
    """(HTTP status, OpenAI error object) of a failed request."""
    status = STATUS[error.reason]
    return status.http, {"error": {"message": error.message, "type": status.openai_type,
                                   "param": error.field, "code": error.reason.value}}


def abort(context: grpc.ServicerContext, error: EngineError) -> NoReturn:
    """End the RPC with the error's status, message and reason (trailing metadata)."""
    metadata = [(REASON_KEY, error.reason.value)]
    if error.field:
        metadata.append((FIELD_KEY, error.field))
    context.set_trailing_metadata(tuple(metadata))
    context.abort(STATUS[error.reason].grpc, error.message)


def grpc_errors(method):
    """Wrap a servicer method (unary or response-streaming): an EngineError ends the RPC with
    its status; any other exception is logged and ends it with INTERNAL."""

    def fail(context, exc: Exception) -> NoReturn:
        if not isinstance(exc, EngineError):
            log.error("%s failed", method.__name__, exc_info=exc)
            exc = internal_error()
        abort(context, exc)

    if inspect.isgeneratorfunction(method):
        @functools.wraps(method)
        def streaming(self, request, context):
            try:
                yield from method(self, request, context)
            except Exception as e:
                fail(context, e)
        return streaming

    @functools.wraps(method)
    def unary(self, request, context):
        try:
            return method(self, request, context)
        except Exception as e:
            fail(context, e)
    return unary


def reason_of(e: grpc.RpcError) -> tuple[Reason | None, str | None]:
    """A client's view: (reason, field) from a failed call's trailing metadata."""
    metadata = dict(e.trailing_metadata() or ())
    value = metadata.get(REASON_KEY)
    try:
        reason = Reason(value) if value else None
    except ValueError:  # a newer server's reason
        reason = None
    return reason, metadata.get(FIELD_KEY)
