"""The drain gate: once draining begins, every RPC but health is answered UNAVAILABLE
("shutting down") by the server itself, for as long as clients keep arriving.

Why not just `grpc.Server.stop(grace)`: from the moment it is called, grpc core cancels every
call that reaches it on an open connection before the client has seen the GOAWAY, and the
client sees CANCELLED, which clients and load balancers do not retry. So the server keeps
serving (answering UNAVAILABLE, which they do retry) until the work in flight is done and no
new RPC has arrived for a quiet period, and only then stops.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import grpc

from submodel.server.api import Reason
from submodel.server.auth import OPEN_PREFIXES, deny

SHUTTING_DOWN = "the server is shutting down; retry on another replica"


class DrainGate(grpc.ServerInterceptor):
    """Records when the last gated RPC arrived; after `close()`, refuses each one.
    `on_refused(method)` is called for each refusal (the service counts its generations)."""

    def __init__(self, on_refused: Callable[[str], None] | None = None) -> None:
        self.on_refused = on_refused
        self._cond = threading.Condition()
        self._closed = False
        self._last = time.monotonic()

    @property
    def closed(self) -> bool:
        return self._closed

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._last = time.monotonic()

    def intercept_service(self, continuation, handler_call_details):
        if handler_call_details.method.startswith(OPEN_PREFIXES):
            return continuation(handler_call_details)
        with self._cond:
            self._last = time.monotonic()
            closed = self._closed
            self._cond.notify_all()
        handler = continuation(handler_call_details)
        if not closed or handler is None:
            return handler
        if self.on_refused is not None:
            self.on_refused(handler_call_details.method)
        return deny(handler, Reason.DRAINING, SHUTTING_DOWN)

    def wait_quiet(self, quiet: float, limit: float) -> bool:
        """Block for `quiet` seconds, extended until no gated RPC has arrived for that long,
        but `limit` seconds at most; True if it went quiet. Called once the work in flight is
        done: a client that just got its last response may come back at once."""
        end = time.monotonic() + limit
        with self._cond:
            self._last = max(self._last, time.monotonic())
            while True:
                now = time.monotonic()
                if now - self._last >= quiet:
                    return True
                if now >= end:
                    return False
                self._cond.wait(min(self._last + quiet, end) - now)
