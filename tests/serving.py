"""In-process servers for the service tests: the real engine over a tiny store, a real gRPC
server (and, on request, the HTTP API) on free loopback ports, real clients."""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass

import grpc

from submodel.pruning.store import open_store
from submodel.router import Router
from submodel.server.app import GrpcServer, Listener
from submodel.server.client import Client
from submodel.server.engine import Engine
from submodel.server.generation import Generations
from submodel.server.http_api import HttpApi
from submodel.server.http_server import HttpListener, HttpServer
from submodel.server.metrics import Metrics
from submodel.server.service import GeneratorService

THRESHOLD = 0.5


@dataclass
class Served:
    server: GrpcServer
    engine: Engine
    metrics: Metrics
    http: HttpServer | None = None

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.server.port}"

    @property
    def base_url(self) -> str:
        """The HTTP API's root, as OpenAI clients take it."""
        scheme = "https" if self.http.tls else "http"
        return f"{scheme}://127.0.0.1:{self.http.port}/v1"

    def client(self, **kwargs) -> Client:
        return Client(self.target, **kwargs)

    def value(self, name: str, **labels: str) -> float:
        return self.metrics.registry.get_sample_value(name, labels) or 0.0

    def wait_value(self, name: str, want: float, timeout: float = 10.0, **labels: str) -> float:
        """The metric once it reaches `want` (RPC bookkeeping finishes just after the client
        sees the status), or its value at the timeout."""
        end = time.monotonic() + timeout
        while (v := self.value(name, **labels)) < want and time.monotonic() < end:
            time.sleep(0.02)
        return v

    def steps_when_idle(self, quiet: float = 0.3, timeout: float = 30.0) -> float:
        """Decode steps so far, read once the engine has taken none for `quiet` seconds."""
        end = time.monotonic() + timeout
        last = self.value("submodel_batch_size_count")
        while time.monotonic() < end:
            time.sleep(quiet)
            now = self.value("submodel_batch_size_count")
            if now == last:
                return now
            last = now
        raise AssertionError(f"the engine is still stepping after {timeout} s")

    def stop(self) -> None:
        self.server.server.stop(0).wait()
        self.engine.stop()
        if self.http is not None:
            self.http.stop()


def serve_store(path, *, strategy: str = "swap", max_batch: int = 4, max_queue: int = 16,
                token: str | None = None, quiet: float = 0.5,
                credentials: grpc.ServerCredentials | None = None,
                http: bool = False, tls_files: tuple[str, str] | None = None) -> Served:
    """`http`: also serve the HTTP API (HTTPS with `tls_files` = (cert, key))."""
    metrics = Metrics()
    engine = Engine(open_store(path), strategy=strategy, max_batch=max_batch,
                    max_queue=max_queue, observer=metrics)
    engine.start()
    server = GrpcServer(Listener("127.0.0.1", 0, credentials, token),
                        workers=max_batch + max_queue + 8, quiet=quiet)
    generations = Generations(engine, Router(engine.languages, THRESHOLD), metrics)
    server.start(GeneratorService(generations))
    api = None
    if http:
        cert, key = tls_files or (None, None)
        api = HttpServer(HttpListener("127.0.0.1", 0, cert, key, token))
        api.start(HttpApi(generations, token).app)
    return Served(server, engine, metrics, api)


class ServeProcess:
    """A `submodel serve` subprocess whose stderr the test reads line by line (kept in `log`)."""

    def __init__(self, store, *flags: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "submodel.cli", "serve", str(store), "--port", "0",
             "--metrics-port", "0", *flags],
            stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
        self.log: list[str] = []

    def wait_for(self, pattern: str) -> re.Match:
        """The first match of `pattern` in the lines logged from now on; fails with the log if
        the process ends first."""
        for line in self.proc.stderr:
            self.log.append(line)
            if m := re.search(pattern, line):
                return m
        raise AssertionError(f"no {pattern!r} in the log:\n" + "".join(self.log))

    def grpc_target(self) -> str:
        m = self.wait_for(r"serving submodel\.v1\.Generator on 127\.0\.0\.1:(\d+)")
        return f"127.0.0.1:{m.group(1)}"


@contextlib.contextmanager
def serve_process(store, *flags: str) -> Iterator[ServeProcess]:
    """Start `submodel serve STORE` on free ports; kill it at exit if the test did not stop it."""
    serve = ServeProcess(store, *flags)
    try:
        yield serve
    finally:
        if serve.proc.poll() is None:
            serve.proc.kill()
            serve.proc.wait()
