"""Run untrusted programs (model completions) in a confined subprocess.

The parent never exec()s model output: it starts `jail.py` with a JSON config, which confines
itself (namespaces, read-only root, unprivileged uid, resource limits; see jail.py) and then
exec()s the toolchain command. The parent adds what a child cannot enforce on itself: a wall-clock
timeout (the jail then takes the sample's whole PID namespace down, and the process group is
killed too), an empty environment, output read from size-capped files, and a fresh work directory
per run that is removed afterwards.

Without root the sandbox falls back to "basic" mode: limits, empty environment, fresh cwd and,
where unprivileged user namespaces exist, no network; files outside the work directory are then
protected only by the invoking user's own permissions. `Sandbox.mode` says which one is in force.
"""

from __future__ import annotations

import json
import os
import queue
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

JAIL = Path(__file__).with_name("jail.py")
SETUP_FAILED = 125
OUTPUT_CAP = 64 * 1024
INSIDE_WORKDIR = "/sandbox"
SLOTS = 64  # concurrent runs per harness process, each under a uid of its own
# Sandbox uids (a process limit is counted per uid), unlikely to own anything on the host, and
# spread by pid so that two harness processes rarely share one.
FIRST_UID = 0x5EED0000 + (os.getpid() % 4096) * SLOTS
MiB = 1024 * 1024


class SandboxError(RuntimeError):
    """The sandbox itself does not work here (not a property of the program run in it)."""


@dataclass(frozen=True)
class Limits:
    cpu_s: int = 10
    memory_mb: int = 2048  # address space (RLIMIT_AS) per process
    nproc: int = 64  # processes and threads of the sandbox uid (fork bombs)
    fsize_mb: int = 32  # largest file a process may write, stdout included
    nofile: int = 256
    wall_s: float = 15.0
    tmp_mb: int = 64

    def rlimits(self) -> dict[str, tuple[int, int]]:
        return {
            "CPU": (self.cpu_s, self.cpu_s + 1),
            "AS": (self.memory_mb * MiB,) * 2,
            "NPROC": (self.nproc,) * 2,
            "FSIZE": (self.fsize_mb * MiB,) * 2,
            "NOFILE": (self.nofile,) * 2,
            "CORE": (0, 0),
        }


@dataclass(frozen=True)
class Completed:
    returncode: int | None  # None when the wall timeout killed it
    stdout: str
    stderr: str
    seconds: float

    @property
    def timed_out(self) -> bool:
        return self.returncode is None

    @property
    def setup_failed(self) -> bool:
        return self.returncode == SETUP_FAILED and self.stderr.startswith("sandbox:")


def _system_binds(tools: list[str]) -> list[str]:
    """Read-only host directories a toolchain needs: /usr, /etc, /opt, the Python installation,
    and the installation of each tool found elsewhere (the directory above its bin/)."""
    dirs = ["/usr", "/etc"]
    homes = [os.path.dirname(os.path.dirname(os.path.realpath(t))) for t in tools]
    for extra in ("/opt", sys.base_prefix, sys.prefix, *homes):
        real = os.path.realpath(extra)
        if os.path.isdir(real) and not any(real == d or real.startswith(d + "/") for d in dirs):
            dirs.append(real)
    return dirs


def _root_links() -> list[tuple[str, str]]:
    """Mirror /bin, /lib, ... when they are symlinks into /usr (merged-/usr systems)."""
    links = []
    for name in ("bin", "sbin", "lib", "lib32", "lib64", "libx32"):
        path = "/" + name
        if os.path.islink(path):
            links.append((path, os.readlink(path)))
    return links


