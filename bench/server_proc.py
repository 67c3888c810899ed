"""`submodel serve` in a child process on free loopback ports, for the benchmarks: the same
server a user runs, and a process of its own whose memory can be measured."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from submodel.vocabulary import DEFAULT_STRATEGY

READY = re.compile(r"serving \S+ on (\S+) \(")
# Runs first in the child: ask Linux to SIGTERM it when the bench dies (even by SIGKILL), then
# become `submodel serve` (same pid). argv[1] is the bench's pid, to catch a parent already gone.
PRELUDE = ("import ctypes, os, signal, sys\n"
           "ctypes.CDLL(None).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG\n"
           "if os.getppid() != int(sys.argv[1]): sys.exit(1)\n"
           "os.execv(sys.executable, [sys.executable, '-m', 'submodel.cli', *sys.argv[2:]])\n")
METRICS = re.compile(r"metrics on http://(\S+)/metrics")
HTTP_API = re.compile(r"OpenAI-compatible API on http://(\S+)/v1")


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


class ServerError(Exception):
    """The server did not start; the message quotes the end of its log."""


class ServerProcess:
    """Starts `submodel serve STORE --port 0 ...` and waits until it serves. Use as a context
    manager; the log goes to `log_path`."""

    def __init__(self, store: str | Path, log_path: Path, *, strategy: str = DEFAULT_STRATEGY,
                 max_batch: int = 8, max_queue: int = 64,
                 dtype: str | None = None, weights: str = "full", metrics: bool = True,
                 http: bool = False, start_timeout: float = 900.0) -> None:
        self.argv = [sys.executable, "-c", PRELUDE, str(os.getpid()), "serve", str(store),
                     "--port", "0",
                     "--strategy", strategy, "--max-batch", str(max_batch),
                     "--max-queue", str(max_queue), "--grace", "5"]
        self.argv += ["--http-port", "0"] if http else ["--no-http"]
        self.argv += ["--metrics-port", "0"] if metrics else ["--no-metrics"]
        if dtype:
            self.argv += ["--dtype", dtype]
        self.argv += ["--weights", weights]  # always: serve's own default is auto
        self.argv += ["--prefix-cache-mb", "0"]  # each request prefilled as in earlier runs
        self.log_path = Path(log_path)
        self.start_timeout = start_timeout
        self.proc: subprocess.Popen | None = None
        self.target = ""
        self.metrics_url: str | None = None
        self.http_address: str | None = None  # host:port of the HTTP API, when it serves one
        self._previous_handler = None

    @property
    def pid(self) -> int:
        return self.proc.pid

    def start(self) -> ServerProcess:
        """Raises ServerError if the server exits or does not serve within start_timeout. While
        it runs, SIGTERM to the bench raises KeyboardInterrupt, so `with` blocks stop it."""
        if threading.current_thread() is threading.main_thread():
            self._previous_handler = signal.signal(signal.SIGTERM, _interrupt)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "wb") as log:
            # The child inherits our environment (thread settings, PYTHONPATH) but not stdin,
            # and runs in a process group of its own: a Ctrl-C reaches the bench, which then
            # stops the server with SIGTERM, instead of both racing.
            self.proc = subprocess.Popen(self.argv, stdin=subprocess.DEVNULL, stdout=log,
                                         stderr=subprocess.STDOUT, env=os.environ.copy(),
                                         process_group=0)
        deadline = time.monotonic() + self.start_timeout
        while True:
            text = self.log_path.read_text(errors="replace")
            if m := METRICS.search(text):
                self.metrics_url = f"http://{m[1]}/metrics"
            if m := HTTP_API.search(text):
                self.http_address = m[1]
            if (m := READY.search(text)) and (self.http_address or "--no-http" in self.argv):
                self.target = m[1]
                return self
            if self.proc.poll() is not None:
                raise ServerError(f"the server exited with status {self.proc.returncode}: "
                                  f"{self._tail(text)}")
            if time.monotonic() > deadline:
                self.stop()
                raise ServerError(f"the server did not start within {self.start_timeout:.0f} s "
                                  f"(log: {self.log_path})")
            time.sleep(0.1)

    def stop(self) -> None:
        """SIGTERM (the server drains), then SIGKILL if it has not exited in 30 s."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self._previous_handler is not None:
            signal.signal(signal.SIGTERM, self._previous_handler)
            self._previous_handler = None

    @staticmethod
    def _tail(text: str) -> str:
        lines = [line for line in text.strip().splitlines() if line.strip()]
        return lines[-1] if lines else "(no output)"

    def __enter__(self) -> ServerProcess:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
