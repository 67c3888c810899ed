"""Fuzzing the HTTP routes (OpenAI completions and chat, Tabby's schema, raw bodies) against a
real server over the tiny editor store (FIM tokens and a chat template).

Whatever arrives, the answer is 200 or a documented status with OpenAI's error object and a
message (never 500, never a hang); a stream ends with `data: [DONE]`; and afterwards the server
is healthy. Budget as in test_fuzz.py (`SUBMODEL_FUZZ_EXAMPLES` runs longer).
"""

from __future__ import annotations

import json

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from serving import serve_store
from test_fuzz import EXAMPLES, FUZZ, assert_healthy, floats, languages, small_or_edge, stops
from test_service import PY

from submodel.server.http_api import MAX_BODY_BYTES
from submodel.v1 import submodel_pb2 as pb

DOCUMENTED = {400, 404, 429, 504}  # errors.py: invalid field, unknown model, queue full, deadline
TIMEOUT = 60.0  # per call: the tiny model's 512-token context bounds any generation

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats()
    | st.text(max_size=40),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                max_size=4),
    max_leaves=8)
prompts = st.one_of(st.text(max_size=200), st.sampled_from(["", "\x00", PY, "é" * 100_000]),
                    st.lists(st.text(max_size=20), max_size=3), json_values)
models = st.one_of(languages, st.sampled_from(["auto", "tiny", "dense", "python"]), json_values)


def maybe(draw, body: dict, fields: dict) -> dict:
    """Each field: left out, a plausible value, or any JSON value."""
    for name, plausible in fields.items():
        choice = draw(st.integers(0, 2))
        if choice == 1:
            body[name] = draw(plausible)
        elif choice == 2:
            body[name] = draw(json_values)
    return body


SAMPLING = {"max_tokens": small_or_edge, "temperature": floats, "top_p": floats,
            "n": st.sampled_from((-1, 0, 1, 2, 4, 5, 2**31)), "stop": stops,
            "seed": st.sampled_from((0, 1, -1, 2**64)), "stream": st.booleans(),
            "stream_options": st.just({"include_usage": True}), "model": models}


@st.composite
def completion_bodies(draw) -> dict:
    return maybe(draw, {}, {"prompt": prompts, "suffix": prompts, **SAMPLING})


@st.composite
def chat_bodies(draw) -> dict:
    message = st.fixed_dictionaries({"role": st.sampled_from(["user", "system", "assistant",
                                                               "tool", ""]) | json_values,
                                      "content": prompts})
    return maybe(draw, {}, {"messages": st.lists(message, max_size=3) | json_values,
                            **SAMPLING})


@st.composite
def tabby_bodies(draw) -> dict:
    segments = maybe(draw, {}, {"prefix": prompts, "suffix": prompts,
                                "filepath": st.text(max_size=300)})
    return maybe(draw, {"segments": segments}, {"language": languages})


@pytest.fixture(scope="module")
def served(editor_store):
    s = serve_store(editor_store, http=True)
    with s.client() as c:  # warm: the first step may build the kernels
        c.generate(pb.GenerateRequest(prompt=PY, language="python", max_tokens=2), timeout=900)
    yield s
    s.stop()


@pytest.fixture(scope="module")
def grpc_client(served):
    with served.client() as c:
        yield c


def check(response: httpx.Response, streamed: bool) -> None:
    if response.status_code != 200:
        assert response.status_code in DOCUMENTED, (response.status_code, response.text)
        assert response.json()["error"]["message"], response.text
        return
    if not streamed:
        assert response.json()
        return
    lines = [line for line in response.text.splitlines() if line.startswith("data: ")]
    assert lines and lines[-1] == "data: [DONE]", response.text[-300:]
    for line in lines[:-1]:
        chunk = json.loads(line[6:])
        if "error" in chunk:  # a failure after the stream began
            assert chunk["error"]["message"]


def post(served, route: str, content: bytes | str) -> httpx.Response:
    return httpx.post(f"{served.base_url}{route}", content=content, timeout=TIMEOUT,
                      headers={"content-type": "application/json"})


@FUZZ
@given(body=completion_bodies())
def test_fuzz_completions(served, body):
    check(post(served, "/completions", json.dumps(body)), body.get("stream") is True)


@FUZZ
@given(body=chat_bodies())
def test_fuzz_chat(served, body):
    check(post(served, "/chat/completions", json.dumps(body)), body.get("stream") is True)


@FUZZ
@given(body=tabby_bodies())
def test_fuzz_tabby(served, body):
    check(post(served, "/completions", json.dumps(body)), False)


@settings(FUZZ, max_examples=(EXAMPLES or 25) * 2)
@given(route=st.sampled_from(["/completions", "/chat/completions"]), payload=st.one_of(
    st.binary(max_size=200), st.sampled_from([b"", b"[]", b"null", b"{", b'"x"', b"NaN",
                                              b"\xff\xfe{}", b'{"prompt": "a"' * 2])))
def test_fuzz_raw_bodies(served, route, payload):
    check(post(served, route, payload), False)


def test_oversized_body_is_refused(served):
    r = post(served, "/completions", b'{"prompt": "' + b"x" * (MAX_BODY_BYTES + 1) + b'"}')
    assert r.status_code == 400 and "larger than" in r.json()["error"]["message"]


def test_server_healthy_after_http_fuzzing(served, grpc_client):
    """Runs after the fuzz tests above (file order): nothing they sent left a trace."""
    assert_healthy(served, grpc_client)
    statuses = {s.labels["status"] for m in served.metrics.registry.collect()
                if m.name == "submodel_requests" for s in m.samples if s.value > 0}
    assert "internal" not in statuses and "ok" in statuses