def _read_capped(f) -> str:
    """The output, or its head and tail when longer than OUTPUT_CAP (a traceback, or a marker
    printed last, is at the end)."""
    size = f.seek(0, os.SEEK_END)
    f.seek(0)
    if size <= OUTPUT_CAP:
        data = f.read()
    else:
        head = f.read(OUTPUT_CAP // 2)
        f.seek(size - OUTPUT_CAP // 2)
        data = head + b"\n[...]\n" + f.read()
    return data.decode("utf-8", errors="replace")


def detect_mode() -> str:
    return "full" if os.geteuid() == 0 else "basic"


_SLOTS: queue.Queue[int] = queue.Queue()
for _i in range(SLOTS):
    _SLOTS.put(_i)


class Sandbox:
    """One sandbox configuration: read-only directories shared by every run (named binds such
    as a precompiled-header cache) and a base temp directory for work directories."""

    def __init__(self, shared: dict[str, Path] | None = None, mode: str | None = None,
                 tools: list[str] | None = None) -> None:
        self.mode = mode or detect_mode()
        self.binds = _system_binds(tools or [])
        self.shared = {name: Path(p).resolve() for name, p in (shared or {}).items()}
        self.base = Path(tempfile.mkdtemp(prefix="submodel-sandbox-"))
        (self.base / "root").mkdir()
        if self.mode == "full" and self.run(["/bin/true"], Limits(wall_s=30)).returncode != 0:
            self.mode = "basic"  # namespaces or mounts not allowed here (some containers)

    def path(self, name: str) -> str:
        """Where a shared directory appears inside the sandbox."""
        return f"/shared/{name}" if self.mode == "full" else str(self.shared[name])

    def close(self) -> None:
        shutil.rmtree(self.base, ignore_errors=True)

    @contextmanager
    def session(self, files: dict[str, str] | None = None) -> Iterator[Session]:
        """A uid and a fresh work directory holding `files`, for one or more commands."""
        slot = _SLOTS.get()
        uid = FIRST_UID + slot
        try:
            workdir = Path(tempfile.mkdtemp(dir=self.base, prefix="w"))
            try:
                for name, text in (files or {}).items():
                    (workdir / name).write_text(text, encoding="utf-8")
                if self.mode == "full":
                    for p in [workdir, *workdir.iterdir()]:
                        os.chown(p, uid, uid)
                yield Session(self, workdir, uid)
            finally:
                shutil.rmtree(workdir, ignore_errors=True)
        finally:
            _SLOTS.put(slot)

    def run(self, argv: list[str], limits: Limits, files: dict[str, str] | None = None,
            env: dict[str, str] | None = None) -> Completed:
        """One command (argv[0] an absolute path) in a fresh work directory holding `files`."""
        with self.session(files) as session:
            return session.run(argv, limits, env)


class Session:
    """Commands run one after another in the same work directory (compile, then run)."""

    def __init__(self, sandbox: Sandbox, workdir: Path, uid: int) -> None:
        self.sandbox, self.workdir, self.uid = sandbox, workdir, uid

    def _argv(self, argv: list[str], limits: Limits, env: dict[str, str] | None) -> list[str]:
        sb = self.sandbox
        full = sb.mode == "full"
        inside = INSIDE_WORKDIR if full else str(self.workdir)
        base_env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8", "HOME": inside,
                    "TMPDIR": "/tmp" if full else inside}
        binds = [(d, d, False) for d in sb.binds]
        binds += [(str(p), f"/shared/{name}", False) for name, p in sb.shared.items()]
        binds.append((str(self.workdir), INSIDE_WORKDIR, True))
        cfg = {"mode": sb.mode, "root": str(sb.base / "root"), "binds": binds,
               "symlinks": _root_links(), "tmp_size": f"{limits.tmp_mb}m", "cwd": inside,
               "uid": self.uid, "gid": self.uid, "limits": _nproc_adjusted(sb.mode, limits),
               "env": {**base_env, **(env or {})}, "userns_net": not full}
        return [sys.executable, "-I", "-S", str(JAIL), json.dumps(cfg), "--", *argv]

    def _terminate(self, pid: int) -> None:
        """In full mode, ask the jail to end the sample's PID namespace and wait (briefly) until
        it has, so that no process of the sample outlives the run."""
        if self.sandbox.mode != "full":
            return
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        _wait_exit(pid, 5.0)

    def run(self, argv: list[str], limits: Limits, env: dict[str, str] | None = None) -> Completed:
        with tempfile.TemporaryFile(dir=self.sandbox.base) as out, \
                tempfile.TemporaryFile(dir=self.sandbox.base) as err:
            start = time.monotonic()
            proc = subprocess.Popen(self._argv(argv, limits, env), stdin=subprocess.DEVNULL,
                                    stdout=out, stderr=err, env={}, cwd=self.workdir,
                                    start_new_session=True)
            finished = _wait_exit(proc.pid, limits.wall_s)
            if not finished:
                self._terminate(proc.pid)
            _kill_group(proc.pid)  # leader not yet reaped: the group id cannot have been reused
            code = proc.wait()
            seconds = time.monotonic() - start
            return Completed(code if finished else None, _read_capped(out), _read_capped(err),
                             seconds)

    @contextmanager
    def spawn(self, argv: list[str], limits: Limits,
              env: dict[str, str] | None = None) -> Iterator[subprocess.Popen]:
        """A long-lived confined process talking over stdin/stdout pipes; killed with its whole
        process group when the block ends."""
        proc = subprocess.Popen(self._argv(argv, limits, env), stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env={},
                                cwd=self.workdir, start_new_session=True)
        try:
            yield proc
        finally:
            self._terminate(proc.pid)
            _kill_group(proc.pid)
            proc.wait()
            for pipe in (proc.stdin, proc.stdout):
                try:
                    pipe.close()
                except OSError:
                    pass


def _nproc_adjusted(mode: str, limits: Limits) -> dict[str, tuple[int, int]]:
    """In basic mode every run shares the caller's uid: allow its current processes too."""
    rl = limits.rlimits()
    if mode == "full":
        return rl
    mine = sum(1 for p in Path("/proc").iterdir() if p.name.isdigit() and _owned(p))
    n = rl["NPROC"][0] + mine
    return {**rl, "NPROC": (n, n)}


def _owned(proc_dir: Path) -> bool:
    try:
        return proc_dir.stat().st_uid == os.getuid()
    except OSError:
        return False


def _wait_exit(pid: int, timeout: float) -> bool:
    """Wait until pid exits, without reaping it; False on timeout."""
    fd = os.pidfd_open(pid)
    try:
        return bool(select.select([fd], [], [], timeout)[0])
    finally:
        os.close(fd)


def _kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
