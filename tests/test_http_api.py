"""The OpenAI-compatible HTTP API, driven by the official `openai` client (and curl / raw
httpx for the wire format), over the same engine as gRPC. Tabby's schema on the same route."""

from __future__ import annotations

import json
import signal
import subprocess
import threading
import time

import httpx
import openai
import pytest
from serving import serve_process, serve_store
from test_fim_chat import JAVA_PREFIX, JAVA_SUFFIX, PREFIX, SUFFIX

from submodel.v1 import submodel_pb2 as pb

PY = "def fibonacci(n):\n    "
JAVA = "public class Main {\n    public static void main(String[] args) {\n        int x = 1;\n"
TOKEN = "s3cret-token"
LANGS = {"python", "java", "cpp", "javascript"}
LONG = 480  # greedy dense tokens the tiny model generates without stopping


@pytest.fixture(scope="module")
def served(editor_store):
    s = serve_store(editor_store, http=True)
    yield s
    s.stop()


@pytest.fixture(scope="module")
def client(served):
    with openai.OpenAI(base_url=served.base_url, api_key="unused", max_retries=0,
                       timeout=120) as c:
        yield c


def grpc_text(served, **fields) -> str:
    with served.client() as c:
        return c.generate(pb.GenerateRequest(**fields)).completions[0].text


def routing(response) -> dict:
    return response.model_extra["submodel"]


# ---- models and routing -----------------------------------------------------------------

def test_models(served, client):
    base = served.engine.store.manifest["base_model"]["id"]
    assert {m.id for m in client.models.list()} == {"auto", base, "dense", *LANGS}
    assert client.models.retrieve("java").id == "java"
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("cobol")


def test_unhinted_java_routes_to_java_and_dense_is_forced(client):
    raw = client.completions.with_raw_response.create(model="auto", prompt=JAVA, max_tokens=3,
                                                      temperature=0)
    assert raw.headers["x-submodel-language"] == "java"
    assert routing(raw.parse()) | {"confidence": 0} == {
        "language": "java", "source": "content", "sub_model": "java", "confidence": 0}
    dense = client.completions.with_raw_response.create(model="dense", prompt=JAVA,
                                                        max_tokens=3, temperature=0)
    assert dense.headers["x-submodel-language"] == "dense"
    assert routing(dense.parse())["source"] == "hint"


# ---- completions ------------------------------------------------------------------------

def test_completion_matches_grpc(served, client):
    r = client.completions.create(model="python", prompt=PY, max_tokens=8, temperature=0)
    assert r.object == "text_completion" and r.model == "python"
    [choice] = r.choices
    assert choice.index == 0 and choice.finish_reason in ("stop", "length")
    assert choice.text == grpc_text(served, prompt=PY, language="python", max_tokens=8)
    assert r.usage.prompt_tokens == len(PY.encode())
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens
    assert routing(r)["language"] == "python" and routing(r)["source"] == "hint"


def test_fill_in_the_middle(served, client):
    r = client.completions.create(model="auto", prompt=PREFIX, suffix=SUFFIX, max_tokens=6,
                                  temperature=0)
    assert r.usage.prompt_tokens == len(PREFIX.encode()) + len(SUFFIX.encode()) + 3
    assert r.choices[0].text == grpc_text(served, prompt=PREFIX, suffix=SUFFIX, max_tokens=6)


def test_n_and_seed(client):
    fields = dict(model="python", prompt=PY, max_tokens=6, temperature=1.0, n=3, seed=7)
    r = client.completions.create(**fields)
    assert [c.index for c in r.choices] == [0, 1, 2]
    assert [c.text for c in client.completions.create(**fields).choices] == \
        [c.text for c in r.choices]
    assert len({c.text for c in r.choices}) > 1  # three samples, not one thrice


