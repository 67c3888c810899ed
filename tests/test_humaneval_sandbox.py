"""Model output is untrusted: each hostile sample is contained, reported as a failed sample, and
the harness runs the next sample normally."""

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from submodel.bench.humaneval import sandbox
from submodel.bench.humaneval.executors import (
    CppExecutor,
    JavaExecutor,
    JavaScriptExecutor,
    PythonExecutor,
    close_all,
)
from submodel.bench.humaneval.problems import load_problems
from submodel.bench.humaneval.reference import RIGHT

FULL = sandbox.detect_mode() == "full"
needs_full = pytest.mark.skipif(not FULL, reason="needs root: namespaces, own uid, private mounts")
TIMEOUT = 2.0


def problem(language):
    return load_problems(language)[0]  # HumanEval/0, has_close_elements


@pytest.fixture(scope="module", autouse=True)
def no_shared_executors():
    """Close the process-wide executors other tests started (their Java runners are sandboxed
    processes too), so that any process left under a sandbox uid comes from these tests."""
    close_all()


@pytest.fixture(scope="module")
def python():
    ex = PythonExecutor(timeout_s=TIMEOUT)
    yield ex
    ex.close()


def sandbox_processes() -> list[str]:
    """Processes still running under a sandbox uid."""
    found = []
    for p in Path("/proc").iterdir():
        try:
            uid = p.stat().st_uid
        except OSError:
            continue
        if p.name.isdigit() and sandbox.FIRST_UID <= uid < sandbox.FIRST_UID + sandbox.SLOTS:
            found.append(p.name)
    return found


def run_python(ex, body):
    p = problem("python")
    return ex.run(p.program(body))


def assert_contained_then_healthy(ex, language, result):
    assert not result.passed and result.status in ("failed", "error", "timeout"), result
    p = problem(language)
    right = p.canonical_solution if language == "python" else RIGHT[language]["HumanEval/0"]
    after = ex.run(p.program(right))
    assert after.passed, after.detail
    if FULL and language != "java":  # (a Java runner stays up for the next sample)
        assert sandbox_processes() == []


def test_infinite_loop_times_out(python):
    start = time.monotonic()
    r = run_python(python, "    while True:\n        pass\n")
    assert r.status == "timeout" and time.monotonic() - start < TIMEOUT + 10
    assert_contained_then_healthy(python, "python", r)


def test_fork_bomb_is_bounded(python):
    body = ("    import os\n"
            "    while True:\n"
            "        try:\n"
            "            os.fork()\n"
            "        except OSError:\n"
            "            pass\n")
    start = time.monotonic()
    r = run_python(python, body)
    assert time.monotonic() - start < TIMEOUT + 15
    assert_contained_then_healthy(python, "python", r)


def test_memory_hog_is_stopped(python):
    # bytes(n) is calloc'd, so reaching the address-space limit takes no time (a timeout would
    # hide whether the limit works)
    body = "    hog = []\n    while True:\n        hog.append(bytes(2**28))\n"
    r = run_python(python, body)
    assert r.status == "error" and "MemoryError" in r.detail
    assert_contained_then_healthy(python, "python", r)


def test_huge_output_file_is_stopped(python):
    body = ("    with open('big', 'wb') as f:\n"
            "        while True:\n"
            "            f.write(b'x' * 2**20)\n")
    r = run_python(python, body)
    assert_contained_then_healthy(python, "python", r)


def then_solve(hostile: str) -> str:
    """A sample that tries something, then solves the problem: it passes unless the sandbox
    stopped the attempt."""
    return hostile + problem("python").canonical_solution


def passes_unsandboxed(body: str) -> bool:
    """The control: the same program passes when run as a plain subprocess of the harness."""
    program = problem("python").program(body)
    return subprocess.run([sys.executable, "-c", program], capture_output=True).returncode == 0


@needs_full
def test_writes_outside_the_work_directory_do_not_land(python, tmp_path):
    targets = [tmp_path / "escaped.txt", Path("/tmp") / f"submodel-escape-{os.getpid()}"]
    body = then_solve("".join(f"    open({str(t)!r}, 'w').write('x')\n" for t in targets))
    r = run_python(python, body)
    assert not any(t.exists() for t in targets)
    assert_contained_then_healthy(python, "python", r)
    assert passes_unsandboxed(body) and all(t.exists() for t in targets)
    targets[1].unlink()


@needs_full
def test_system_directories_are_read_only(python):
    r = run_python(python, then_solve("    open('/usr/escaped', 'w').write('x')\n"))
    assert not Path("/usr/escaped").exists()
    assert_contained_then_healthy(python, "python", r)


def test_environment_secrets_are_not_inherited(python, monkeypatch):
    monkeypatch.setenv("SUBMODEL_FAKE_SECRET", "hunter2")
    body = then_solve("    import os\n"
                      "    assert os.environ['SUBMODEL_FAKE_SECRET'] == 'hunter2'\n")
    r = run_python(python, body)
    assert "KeyError" in r.detail
    assert_contained_then_healthy(python, "python", r)
    assert passes_unsandboxed(body)


