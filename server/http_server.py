"""uvicorn serving the HTTP API on a thread of its own, beside the gRPC server in one process.

Binds at construction, like GrpcServer, so a taken port fails before the slow model load and
port 0 resolves to the port actually bound."""

from __future__ import annotations

import socket
import threading
from dataclasses import dataclass

import uvicorn


@dataclass
class HttpListener:
    host: str
    port: int  # 0 = any free port
    tls_cert: str | None = None  # PEM files: serve HTTPS
    tls_key: str | None = None
    token: str | None = None  # bearer token required on every path but /v1/health


class HttpServer:
    def __init__(self, listener: HttpListener) -> None:
        self.listener = listener
        family = socket.AF_INET6 if ":" in listener.host else socket.AF_INET
        self.socket = socket.socket(family, socket.SOCK_STREAM)
        self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            self.socket.bind((listener.host.strip("[]"), listener.port))
        except OSError as e:
            self.socket.close()
            raise OSError(f"cannot listen on {listener.host}:{listener.port} for HTTP: "
                          f"{e.strerror}") from None
        self.port = self.socket.getsockname()[1]
        self.server: uvicorn.Server | None = None
        self.thread: threading.Thread | None = None

    @property
    def tls(self) -> bool:
        return self.listener.tls_cert is not None

    def start(self, app, grace: float = 1.0) -> None:
        """Serve `app` (ASGI); returns once uvicorn accepts connections."""
        config = uvicorn.Config(app, log_level="warning", lifespan="off",
                                ssl_certfile=self.listener.tls_cert,
                                ssl_keyfile=self.listener.tls_key,
                                timeout_graceful_shutdown=grace)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, args=([self.socket],),
                                       name="http", daemon=True)
        self.thread.start()
        while not self.server.started and self.thread.is_alive():
            threading.Event().wait(0.01)
        if not self.server.started:
            raise OSError("the HTTP server did not start (see the log above)")

    def stop(self) -> None:
        """Stop accepting, let open responses end (up to the grace given to start), close."""
        if self.server is not None:
            self.server.should_exit = True
            self.thread.join()
        self.socket.close()