def test_stop(client):
    whole = client.completions.create(model="python", prompt=PY, max_tokens=16,
                                      temperature=0).choices[0].text
    stop = whole[6:8]
    assert len(stop) == 2
    r = client.completions.create(model="python", prompt=PY, max_tokens=16, temperature=0,
                                  stop=[stop])
    assert r.choices[0].text == whole[:whole.index(stop)]
    assert r.choices[0].finish_reason == "stop"


def test_streaming_completion(client):
    fields = dict(model="python", prompt=PY, max_tokens=8, temperature=1.0, n=2, seed=3)
    whole = client.completions.create(**fields)
    texts, finish = {0: "", 1: ""}, {}
    chunks = list(client.completions.create(stream=True, stream_options={"include_usage": True},
                                            **fields))
    for chunk in chunks[:-1]:
        for c in chunk.choices:
            texts[c.index] += c.text
            if c.finish_reason is not None:
                finish[c.index] = c.finish_reason
    assert texts == {c.index: c.text for c in whole.choices}
    assert finish == {c.index: c.finish_reason for c in whole.choices}
    assert chunks[-1].choices == [] and chunks[-1].usage == whole.usage
    assert routing(chunks[0])["language"] == "python"


# ---- chat -------------------------------------------------------------------------------

def test_chat(served, client):
    messages = [{"role": "system", "content": "You write Python."},
                {"role": "user", "content": "Write add(a, b)."}]
    r = client.chat.completions.create(model="dense", messages=messages, max_tokens=6,
                                       temperature=0)
    assert r.object == "chat.completion"
    assert r.choices[0].message.role == "assistant"
    want = grpc_text(served, messages=[pb.Message(**m) for m in messages], language="dense",
                     max_tokens=6)
    assert r.choices[0].message.content == want
    stream = client.chat.completions.create(model="dense", messages=messages, max_tokens=6,
                                            temperature=0, stream=True)
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == want
    assert chunks[-1].choices[0].finish_reason == r.choices[0].finish_reason


# ---- errors -----------------------------------------------------------------------------

@pytest.mark.parametrize("fields, param, code", [
    ({"temperature": "hot"}, "temperature", "invalid_field"),
    ({"max_tokens": -1}, "max_tokens", "invalid_field"),
    ({"n": 0}, "n", "invalid_field"),
    ({"top_p": 0}, "top_p", "invalid_field"),
    ({"stop": [""]}, "stop", "invalid_field"),
    ({"logprobs": 2}, "logprobs", "invalid_field"),
    ({"prompt": ["a", "b"]}, "prompt", "invalid_field"),
    ({"prompt": "x" * 600}, "prompt", "prompt_too_long"),
])
def test_bad_fields_are_400(client, fields, param, code):
    request = {"model": "auto", "prompt": PY, "max_tokens": 2, **fields}
    with pytest.raises(openai.BadRequestError) as e:
        client.completions.create(**request)
    assert e.value.status_code == 400
    error = e.value.body
    assert (error["param"], error["code"], error["type"]) == (param, code,
                                                              "invalid_request_error")
    assert error["message"]


def test_unknown_model_is_404(client):
    with pytest.raises(openai.NotFoundError) as e:
        client.completions.create(model="cobol", prompt=PY, max_tokens=2)
    assert e.value.body["code"] == "unknown_language"


def test_bad_chat_and_body(served, client):
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model="auto", max_tokens=2,
                                       messages=[{"role": "robot", "content": "hi"}])
    assert e.value.body["param"] == "messages"
    r = httpx.post(f"{served.base_url}/completions", content=b"{not json", timeout=30)
    assert r.status_code == 400 and "not valid JSON" in r.json()["error"]["message"]


def test_model_without_fim_or_chat(tiny_store):
    s = serve_store(tiny_store, http=True)
    try:
        with openai.OpenAI(base_url=s.base_url, api_key="x", max_retries=0) as c:
            with pytest.raises(openai.BadRequestError) as e:
                c.completions.create(model="auto", prompt=PREFIX, suffix=SUFFIX, max_tokens=2)
            assert e.value.body["code"] == "fim_unsupported"
            with pytest.raises(openai.BadRequestError) as e:
                c.chat.completions.create(model="auto", max_tokens=2,
                                          messages=[{"role": "user", "content": "hi"}])
            assert e.value.body["code"] == "chat_unsupported"
    finally:
        s.stop()


