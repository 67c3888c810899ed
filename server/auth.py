"""Who may talk to the server: a bearer token checked on every RPC, TLS credentials, and the
rule that a non-loopback bind needs one of them (or an explicit --insecure)."""

from __future__ import annotations

import hmac
import ipaddress
from pathlib import Path

import grpc

from submodel.server import errors
from submodel.server.api import EngineError, Reason

# Health stays open: load balancers and Kubernetes probes cannot send a token.
OPEN_PREFIXES = ("/grpc.health.v1.Health/",)


def read_token(path: str | Path) -> str:
    """The token is the file's content without surrounding whitespace; it must not be empty."""
    try:
        token = Path(path).read_text().strip()
    except OSError as e:
        raise ValueError(f"cannot read token file {path}: {e.strerror}") from None
    if not token:
        raise ValueError(f"token file {path} is empty")
    return token


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name: could resolve to anything


def check_bind(host: str, tls: bool, token: bool, insecure: bool) -> None:
    """Refuse to expose the server beyond this machine without TLS or a token."""
    if not (is_loopback(host) or tls or token or insecure):
        raise ValueError(f"refusing to listen on {host} (not loopback) without --tls-cert/"
                         "--tls-key or --auth-token-file; pass --insecure to allow it")


def server_credentials(cert: str | Path, key: str | Path) -> grpc.ServerCredentials:
    try:
        pair = (Path(key).read_bytes(), Path(cert).read_bytes())
    except OSError as e:
        raise ValueError(f"cannot read {e.filename}: {e.strerror}") from None
    return grpc.ssl_server_credentials([pair])


def deny(handler: grpc.RpcMethodHandler, reason: Reason, message: str) -> grpc.RpcMethodHandler:
    """A handler of the same shape as `handler` that only fails with `reason` and `message`;
    it never deserializes the request nor runs the real handler."""

    def abort(_request, context):
        errors.abort(context, EngineError(message, reason))

    if handler.request_streaming and handler.response_streaming:
        return grpc.stream_stream_rpc_method_handler(abort)
    if handler.request_streaming:
        return grpc.stream_unary_rpc_method_handler(abort)
    if handler.response_streaming:
        return grpc.unary_stream_rpc_method_handler(abort)
    return grpc.unary_unary_rpc_method_handler(abort)


class BearerTokenInterceptor(grpc.ServerInterceptor):
    """Every RPC but health needs metadata `authorization: Bearer <token>`."""

    def __init__(self, token: str) -> None:
        self.expected = f"Bearer {token}".encode()

    def intercept_service(self, continuation, handler_call_details):
        if handler_call_details.method.startswith(OPEN_PREFIXES):
            return continuation(handler_call_details)
        sent = dict(handler_call_details.invocation_metadata or ()).get("authorization")
        if sent is not None and hmac.compare_digest(sent.encode(), self.expected):
            return continuation(handler_call_details)
        handler = continuation(handler_call_details)
        if handler is None:
            return None
        why = "missing" if sent is None else "wrong"
        return deny(handler, Reason.UNAUTHENTICATED,
                    f"{why} bearer token: send metadata 'authorization: Bearer <token>' "
                    "(submodel generate --auth-token-file FILE)")
