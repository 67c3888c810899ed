"""The server process: gRPC (Generator + health + reflection) on one port, the OpenAI-compatible
HTTP API on another, both over one engine; /metrics over HTTP; and a graceful drain on SIGTERM
(health NOT_SERVING, every new request refused as unavailable, finish what is in flight up to a
grace period, stop once clients have gone quiet, exit 0). SIGHUP reloads the sub-models from
the store, as the ReloadSubModels RPC does."""

from __future__ import annotations

import logging
import signal
import socket
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from submodel.server.api import EngineError
from submodel.server.auth import BearerTokenInterceptor
from submodel.server.drain import DrainGate
from submodel.server.generation import Generations
from submodel.server.http_server import HttpListener, HttpServer
from submodel.server.metrics import GRPC, UNROUTED, Metrics
from submodel.server.service import SERVICE, GeneratorService, add_to_server

log = logging.getLogger("submodel.server")

QUIET_SECONDS = 2.0  # after the drain: stop once no RPC has arrived for this long (drain.py)
LINGER_SECONDS = 10.0  # ...or after this long, if clients keep coming
FLUSH_SECONDS = 1.0  # after that: time for the last responses to reach their clients


def _address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host and not host.startswith("[") else f"{host}:{port}"


@dataclass
class Listener:
    host: str
    port: int  # 0 = any free port
    credentials: grpc.ServerCredentials | None = None  # TLS
    token: str | None = None  # bearer token required on every RPC but health