def test_bearer_token(editor_store):
    s = serve_store(editor_store, http=True, token=TOKEN)
    try:
        with openai.OpenAI(base_url=s.base_url, api_key="wrong", max_retries=0) as c:
            with pytest.raises(openai.AuthenticationError) as e:
                c.completions.create(model="auto", prompt=PY, max_tokens=2)
            assert e.value.status_code == 401 and e.value.body["code"] == "unauthenticated"
        assert httpx.get(f"{s.base_url}/models", timeout=30).status_code == 401
        assert httpx.get(f"{s.base_url}/health", timeout=30).status_code == 200  # open
        with openai.OpenAI(base_url=s.base_url, api_key=TOKEN, max_retries=0) as c:
            assert c.completions.create(model="auto", prompt=PY, max_tokens=2).choices
    finally:
        s.stop()


# ---- the wire format --------------------------------------------------------------------

def test_sse_framing_with_curl(served):
    body = json.dumps({"model": "python", "prompt": PY, "max_tokens": 5, "temperature": 0,
                       "stream": True})
    out = subprocess.run(
        ["curl", "-sS", "-N", "-i", "-H", "content-type: application/json", "-d", body,
         f"{served.base_url}/completions"], capture_output=True, text=True, timeout=120,
        check=True).stdout
    head, _, stream = out.replace("\r\n", "\n").partition("\n\n")
    assert "content-type: text/event-stream" in head.lower()
    assert "x-submodel-language: python" in head.lower()
    events = stream.split("\n\n")
    assert events[-1] == "" and events[-2] == "data: [DONE]"
    chunks = [json.loads(e.removeprefix("data: ")) for e in events[:-2]]
    assert all(e.startswith("data: ") and "\n" not in e for e in events[:-1])
    assert {c["object"] for c in chunks} == {"text_completion"}
    text = "".join(c["choices"][0]["text"] for c in chunks)
    assert text == grpc_text(served, prompt=PY, language="python", max_tokens=5)
    assert chunks[-1]["choices"][0]["finish_reason"] in ("stop", "length")


# ---- Tabby ------------------------------------------------------------------------------

def test_tabby_schema(served):
    body = {"language": "java", "segments": {"prefix": JAVA_PREFIX, "suffix": JAVA_SUFFIX,
                                             "filepath": "src/Main.java"}}
    r = httpx.post(f"{served.base_url}/completions", json=body, timeout=120)
    assert r.status_code == 200 and r.headers["x-submodel-language"] == "java"
    data = r.json()
    assert data["id"].startswith("cmpl-") and len(data["choices"]) == 1
    assert data["choices"][0]["index"] == 0
    assert data["choices"][0]["text"] == grpc_text(
        served, prompt=JAVA_PREFIX, suffix=JAVA_SUFFIX, language="java", max_tokens=64)
    # VS Code's id for a language we do not serve: the file path decides
    other = dict(body, language="typescript",
                 segments={"prefix": "x = 1\n", "suffix": "", "filepath": "a.py"})
    assert httpx.post(f"{served.base_url}/completions", json=other,
                      timeout=120).json()["submodel"]["source"] == "filename"
    health = httpx.get(f"{served.base_url}/health", timeout=30).json()
    assert health["device"] == "cpu" and health["model"]


# ---- one engine for both APIs -----------------------------------------------------------