@needs_full
def test_harness_process_is_invisible(python):
    cmdline = f"/proc/{os.getpid()}/cmdline"
    marker = Path(cmdline).read_bytes()[-20:]
    body = then_solve(f"    assert {marker!r} in open({cmdline!r}, 'rb').read()\n")
    r = run_python(python, body)
    assert_contained_then_healthy(python, "python", r)
    assert passes_unsandboxed(body)


@needs_full
def test_no_network(python):
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        body = then_solve("    import socket\n"
                          f"    socket.create_connection(('127.0.0.1', {port}), timeout=2)\n")
        r = run_python(python, body)
        assert_contained_then_healthy(python, "python", r)
        assert passes_unsandboxed(body)


def test_early_exit_with_status_zero_does_not_pass(python):
    r = run_python(python, "    raise SystemExit(0)\n")
    assert r.status == "error"
    assert_contained_then_healthy(python, "python", r)


@pytest.mark.skipif(shutil.which("node") is None, reason="node not installed")
def test_javascript_containment(monkeypatch):
    monkeypatch.setenv("SUBMODEL_FAKE_SECRET", "hunter2")
    ex = JavaScriptExecutor(timeout_s=TIMEOUT)
    p = problem("javascript")
    try:
        hostile = ["  while (true) {}\n}\n",
                   "  if (process.env.SUBMODEL_FAKE_SECRET !== 'hunter2') throw new Error();\n"
                   + RIGHT["javascript"]["HumanEval/0"],
                   "  process.exit(0);\n}\n"]
        assert ex.run(p.program(hostile[1].replace("!==", "==="))).passed  # the control
        for body in hostile:
            assert_contained_then_healthy(ex, "javascript", ex.run(p.program(body)))
    finally:
        ex.close()


needs_gxx = pytest.mark.skipif(shutil.which("g++") is None, reason="g++ not installed")
needs_javac = pytest.mark.skipif(shutil.which("javac") is None, reason="javac not installed")
CPP_HOSTILE = {
    "loop": "    while (true) {}\n}\n",
    "fork bomb": "    while (true) fork();\n}\n",
    "memory hog": "    std::vector<std::vector<char>> v;\n"
                  "    while (true) v.emplace_back(1 << 26, 'x');\n}\n",
}


@pytest.fixture(scope="module")
def cpp():
    ex = CppExecutor(timeout_s=TIMEOUT)
    yield ex
    ex.close()


@needs_gxx
@pytest.mark.parametrize("kind", list(CPP_HOSTILE))
def test_cpp_containment(cpp, kind):
    r = cpp.run(problem("cpp").program(CPP_HOSTILE[kind]))
    if kind == "loop":
        assert r.status == "timeout"
    assert_contained_then_healthy(cpp, "cpp", r)


JAVA_HOSTILE = {
    "loop": ("timeout", "        while (true) {}\n    }\n"),
    "exit": ("error", "        System.exit(0);\n        return true;\n    }\n"),
    "threads left running": (
        "passed", "        new Thread(() -> { while (true) {} }).start();\n"
        "        return numbers.size() < 0;\n    }\n"),
    "memory hog": ("error", "        List<long[]> v = new ArrayList<>();\n"
                            "        while (true) v.add(new long[1 << 24]);\n    }\n"),
}


@needs_javac
@pytest.mark.parametrize("kind", list(JAVA_HOSTILE))
def test_java_containment_restarts_the_runner(kind):
    status, body = JAVA_HOSTILE[kind]
    ex = JavaExecutor(timeout_s=TIMEOUT, workers=1)
    try:
        r = ex.run(problem("java").program(body))
        if status != "passed":
            assert r.status == status, r
        after = ex.run(problem("java").program(RIGHT["java"]["HumanEval/0"]))
        assert after.passed, after.detail
    finally:
        ex.close()
    if FULL:  # the runner JVM is a sandboxed process too: none is left once closed
        assert sandbox_processes() == []


def test_a_sandbox_that_cannot_run_anything_fails_loudly(monkeypatch):
    from submodel.bench.humaneval import executors

    monkeypatch.setattr(executors, "_tool", lambda name: "/bin/false")
    with pytest.raises(sandbox.SandboxError, match="javascript sandbox self-check failed"):
        JavaScriptExecutor()


def test_run_samples_checks_the_language():
    from submodel.bench.humaneval.executors import run_samples

    with pytest.raises(ValueError, match="python problem"):
        run_samples("cpp", problem("python"), ["x"])


def test_a_long_printing_sample_still_passes(python):
    body = "    print('x' * 200_000)\n" + problem("python").canonical_solution
    assert run_python(python, body).passed


def test_sandbox_throughput_bench_runs_known_good_programs(tmp_path):
    from submodel.cli import main

    assert main(["bench", "sandbox", "--runs", "3", "--workers", "1", "--languages", "python",
                 "--out", str(tmp_path)]) == 0
    (row,) = json.loads((tmp_path / "sandbox.json").read_text())["runs"]
    assert row["language"] == "python" and row["statuses"] == {"passed": 3}
    assert row["runs_per_s"] > 0 and row["cpu_ms_per_run"] > 0
    assert "| python | 3 | 1 |" in (tmp_path / "sandbox.md").read_text()
