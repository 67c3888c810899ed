"""Two `submodel serve` replicas behind HAProxy, run with deploy/haproxy.cfg as shipped (only
its listen and replica addresses changed): SIGTERM one under steady traffic and no request is
lost. The balancer's active gRPC health check takes the draining replica out, the clients'
retry policy covers the UNAVAILABLE answers it gave before that, and the request in flight on
it finishes there. Every wait is on a condition (metrics, health, logs), never a sleep."""

from __future__ import annotations

import contextlib
import importlib.util
import json
import re
import shutil
import signal
import socket
import subprocess
import threading
import time
import urllib.request
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families

from submodel.bench.server_proc import ServerProcess
from submodel.v1 import submodel_pb2 as pb
from submodel.v1 import submodel_pb2_grpc as pb_grpc

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"
HAPROXY = shutil.which("haproxy")
pytestmark = pytest.mark.skipif(HAPROXY is None,
                                reason="no haproxy binary (install.sh installs it)")

# What a client of replicas must have: UNAVAILABLE retried, with backoff. gRPC allows five
# attempts; the backoffs (random up to 0.2, 0.4, 0.8, 1 s) usually outlast the ~1.2 s the
# balancer takes to notice a drain (deploy/haproxy.cfg), and a retry through its round robin
# goes to the other replica at least every other time.
RETRY_CONFIG = json.dumps({"methodConfig": [{
    "name": [{"service": "submodel.v1.Generator"}],
    "retryPolicy": {"maxAttempts": 5, "initialBackoff": "0.2s", "maxBackoff": "1s",
                    "backoffMultiplier": 2, "retryableStatusCodes": ["UNAVAILABLE"]}}]})
SHORT = pb.GenerateRequest(prompt="def fibonacci(n):\n    ", language="python", max_tokens=8)
LONG_TOKENS = 400  # greedy dense, runs to max_tokens (as in test_service)
LONG = pb.GenerateRequest(prompt="int main() {\n", language="dense", max_tokens=LONG_TOKENS)
CLIENTS = 3
TIMEOUT = 120.0
# %Ts.%ms %Tt %s %ST grpc=%hs retry=%hr balancer_retries=%rc %HP (deploy/haproxy.cfg)
LOG_LINE = re.compile(r"(\d+\.\d+) (\d+) (\S+) (\d+) grpc=\{?(\d*)\}? retry=\{?(\d*)\}? "
                      r"balancer_retries=\+?(\d+) (\S+)")


def wait_for(what: str, condition, timeout: float = TIMEOUT):
    """condition()'s first truthy value, polled until `timeout`."""
    end = time.monotonic() + timeout
    while not (value := condition()):
        if time.monotonic() > end:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)
    return value


def metric(replica: ServerProcess, name: str, **labels: str) -> float:
    """Sum of the replica's samples of `name` that carry `labels`."""
    text = urllib.request.urlopen(replica.metrics_url, timeout=10).read().decode()
    return sum(s.value for family in text_string_to_metric_families(text)
               for s in family.samples
               if s.name == name and labels.items() <= s.labels.items())


def served_ok(replica: ServerProcess) -> float:
    return metric(replica, "submodel_requests_total", status="ok")


def health(target: str) -> int:
    with grpc.insecure_channel(target) as ch:
        return health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(),
                                                    timeout=10).status


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Haproxy:
    """deploy/haproxy.cfg on a free loopback port in front of `targets`, in the foreground
    (-db), its access log in `log_path`."""

    def __init__(self, tmp: Path, targets: list[str]) -> None:
        self.port = free_port()
        config = (DEPLOY / "haproxy.cfg").read_text()
        config, binds = re.subn(r"bind 127\.0\.0\.1:8443", f"bind 127.0.0.1:{self.port}", config)
        servers = "".join(f"    server r{i} {t}\n" for i, t in enumerate(targets))
        config, n = re.subn(r"(    server r\d+ \S+\n)+", servers, config)
        assert binds == 1 and n == 1, "deploy/haproxy.cfg no longer has the expected lines"
        self.names = {f"r{i}": t for i, t in enumerate(targets)}
        self.config = tmp / "haproxy.cfg"
        self.config.write_text(config)
        self.log_path = tmp / "haproxy.log"
        self.proc: subprocess.Popen | None = None

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def __enter__(self) -> Haproxy:
        with open(self.log_path, "wb") as out:
            self.proc = subprocess.Popen([HAPROXY, "-f", str(self.config), "-db"],
                                         stdin=subprocess.DEVNULL, stdout=out,
                                         stderr=subprocess.STDOUT)
        wait_for("haproxy to serve", lambda: self.proc.poll() is not None
                 or self._answers_health(), 30)
        assert self.proc.poll() is None, f"haproxy exited:\n{self.log()}"
        return self

    def _answers_health(self) -> bool:
        try:
            return health(self.target) == health_pb2.HealthCheckResponse.SERVING
        except grpc.RpcError:
            return False

    def __exit__(self, *exc) -> None:
        self.proc.send_signal(signal.SIGUSR1)  # soft stop: finish what is open, then exit
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