class GrpcServer:
    """Binds at construction (so a taken port fails before a slow model load); serves once
    `start` gets the service."""

    def __init__(self, listener: Listener, workers: int, quiet: float = QUIET_SECONDS) -> None:
        self.gate = DrainGate()
        self.quiet = quiet
        auth = [BearerTokenInterceptor(listener.token)] if listener.token else []
        interceptors = [*auth, self.gate]
        # One thread per in-flight RPC; beyond `workers` grpc answers RESOURCE_EXHAUSTED.
        self.server = grpc.server(ThreadPoolExecutor(workers, thread_name_prefix="grpc"),
                                  interceptors=interceptors, maximum_concurrent_rpcs=workers,
                                  options=[("grpc.so_reuseport", 0)])
        address = _address(listener.host, listener.port)
        try:
            if listener.credentials is not None:
                self.port = self.server.add_secure_port(address, listener.credentials)
            else:
                self.port = self.server.add_insecure_port(address)
        except RuntimeError:
            raise OSError(f"cannot listen on {address} (in use, or not an address of this "
                          "machine)") from None
        self.health = health.HealthServicer()
        self.service: GeneratorService | None = None

    def start(self, service: GeneratorService) -> None:
        add_to_server(service, self.server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        reflection.enable_server_reflection(
            (SERVICE, health.SERVICE_NAME, reflection.SERVICE_NAME), self.server)
        self.service = service
        generations = {f"/{SERVICE}/Generate", f"/{SERVICE}/GenerateStream"}

        def refused(method: str) -> None:  # one submodel_requests_total per generation RPC
            if method in generations:
                service.generations.metrics.finished(UNROUTED, UNROUTED, "unavailable", GRPC)

        self.gate.on_refused = refused
        self.server.start()
        for name in ("", SERVICE):
            self.health.set(name, health_pb2.HealthCheckResponse.SERVING)

    def drain(self, grace: float) -> bool:
        """NOT_SERVING, answer every new RPC UNAVAILABLE, let the generations in flight finish
        for up to `grace` seconds, keep answering until clients go quiet, then stop; True if
        nothing was cut off."""
        self.health.enter_graceful_shutdown()
        self.gate.close()
        drained = self.service.engine.drain(grace) if self.service is not None else True
        self.gate.wait_quiet(self.quiet, max(LINGER_SECONDS, self.quiet))
        self.server.stop(FLUSH_SECONDS).wait()
        return drained


def wait_for_signal() -> int:
    """Block until SIGTERM or SIGINT; returns the signal number.

    The kernel may hand a process's signal to any of its threads (grpc's, OpenMP's), and
    Python then runs the handler only when the main thread next runs bytecode: a main thread
    asleep in a wait would see it late. The signal's number also goes to a wakeup socket,
    written from the C handler on whichever thread took the signal, so this wakes at once."""
    stopping = (signal.SIGTERM, signal.SIGINT)
    reader, writer = socket.socketpair()
    writer.setblocking(False)
    previous_fd = signal.set_wakeup_fd(writer.fileno(), warn_on_full_buffer=False)  # first:
    # a signal taken once the handlers below are in must find the socket
    previous = {s: signal.signal(s, lambda _signum, _frame: None) for s in stopping}
    try:
        while True:  # other handled signals (SIGHUP) write their numbers too
            for signum in reader.recv(64):
                if signum in stopping:
                    return signum
    finally:
        signal.set_wakeup_fd(previous_fd)
        for s, h in previous.items():
            signal.signal(s, h)
        reader.close()
        writer.close()


def reload_on_sighup(generations: Generations):
    """Install a SIGHUP handler that reloads the sub-models on a thread of its own (the
    handler runs on the main thread, which must stay free for SIGTERM); returns the previous
    handler. The outcome goes to the log (and metrics), as there is no caller to answer."""

    def reload() -> None:
        try:
            generations.reload()
        except EngineError as e:  # refused (logged by reload) or shutting down
            log.warning("SIGHUP reload: %s", e.message)
        except Exception:
            log.exception("SIGHUP reload failed")

    def handler(_signum, _frame) -> None:
        log.info("SIGHUP: reloading the sub-models")
        threading.Thread(target=reload, name="submodel-reload", daemon=True).start()

    return signal.signal(signal.SIGHUP, handler)


def serve(engine_factory, router, listener: Listener, *, workers: int, grace: float,
          metrics: Metrics, metrics_address: tuple[str, int] | None,
          http_listener: HttpListener | None = None) -> int:
    """Run until SIGTERM/SIGINT. `engine_factory(metrics)` loads the model (slow), after the
    ports are bound; `router(languages)` builds the router for the engine's languages."""
    from submodel.server.http_api import HttpApi

    server = GrpcServer(listener, workers)
    api = HttpServer(http_listener) if http_listener is not None else None
    http = None
    if metrics_address is not None:
        host, port = metrics_address
        try:
            http = metrics.serve_http(host, port)
        except OSError as e:
            raise OSError(f"cannot serve metrics on {_address(host, port)}: {e.strerror}") from None
        log.info("metrics on http://%s/metrics", _address(host, http.server_port))
    engine = engine_factory(metrics)
    engine.start()
    try:
        generations = Generations(engine, router(engine.languages), metrics)
        service = GeneratorService(generations)
        server.start(service)
        log.info("serving %s on %s (languages: %s; %s)", SERVICE,
                 _address(listener.host, server.port), ", ".join(engine.languages),
                 "TLS" if listener.credentials else "plaintext")
        if api is not None:
            api.start(HttpApi(generations, http_listener.token).app, FLUSH_SECONDS)
            log.info("serving the OpenAI-compatible API on %s://%s/v1",
                     "https" if api.tls else "http", _address(http_listener.host, api.port))
        previous = reload_on_sighup(generations)
        try:
            signum = wait_for_signal()
        finally:
            signal.signal(signal.SIGHUP, previous)
        log.info("%s: draining, %d request(s) in flight (grace %.0f s)",
                 signal.Signals(signum).name, service.in_flight, grace)
        drained = server.drain(grace)
        log.info("stopped%s", "" if drained else "; requests still running at the end of the "
                 "grace period were cancelled")
    finally:
        engine.stop()
        if api is not None:
            api.stop()
        if http is not None:
            http.shutdown()
    return 0
