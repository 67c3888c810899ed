"""Fuzzing every field of every RPC against a real server over the tiny store.

Whatever arrives, the answer is OK or a documented status with a message (never INTERNAL or
UNKNOWN, never a crash or a hang), and afterwards the server is healthy: SERVING, nothing
queued, every KV slot free, and a plain request still works.

The default budget is small and fixed (derandomized, a few seconds of examples per test);
`SUBMODEL_FUZZ_EXAMPLES=2000 pytest tests/test_fuzz.py` runs longer, randomized.
"""

from __future__ import annotations

import os
import sys
import traceback

import grpc
import pytest
from grpc_health.v1 import health_pb2
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from serving import serve_store
from test_service import PY, health_status

from submodel.server.generation import MAX_STOP, MAX_STOP_CHARS
from submodel.v1 import submodel_pb2 as pb

EXAMPLES = int(os.environ.get("SUBMODEL_FUZZ_EXAMPLES", "0"))
FUZZ = settings(max_examples=EXAMPLES or 25, derandomize=not EXAMPLES, deadline=None,
                database=None, suppress_health_check=list(HealthCheck))
TIMEOUT = 5.0  # per call; a long generation may end DEADLINE_EXCEEDED, which is documented
DOCUMENTED = {grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND,
              grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.DEADLINE_EXCEEDED}
INT32 = (-(2**31), -1, 0, 1, 2, 2**31 - 1)
METHODS = ("Generate", "GenerateStream", "DetectLanguage", "ListSubModels")

texts = st.one_of(
    st.text(max_size=300),  # any unicode, control characters included
    st.text(alphabet=st.characters(max_codepoint=0x1F), max_size=50),
    st.sampled_from(["", "\x00", PY, "é" * 200_000, "x" * 700]),  # empty, NUL, huge
)
floats = st.one_of(st.floats(width=32), st.sampled_from(
    [0.0, -0.0, 1e-45, 1e-30, 1e-7, 1.0, 5.0, 5.01, 3.4e38, float("nan"), float("inf")]))
small_or_edge = st.one_of(st.integers(1, 4), st.sampled_from(INT32), st.integers(-5, 20))
languages = st.one_of(st.sampled_from(["python", "py", "java", "cpp", "c++", "javascript",
                                       "dense", "cobol", "PYTHON", ""]), st.text(max_size=80))
stops = st.one_of(
    st.lists(st.text(max_size=MAX_STOP_CHARS + 8), max_size=MAX_STOP + 4),
    st.just(["a" * MAX_STOP_CHARS] * MAX_STOP), st.just(["x"] * 10_000))


@st.composite
def generate_requests(draw) -> pb.GenerateRequest:
    r = pb.GenerateRequest(prompt=draw(texts), filename=draw(st.text(max_size=5000)),
                           stop=draw(stops))
    maybe = {"language": languages, "max_tokens": small_or_edge, "temperature": floats,
             "top_p": floats, "top_k": st.sampled_from((*INT32, 5, 300)),
             "n": st.sampled_from((*INT32, 4, 5, 16, 17)),
             "seed": st.sampled_from((0, 1, 2**63, 2**64 - 1))}
    for name, strategy in maybe.items():
        if draw(st.booleans()):
            setattr(r, name, draw(strategy))
    return r


def check_status(err: grpc.RpcError, cancelled_by_us: bool = False) -> None:
    allowed = DOCUMENTED | ({grpc.StatusCode.CANCELLED} if cancelled_by_us else set())
    assert err.code() in allowed, (err.code(), err.details())
    assert err.details(), "an error without a message"


@pytest.fixture(scope="module")
def served(tiny_store):
    s = serve_store(tiny_store)
    with s.client() as c:  # warm: the first step may build the kernels (minutes when busy)
        c.generate(pb.GenerateRequest(prompt=PY, language="python", max_tokens=2), timeout=900)
    yield s
    s.stop()


@pytest.fixture(scope="module")
def client(served):
    with served.client() as c:
        yield c


def assert_healthy(served, client) -> None:
    """SERVING, the engine idle with every slot free, queues at 0, and a request works."""
    e = served.engine
    if not e.wait_parked(60):
        stack = "".join(traceback.format_stack(sys._current_frames()[e.thread.ident]))
        raise AssertionError(f"the engine is still busy after 60 s: running "
                             f"{[q.handle.request for q in e.scheduler.running]}, now at\n{stack}")
    assert len(e.scheduler.free_slots) == e.cache.k.shape[1], "a slot is stuck"
    for lang in (*served.engine.languages, "dense"):
        assert served.value("submodel_queue_depth", language=lang) == 0, lang
    assert health_status(served.target) == health_pb2.HealthCheckResponse.SERVING
    r = client.generate(pb.GenerateRequest(prompt=PY, language="python", max_tokens=2),
                        timeout=30)
    assert r.completions[0].tokens >= 1


@FUZZ
@given(request=generate_requests(), stream=st.booleans(), cancel=st.booleans())
def test_fuzz_generate(served, client, request, stream, cancel):
    try:
        if not stream:
            r = client.generate(request, timeout=TIMEOUT)
            assert len(r.completions) == (request.n if request.HasField("n") else 1)
            return
        call = client.stream(request, timeout=TIMEOUT)
        for chunk in call:
            if cancel:
                call.cancel()
                break
            assert chunk.WhichOneof("chunk") is not None
    except grpc.RpcError as e:
        check_status(e, cancelled_by_us=stream and cancel)


@FUZZ
@given(text=texts, filename=st.text(max_size=5000), language=st.none() | languages)
def test_fuzz_detect(client, text, filename, language):
    try:
        routing = client.detect(text, filename=filename, language=language, timeout=TIMEOUT)
        assert 0 <= routing.confidence <= 1 and routing.language
    except grpc.RpcError as e:
        check_status(e)


@settings(FUZZ, max_examples=(EXAMPLES or 25) * 4)
@given(method=st.sampled_from(METHODS), payload=st.one_of(
    st.binary(max_size=200),
    st.builds(lambda a, b: a + b, st.sampled_from([b"\x0a\x05", b"\x12\x03", b"\x42\x02",
                                                   b"\x48", b"\x50", b"\x0a\xff\xff\xff\x0f"]),
              st.binary(max_size=20))))
def test_fuzz_raw_bytes(served, method, payload):
    """Bytes no client library would send, through a generic channel call."""
    with grpc.insecure_channel(served.target) as ch:
        path = f"/submodel.v1.Generator/{method}"
        call = (ch.unary_stream(path) if method == "GenerateStream" else ch.unary_unary(path))
        try:
            result = call(payload, timeout=TIMEOUT)
            if method == "GenerateStream":
                list(result)
        except grpc.RpcError as e:
            check_status(e)


def test_server_healthy_after_fuzzing(served, client):
    """Runs after the fuzz tests above (file order): nothing they sent left a trace."""
    assert_healthy(served, client)
    statuses = {s.labels["status"] for m in served.metrics.registry.collect()
                if m.name == "submodel_requests" for s in m.samples if s.value > 0}
    assert statuses and statuses <= {"ok", "cancelled", *(c.name.lower() for c in DOCUMENTED)}