class Traffic:
    """`CLIENTS` threads, each a client with its own channel through the balancer and the retry
    policy, sending short generations back to back until stopped."""

    def __init__(self, target: str) -> None:
        self.target = target
        self.stopping = threading.Event()
        self.sent = 0
        self.ok = 0
        self.failed: list[str] = []
        self._lock = threading.Lock()
        self.threads = [threading.Thread(target=self._run, daemon=True) for _ in range(CLIENTS)]

    def _run(self) -> None:
        options = [("grpc.service_config", RETRY_CONFIG), ("grpc.enable_retries", 1)]
        with grpc.insecure_channel(self.target, options=options) as channel:
            stub = pb_grpc.GeneratorStub(channel)
            while not self.stopping.is_set():
                with self._lock:
                    self.sent += 1
                try:
                    stub.Generate(SHORT, timeout=TIMEOUT)
                except grpc.RpcError as e:
                    with self._lock:
                        self.failed.append(f"{e.code().name}: {e.details()}")
                else:
                    with self._lock:
                        self.ok += 1

    def __enter__(self) -> Traffic:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stopping.set()
        for t in self.threads:
            t.join(TIMEOUT)


def test_deploy_h2_check_bytes_match_the_config():
    """The config's hand-written HTTP/2 health check is what deploy/h2_health_check.py makes."""
    spec = importlib.util.spec_from_file_location("h2check", DEPLOY / "h2_health_check.py")
    h2check = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(h2check)
    config = (DEPLOY / "haproxy.cfg").read_text()
    assert f"tcp-check send-binary {h2check.request().hex()}\n" in config
    assert f"tcp-check expect binary {h2check.SERVING.hex()}\n" in config


def test_sigterm_one_replica_behind_haproxy_loses_nothing(tiny_store, tmp_path):
    replicas = [ServerProcess(tiny_store, tmp_path / f"r{i}.log", max_batch=8, max_queue=64,
                              start_timeout=TIMEOUT) for i in range(2)]
    for r in replicas:  # room for the long request to finish during the drain
        r.argv[r.argv.index("--grace") + 1] = "60"
    with contextlib.ExitStack() as stack:
        for r in replicas:
            stack.enter_context(r)
        lb = stack.enter_context(Haproxy(tmp_path, [r.target for r in replicas]))
        traffic = stack.enter_context(Traffic(lb.target))
        wait_for("both replicas to serve traffic",
                 lambda: all(served_ok(r) >= 3 for r in replicas))

        # A long stream through the balancer; the replica it landed on is the one drained.
        channel = stack.enter_context(grpc.insecure_channel(lb.target, options=[
            ("grpc.service_config", RETRY_CONFIG), ("grpc.enable_retries", 1)]))
        stream = pb_grpc.GeneratorStub(channel).GenerateStream(LONG, timeout=TIMEOUT)
        next(stream)
        victim = wait_for("the long stream's replica", lambda: next(
            (r for r in replicas
             if metric(r, "submodel_prompt_tokens_total", language="dense")),
            None))
        other = replicas[1 - replicas.index(victim)]
        name = next(n for n, t in lb.names.items() if t == victim.target)
        term_at = time.time()
        victim.proc.send_signal(signal.SIGTERM)

        down = re.compile(rf"Server submodel/{name} is DOWN")
        wait_for("haproxy to take the draining replica out", lambda: down.search(lb.log()))
        down_seen_at = time.time()
        rest = list(stream)  # the request in flight finishes on the draining replica
        assert rest[-1].summary.usage.completion_tokens == LONG_TOKENS
        assert victim.proc.wait(TIMEOUT) == 0
        ok_then = served_ok(other)
        wait_for("more traffic on the remaining replica", lambda: served_ok(other) >= ok_then + 5)
        stack.close()  # traffic, then haproxy, then the replicas stop

    victim_log = victim.log_path.read_text()
    in_flight = int(re.search(r"SIGTERM: draining, (\d+) request\(s\) in flight", victim_log)[1])
    assert in_flight >= 1 and "stopped\n" in victim_log and "cancelled" not in victim_log

    requests = [m for m in map(LOG_LINE.search, lb.log().splitlines())
                if m and m[8].endswith("/submodel.v1.Generator/Generate")]
    streams = [m for m in map(LOG_LINE.search, lb.log().splitlines())
               if m and m[8].endswith("/GenerateStream")]
    assert len(requests) >= traffic.sent  # every attempt the clients made was logged
    refused = [m for m in requests if m[5] == "14"]
    retries = [m for m in requests if m[6]]
    assert all(m[3] == name for m in refused)  # only the draining replica refused
    assert len(retries) == len(refused)  # each refusal was retried by its client
    assert not [m for m in requests if m[3] == name and float(m[1]) >= down_seen_at]
    [long] = streams  # served whole by the replica that was drained
    assert long[3] == name and long[5] == "" and float(long[1]) < term_at
    after = [m for m in requests if float(m[1]) >= down_seen_at]
    assert after and all(m[3] != name for m in after)

    print(f"\nsent={traffic.sent} ok={traffic.ok} retried={len(retries)} "
          f"lost={len(traffic.failed)} in_flight_at_sigterm={in_flight} "
          f"after_drain_on_other={len(after)} "
          f"balancer_retries={sum(int(m[7]) for m in requests)}")
    assert traffic.failed == [] and traffic.ok == traffic.sent