def test_grpc_and_http_share_decode_steps(served, client):
    """A long gRPC stream and an HTTP request at once: the HTTP request's tokens are decoded
    in the same steps as the gRPC one's (a step with two rows), and each protocol counts in
    submodel_requests_total."""
    v = served.value
    labels = dict(language="dense", route_source="hint", status="ok")
    before = {p: v("submodel_requests_total", protocol=p, **labels) for p in ("grpc", "http")}
    wide_before = v("submodel_batch_size_count") - v("submodel_batch_size_bucket", le="1.0")
    with served.client() as c:
        submitted = time.monotonic()
        stream = c.stream(pb.GenerateRequest(prompt="int main() {\n", language="dense",
                                             max_tokens=LONG))
        for chunk in stream:
            if chunk.WhichOneof("chunk") == "delta":
                break
        r = client.completions.create(model="dense", prompt=PY, max_tokens=8, temperature=0)
        http_done = time.monotonic() - submitted
        summary = list(stream)[-1].summary
    assert summary.usage.completion_tokens == LONG
    assert summary.timings.total_seconds > http_done, "the gRPC request ended first"
    assert r.usage.completion_tokens >= 2
    wide = v("submodel_batch_size_count") - v("submodel_batch_size_bucket", le="1.0")
    assert wide - wide_before >= r.usage.completion_tokens - 1
    for p in ("grpc", "http"):
        assert served.wait_value("submodel_requests_total", before[p] + 1, protocol=p,
                                 **labels) == before[p] + 1


def test_http_errors_count_with_protocol(served, client):
    labels = dict(language="none", route_source="none", status="invalid_argument",
                  protocol="http")
    before = served.value("submodel_requests_total", **labels)
    with pytest.raises(openai.BadRequestError):
        client.completions.create(model="auto", prompt="", max_tokens=2)
    assert served.wait_value("submodel_requests_total", before + 1, **labels) == before + 1


def test_client_going_away_cancels(served, monkeypatch):
    """A streaming client that disconnects: its engine request is cancelled (counted as
    cancelled) instead of running to max_tokens. The server learns of the disconnect when it
    writes the next text, so decode steps wait until the client has closed its connection
    (after its request was prefilled): the request cannot run to its end while the client is
    still leaving."""
    labels = dict(language="dense", route_source="hint", status="cancelled", protocol="http")
    engine = served.engine
    # idle first: an earlier test's request still finishing would be counted in our window
    assert engine.wait_parked(60), "the engine is still busy with an earlier test's requests"
    before = served.value("submodel_requests_total", **labels)
    body = {"model": "dense", "prompt": "int main() {\n", "max_tokens": 400, "stream": True,
            "temperature": 0}
    closed = threading.Event()
    decode = engine._decode

    def gated_decode(batch):
        closed.wait(60)
        return decode(batch)

    monkeypatch.setattr(engine, "_decode", gated_decode)
    def ours_running() -> bool:  # prefilled: its sequence waits for the first decode step
        return any(s.handle.request.prompt == body["prompt"]
                   for s in list(engine.scheduler.running))

    with httpx.stream("POST", f"{served.base_url}/completions", json=body, timeout=60) as r:
        assert r.status_code == 200
        deadline = time.monotonic() + 60
        while not ours_running():
            assert time.monotonic() < deadline, "the request never reached the engine"
            time.sleep(0.01)
    closed.set()  # the connection is closed: the next token written finds it gone
    assert served.wait_value("submodel_requests_total", before + 1, timeout=60,
                             **labels) == before + 1


# ---- the CLI ----------------------------------------------------------------------------

def test_serve_http_port_zero_logs_the_port(editor_store):
    with serve_process(editor_store, "--http-port", "0") as serve:
        base = serve.wait_for(r"OpenAI-compatible API on (http://127\.0\.0\.1:\d+/v1)").group(1)
        models = httpx.get(f"{base}/models", timeout=30).json()
        assert "auto" in {x["id"] for x in models["data"]}
        threading.Thread(target=serve.proc.stderr.read, daemon=True).start()
        serve.proc.send_signal(signal.SIGTERM)
        assert serve.proc.wait(timeout=60) == 0


def test_serve_help_covers_http(capsys):
    from submodel.cli import main

    with pytest.raises(SystemExit):
        main(["serve", "--help"])
    out = capsys.readouterr().out
    for flag in ("--http-host", "--http-port", "--no-http"):
        assert flag in out
