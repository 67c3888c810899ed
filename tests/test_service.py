"""The gRPC service end to end: real engine over a tiny pruned store, real server on a free
loopback port, real clients. Every status code is triggered for real."""

from __future__ import annotations

import datetime
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from serving import serve_process, serve_store

from submodel.cli import main
from submodel.server.auth import check_bind, server_credentials
from submodel.server.generation import (
    MAX_FILENAME_CHARS,
    MAX_LANGUAGE_CHARS,
    MAX_STOP,
    MAX_STOP_CHARS,
    MAX_TEXT_BYTES,
)
from submodel.v1 import submodel_pb2 as pb

PY = "def fibonacci(n):\n    "
LONG_TOKENS = 400  # a greedy dense request that runs to max_tokens (checked in `long_seconds`)
LONG_PROMPT = "int main() {\n"
SNIPPETS = [("stats.py", "python", "import os\n\ndef mean(xs):\n    "),
            ("Main.java", "java", "public class Main {\n    public static void main("),
            ("vec.cpp", "cpp", "#include <vector>\nstd::vector<int> v;\nint f() {\n"),
            ("app.js", "javascript", "const express = require('express');\nfunction f() {\n")]
OK = "ok"
GRPC = "grpc"  # the `protocol` label of gRPC requests


def long_request(**fields) -> pb.GenerateRequest:
    return pb.GenerateRequest(**{"prompt": LONG_PROMPT, "language": "dense",
                                 "max_tokens": LONG_TOKENS, **fields})


def code(err: grpc.RpcError) -> grpc.StatusCode:
    return err.code()


def health_status(target: str, service: str = "submodel.v1.Generator") -> int:
    with grpc.insecure_channel(target) as ch:
        return health_pb2_grpc.HealthStub(ch).Check(
            health_pb2.HealthCheckRequest(service=service), timeout=10).status


@pytest.fixture(scope="module")
def served(tiny_store):
    s = serve_store(tiny_store)
    yield s
    s.stop()


@pytest.fixture
def client(served):
    with served.client() as c:
        yield c


@pytest.fixture(scope="module")
def long_seconds(served):
    """How long LONG_TOKENS greedy dense tokens take alone (and that they do run to length)."""
    with served.client() as c:
        c.generate(long_request(max_tokens=8))  # warm up
        t0 = time.monotonic()
        r = c.generate(long_request())
    assert r.completions[0].finish_reason == "length", "pick a LONG_PROMPT the tiny model " \
        "does not end early"
    return time.monotonic() - t0


def first_delta(stream) -> pb.GenerateChunk:
    for chunk in stream:
        if chunk.WhichOneof("chunk") == "delta":
            return chunk
    raise AssertionError("stream ended before its first token")


# ---- generation -------------------------------------------------------------------------

def test_unary_generate(client):
    request = pb.GenerateRequest(prompt=PY, language="py", max_tokens=8, n=2, temperature=0.8,
                                 seed=3)
    r = client.generate(request)
    assert (r.routing.language, r.routing.source, r.routing.sub_model) == (
        "python", "hint", "python")
    assert [c.index for c in r.completions] == [0, 1]
    for c in r.completions:
        assert c.finish_reason in ("stop", "length")
        assert 1 <= c.tokens <= 8 and (c.tokens == 8) == (c.finish_reason == "length")
    assert r.usage.prompt_tokens == len(PY.encode())  # the tiny tokenizer is byte-level
    assert r.usage.completion_tokens == sum(c.tokens for c in r.completions)
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens
    t = r.timings
    assert 0 <= t.queue_seconds <= t.time_to_first_token_seconds <= t.total_seconds
    assert t.route_seconds > 0
    again = client.generate(request)
    assert [c.text for c in again.completions] == [c.text for c in r.completions]


def test_any_uint64_seed(client):
    """The seed field is uint64: every value works and is reproducible."""
    for seed in (0, 2**62, 2**64 - 1):
        request = pb.GenerateRequest(prompt=PY, max_tokens=4, temperature=1, seed=seed)
        first = client.generate(request, timeout=30)
        assert first.completions[0].tokens >= 1
        assert client.generate(request, timeout=30).completions[0].text == \
            first.completions[0].text


def test_stream_matches_unary(client):
    request = pb.GenerateRequest(prompt=PY, filename="fib.py", max_tokens=12)
    chunks = list(client.stream(request))
    kinds = [c.WhichOneof("chunk") for c in chunks]
    assert kinds[0] == "routing" and kinds[-1] == "summary" and kinds[-2] == "completion"
    assert set(kinds[1:-2]) == {"delta"}
    assert chunks[0].routing.source == "filename"
    deltas = [c.delta for c in chunks if c.HasField("delta")]
    completion = chunks[-2].completion
    assert "".join(d.text for d in deltas) == completion.text
    assert len(deltas) == completion.tokens == chunks[-1].summary.usage.completion_tokens
    assert client.generate(request).completions[0].text == completion.text


@pytest.mark.parametrize("strategy", ["swap", "fused"])
def test_concurrent_mixed_language_clients(tiny_store, strategy):
    """Eight clients, four languages at once, routed by file name or by content: each gets the
    same greedy text as when it runs alone, so batching never mixes one language's mask into
    another's request."""
    served = serve_store(tiny_store, strategy=strategy)
    try:
        _mixed_language_clients(served)
    finally:
        served.stop()
    if strategy == "swap":
        assert served.value("submodel_mask_switches_total") > 0


def _mixed_language_clients(served):

    def ask(filename: str, prompt: str) -> pb.GenerateResponse:
        with served.client() as c:
            return c.generate(pb.GenerateRequest(prompt=prompt, filename=filename,
                                                 max_tokens=24))

    alone = {p: ask(f, p).completions[0].text for f, _, p in SNIPPETS}
    cases = [(f, lang, p, "filename") for f, lang, p in SNIPPETS]
    cases += [("", lang, p, "content") for _, lang, p in SNIPPETS]
    with ThreadPoolExecutor(8) as pool:
        futures = [(lang, p, source, pool.submit(ask, f, p)) for f, lang, p, source in cases]
        for language, prompt, source, future in futures:
            r = future.result(timeout=120)
            assert (r.routing.language, r.routing.source) == (language, source)
            assert r.completions[0].text == alone[prompt]


@pytest.mark.parametrize("fields, fix", [
    ({"prompt": ""}, "prompt is empty"),
    ({"max_tokens": -1}, "max_tokens"),
    ({"max_tokens": 10**6}, "max_tokens"),
    ({"temperature": -0.5}, "temperature"),
    ({"temperature": 50}, "temperature"),
    ({"top_p": 0}, "top_p"),
    ({"top_p": 1.5}, "top_p"),
    ({"top_k": -1}, "top_k"),
    ({"n": 0}, "n must"),
    ({"n": 100}, "n must"),
    ({"stop": [""]}, "stop strings"),
    ({"prompt": "x" * 600}, "shorten the prompt"),  # 600 tokens, the context is 512
    ({"prompt": "é" * (MAX_TEXT_BYTES // 2 + 1)}, f"the limit is {MAX_TEXT_BYTES}"),
    ({"filename": "a" * (MAX_FILENAME_CHARS + 1)}, f"limit of {MAX_FILENAME_CHARS} char"),
    ({"language": "p" * (MAX_LANGUAGE_CHARS + 1)}, f"limit of {MAX_LANGUAGE_CHARS} char"),
    ({"stop": ["a"] * (MAX_STOP + 1)}, f"at most {MAX_STOP} stop strings"),
    ({"stop": ["a" * (MAX_STOP_CHARS + 1)]}, f"1 to {MAX_STOP_CHARS} characters"),
    ({"temperature": float("nan")}, "temperature must be in 0..5"),
    ({"top_p": float("inf")}, "top_p must be in (0, 1]"),
    ({"max_tokens": 0}, "max_tokens must be in 1..512"),
    ({"n": 5}, "n must be in 1..4"),  # the test server's --max-batch
])
def test_invalid_argument(client, fields, fix):
    request = pb.GenerateRequest(**{"prompt": PY, "language": "python", **fields})
    for call in (client.generate, lambda r: list(client.stream(r))):
        with pytest.raises(grpc.RpcError) as e:
            call(request)
        assert code(e.value) == grpc.StatusCode.INVALID_ARGUMENT
        assert fix in e.value.details()


@pytest.mark.parametrize("payload, fix", [
    (b"\x0a\x03d\xffe" + b"\x20\x04", "prompt is not valid UTF-8"),
    (b"\x0a\x01x\x1a\x02\xc3(", "filename is not valid UTF-8"),
    (b"\x0a\x09trunc", "not a valid submodel.v1.GenerateRequest"),
])
def test_undecodable_request_is_invalid_argument(served, client, payload, fix):
    """Raw bytes no client library would send: proto3 rejects bad UTF-8 at parsing; the server
    still answers INVALID_ARGUMENT naming the field, and keeps serving."""
    with grpc.insecure_channel(served.target) as ch:
        raw = ch.unary_unary("/submodel.v1.Generator/Generate")  # bytes in, bytes out
        with pytest.raises(grpc.RpcError) as e:
            raw(payload, timeout=10)
    assert code(e.value) == grpc.StatusCode.INVALID_ARGUMENT
    assert fix in e.value.details()
    assert client.generate(pb.GenerateRequest(prompt=PY, max_tokens=2)).completions


def test_detect_size_limits(client):
    for fields, fix in (({"text": "x" * (MAX_TEXT_BYTES + 1)}, "text is"),
                        ({"filename": "a" * (MAX_FILENAME_CHARS + 1)}, "filename"),
                        ({"language": "p" * (MAX_LANGUAGE_CHARS + 1)}, "language")):
        with pytest.raises(grpc.RpcError) as e:
            client.detect(**{"text": PY, **fields})
        assert code(e.value) == grpc.StatusCode.INVALID_ARGUMENT
        assert fix in e.value.details() and "limit" in e.value.details()


def test_unknown_language_not_found(client):
    with pytest.raises(grpc.RpcError) as e:
        client.generate(pb.GenerateRequest(prompt=PY, language="cobol"))
    assert code(e.value) == grpc.StatusCode.NOT_FOUND
    assert "cobol" in e.value.details()
    with pytest.raises(grpc.RpcError) as e:
        client.detect(PY, language="cobol")
    assert code(e.value) == grpc.StatusCode.NOT_FOUND


def test_detect_and_list_sub_models(client):
    routing = client.detect("", filename="src/Main.java")
    assert (routing.language, routing.source, routing.sub_model) == ("java", "filename", "java")
    r = client.sub_models()
    by_id = {m.id: m for m in r.sub_models}
    assert set(by_id) == {"dense", "python", "java", "cpp", "javascript"}
    assert by_id["dense"].dense and by_id["dense"].mask_bytes == 0
    for lang in ("python", "java", "cpp", "javascript"):
        assert not by_id[lang].dense
        assert by_id[lang].sparsity == pytest.approx(0.5, abs=0.01)
        assert by_id[lang].mask_bytes > 0
    assert (r.method, r.pattern, r.strategy, r.weights) == ("wanda", "unstructured", "swap", "full")
    assert len(r.overlap) == 6 and all(0 < p.jaccard_distance < 1 for p in r.overlap)


# ---- deadlines, cancellation, back-pressure ---------------------------------------------

def test_deadline_exceeded(served, client, monkeypatch):
    """The client gets DEADLINE_EXCEEDED, and the engine stops working on the request. Its
    decode steps wait until the client has seen the deadline pass and the server's own copy of
    it has passed too (the client's cancel can arrive first), so however fast the machine is,
    the request cannot finish first, and the server counts it as a deadline."""
    engine, passed = served.engine, threading.Event()
    decode = engine._decode

    def gated_decode(batch):
        assert passed.wait(60), "the client never saw its deadline pass"
        deadline = max(s.handle.request.deadline for s in batch)
        time.sleep(max(0.0, deadline - time.monotonic()))  # until the server's deadline
        decode(batch)

    monkeypatch.setattr(engine, "_decode", gated_decode)
    before = served.value("submodel_requests_total", language="dense", route_source="hint",
                          status="deadline_exceeded", protocol=GRPC)
    tokens = served.value("submodel_generated_tokens_total", language="dense")
    with pytest.raises(grpc.RpcError) as e:
        client.generate(long_request(), timeout=1.0)
    passed.set()
    assert code(e.value) == grpc.StatusCode.DEADLINE_EXCEEDED
    assert served.wait_value("submodel_requests_total", before + 1, language="dense",
                             route_source="hint", status="deadline_exceeded",
                             protocol=GRPC) == before + 1
    generated = served.value("submodel_generated_tokens_total", language="dense") - tokens
    assert 0 < generated < LONG_TOKENS / 4  # stopped at its deadline, not run to the end


def test_cancel_frees_the_slot(tiny_store, long_seconds):
    """One batch slot: a client that goes away mid-stream stops generating at once (metrics),
    and the next request gets the slot without waiting for the cancelled one's tokens."""
    s = serve_store(tiny_store, max_batch=1)
    try:
        with s.client() as c:
            stream = c.stream(long_request())
            first_delta(stream)
            stream.cancel()
            assert s.wait_value("submodel_requests_total", 1, language="dense",
                                route_source="hint", status="cancelled", protocol=GRPC) == 1
            steps = s.steps_when_idle()  # the engine stopped decoding the cancelled request
            assert steps < LONG_TOKENS * 3 / 4
            r = c.generate(pb.GenerateRequest(prompt=PY, language="python", max_tokens=4))
            assert r.timings.queue_seconds < long_seconds / 4
            assert s.value("submodel_requests_total", language="python", route_source="hint",
                           status=OK, protocol=GRPC) == 1
    finally:
        s.stop()


def test_queue_full_resource_exhausted(tiny_store):
    s = serve_store(tiny_store, max_batch=1, max_queue=1)
    try:
        with s.client() as c:
            running = c.stream(long_request())
            first_delta(running)
            waiting = c.stream(long_request())
            assert s.wait_value("submodel_queue_depth", 1, language="dense") == 1
            with pytest.raises(grpc.RpcError) as e:
                c.generate(pb.GenerateRequest(prompt=PY, language="python", max_tokens=2))
            assert code(e.value) == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "queue is full" in e.value.details()
            assert s.value("submodel_requests_total", language="python", route_source="hint",
                           status="resource_exhausted", protocol=GRPC) == 1
            running.cancel()
            waiting.cancel()
    finally:
        s.stop()


# ---- health and drain -------------------------------------------------------------------

def assert_shutting_down(call) -> None:
    with pytest.raises(grpc.RpcError) as e:
        call()
    assert code(e.value) == grpc.StatusCode.UNAVAILABLE
    assert "shutting down" in e.value.details()


def test_drain_finishes_in_flight_and_refuses_new_work(tiny_store):
    """From the start of the drain until the port closes, every RPC but health is answered
    UNAVAILABLE by the server itself (never CANCELLED by a stopping grpc server): while a
    request is in flight, and after it finished, until no client has come for `quiet` seconds
    (each arrival restarts that wait, so the calls below, back to back, never race the stop)."""
    s = serve_store(tiny_store, quiet=5)
    serving = health_pb2.HealthCheckResponse.SERVING
    assert health_status(s.target) == serving and health_status(s.target, "") == serving
    short = pb.GenerateRequest(prompt=PY, max_tokens=2)
    try:
        with s.client() as c:
            stream = c.stream(long_request())
            first_delta(stream)
            drained: list[bool] = []
            drainer = threading.Thread(target=lambda: drained.append(s.server.drain(60)))
            drainer.start()
            while health_status(s.target) == serving:  # the drain has begun
                pass
            assert health_status(s.target) == health_pb2.HealthCheckResponse.NOT_SERVING
            for call in (lambda: c.generate(short), lambda: list(c.stream(short)),
                         lambda: c.detect(PY), c.sub_models):
                assert_shutting_down(call)
            rest = list(stream)  # the request in flight runs to its end
            assert rest[-2].completion.finish_reason == "length"
            assert rest[-1].summary.usage.completion_tokens == LONG_TOKENS
            assert s.engine.wait_parked(60)  # the engine is idle: nothing left in flight
            for _ in range(20):  # still answered, not cut off, after the work is done
                assert_shutting_down(lambda: c.generate(short, timeout=10))
            assert drainer.is_alive()
            assert s.value("submodel_requests_total", language="none", route_source="none",
                           status="unavailable", protocol=GRPC) == 22
        drainer.join(60)
        assert drained == [True]
    finally:
        s.engine.stop()


def test_drain_stops_once_clients_go_quiet(tiny_store):
    """With nothing in flight, the drain answers UNAVAILABLE until no RPC has come for
    `quiet` seconds, then closes the port: later calls cannot connect (UNAVAILABLE too)."""
    s = serve_store(tiny_store, quiet=0.2)
    try:
        assert s.server.drain(10) is True
        with s.client() as c, pytest.raises(grpc.RpcError) as e:
            c.generate(pb.GenerateRequest(prompt=PY, max_tokens=2), timeout=10)
        assert code(e.value) == grpc.StatusCode.UNAVAILABLE
        assert "shutting down" not in e.value.details()  # refused at connect: the port is shut
    finally:
        s.engine.stop()


def test_a_signal_taken_by_another_thread_wakes_the_wait_at_once():
    """The kernel may hand SIGTERM to any thread (grpc's, OpenMP's); the main thread, asleep in
    wait_for_signal, must wake then, not at some later poll (0.5 s once: a stream that ended
    before it saw the signal let new work in after SIGTERM)."""
    script = """
import signal, threading, time
from submodel.server.app import wait_for_signal
ready = threading.Event()
def send():
    ready.wait()
    time.sleep(0.1)
    signal.pthread_kill(threading.get_ident(), signal.SIGTERM)  # to this thread, not main
threading.Thread(target=send).start()
start = time.monotonic()
signal.signal(signal.SIGTERM, lambda *_: None)  # not the default (exit) until the wait's own
ready.set()
signum = wait_for_signal()
print(signum, time.monotonic() - start)
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         timeout=60, check=True).stdout.split()
    assert int(out[0]) == signal.SIGTERM
    assert float(out[1]) < 0.35  # sent at 0.1 s; a 0.5 s poll would answer at 0.5


def test_sigterm_drains_and_exits_zero(tiny_store):
    with serve_process(tiny_store, "--grace", "60", "--no-http") as serve:
        from submodel.server.client import Client

        with Client(serve.grpc_target()) as c:
            stream = c.stream(long_request())
            first_delta(stream)
            serve.proc.send_signal(signal.SIGTERM)
            chunks = list(stream)
            assert chunks[-1].summary.usage.completion_tokens == LONG_TOKENS
            # sent once the stream has ended, no pause: the server keeps answering until its
            # clients have been quiet for 2 s, so this never meets a stopping grpc server
            assert_shutting_down(lambda: c.generate(pb.GenerateRequest(prompt=PY, max_tokens=2),
                                                    timeout=10))
        assert serve.proc.wait(timeout=60) == 0
        rest = serve.proc.stderr.read()
        assert "SIGTERM: draining, 1 request(s) in flight" in rest and "stopped" in rest


# ---- auth and TLS -----------------------------------------------------------------------

def test_bearer_token(tiny_store):
    """A missing or wrong token is refused before the servicer runs: the engine never sees
    the request (its submissions are counted)."""
    s = serve_store(tiny_store, token="s3cret-token")
    request = pb.GenerateRequest(prompt=PY, language="python", max_tokens=2)
    submitted = []
    real_submit = s.engine.submit
    s.engine.submit = lambda r: submitted.append(r) or real_submit(r)
    try:
        for token in (None, "wrong"):
            with s.client(token=token) as c:
                for call in (c.generate, lambda r: list(c.stream(r)), lambda r: c.sub_models()):
                    with pytest.raises(grpc.RpcError) as e:
                        call(request)
                    assert code(e.value) == grpc.StatusCode.UNAUTHENTICATED
                    assert ("missing" if token is None else "wrong") in e.value.details()
        for metadata in ((("authorization", "s3cret-token"),),  # no "Bearer "
                         (("authorization", "Bearer s3cret"),),  # a prefix
                         (("authorization", "Bearer s3cret-token2"),)):
            with grpc.insecure_channel(s.target) as ch, pytest.raises(grpc.RpcError) as e:
                ch.unary_unary("/submodel.v1.Generator/Generate")(
                    request.SerializeToString(), metadata=metadata, timeout=10)
            assert code(e.value) == grpc.StatusCode.UNAUTHENTICATED
        assert submitted == []
        with s.client(token="s3cret-token") as c:
            assert c.generate(request).completions
            assert list(c.stream(request))[-1].HasField("summary")
        assert len(submitted) == 2
        # health stays open for probes
        assert health_status(s.target) == health_pb2.HealthCheckResponse.SERVING
    finally:
        s.stop()


def self_signed(tmp_path):
    """A certificate for 127.0.0.1 and localhost, and its key (PEM files)."""
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([
                x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    cert_file, key_file = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_file, key_file


def test_tls(tiny_store, tmp_path):
    cert, key = self_signed(tmp_path)
    s = serve_store(tiny_store, credentials=server_credentials(cert, key))
    request = pb.GenerateRequest(prompt=PY, language="python", max_tokens=2)
    try:
        with s.client(tls_ca=cert) as c:
            assert c.generate(request).completions
        with s.client() as plain, pytest.raises(grpc.RpcError) as e:
            plain.generate(request, timeout=10)
        assert code(e.value) == grpc.StatusCode.UNAVAILABLE
        # a client that trusts another certificate: the handshake fails, cleanly and fast
        other = tmp_path / "other"
        other.mkdir()
        other_cert, _ = self_signed(other)
        with s.client(tls_ca=other_cert) as wrong, pytest.raises(grpc.RpcError) as e:
            wrong.generate(request, timeout=10)
        assert code(e.value) == grpc.StatusCode.UNAVAILABLE
        assert "handshake" in e.value.details().lower() or "ssl" in e.value.details().lower()
        with s.client(tls_ca=cert) as c:  # and the server still serves
            assert c.generate(request).completions
    finally:
        s.stop()


def test_bind_rule():
    check_bind("127.0.0.1", tls=False, token=False, insecure=False)
    check_bind("::1", tls=False, token=False, insecure=False)
    check_bind("localhost", tls=False, token=False, insecure=False)
    for host in ("0.0.0.0", "::", "10.1.2.3", "example.com"):
        with pytest.raises(ValueError, match="--insecure"):
            check_bind(host, tls=False, token=False, insecure=False)
        check_bind(host, tls=True, token=False, insecure=False)
        check_bind(host, tls=False, token=True, insecure=False)
        check_bind(host, tls=False, token=False, insecure=True)


def test_serve_refuses_public_bind(tiny_store, capsys):
    assert main(["serve", str(tiny_store), "--host", "0.0.0.0", "--port", "0"]) == 2
    err = capsys.readouterr().err
    assert "refusing to listen on 0.0.0.0" in err and err.count("\n") == 1


def test_serve_refuses_int8_weights_without_fused(tiny_store, capsys):
    assert main(["serve", str(tiny_store), "--strategy", "swap", "--weights", "int8"]) == 2
    err = capsys.readouterr().err
    assert "--weights int8 needs --strategy fused" in err and err.count("\n") == 1


# ---- metrics under known traffic --------------------------------------------------------

def test_metrics_after_known_traffic(tiny_store):
    s = serve_store(tiny_store)
    v = s.value
    try:
        with s.client() as c:
            py = [c.generate(pb.GenerateRequest(prompt=PY, language="python", max_tokens=5)),
                  c.generate(pb.GenerateRequest(prompt=PY + "a", language="python",
                                                max_tokens=7, n=2, temperature=1, seed=1))]
            java = c.generate(pb.GenerateRequest(prompt=SNIPPETS[1][2], filename="Main.java",
                                                 max_tokens=6))
            for bad in (pb.GenerateRequest(prompt=""), pb.GenerateRequest(prompt=PY,
                                                                          language="cobol")):
                with pytest.raises(grpc.RpcError):
                    c.generate(bad)
        s.wait_value("submodel_requests_total", 1, language="none", route_source="none",
                     status="not_found", protocol=GRPC)
        assert v("submodel_requests_total", language="python", route_source="hint",
                 status=OK, protocol=GRPC) == 2
        assert v("submodel_requests_total", language="java", route_source="filename",
                 status=OK, protocol=GRPC) == 1
        assert v("submodel_requests_total", language="none", route_source="none",
                 status="invalid_argument", protocol=GRPC) == 1
        for lang, rs in (("python", py), ("java", [java])):
            assert v("submodel_prompt_tokens_total", language=lang) == sum(
                r.usage.prompt_tokens for r in rs)
            assert v("submodel_generated_tokens_total", language=lang) == sum(
                r.usage.completion_tokens for r in rs)
            assert v("submodel_request_duration_seconds_count", language=lang,
                     protocol=GRPC) == len(rs)
            assert v("submodel_time_to_first_token_seconds_count", language=lang) == len(rs)
            assert v("submodel_queue_depth", language=lang) == 0
        assert v("submodel_router_confidence_count") == 3
        assert v("submodel_router_confidence_bucket", le="1.0") == 3
        decode_steps = sum(c.tokens - 1 for r in [*py, java] for c in r.completions)
        assert v("submodel_inter_token_latency_seconds_count") >= decode_steps / 2
        assert v("submodel_batch_size_count") > 0
        assert v("submodel_mask_switches_total") >= 2  # dense -> python -> java
        assert v("submodel_mask_switch_seconds_count") == v("submodel_mask_switches_total")
        assert v("submodel_weight_bytes", kind="dense") > 0
        assert v("submodel_weight_bytes", kind="masks") > 0
    finally:
        s.stop()


# ---- the client CLI ---------------------------------------------------------------------

def test_generate_cli_streams(served, tmp_path, capsys):
    assert main(["generate", PY, "--language", "python", "--server", served.target,
                 "--max-tokens", "6"]) == 0
    out, err = capsys.readouterr()
    assert "routed to python by hint" in err and "prompt +" in err
    with served.client() as c:
        want = c.generate(pb.GenerateRequest(prompt=PY, language="python", max_tokens=6))
    assert out.rstrip("\n") == want.completions[0].text.rstrip("\n")

    source = tmp_path / "Main.java"
    source.write_text("public class Main {\n")
    assert main(["generate", "  int x", "--file", str(source), "--server", served.target,
                 "--max-tokens", "3", "-n", "2", "--temperature", "1"]) == 0
    out, err = capsys.readouterr()
    assert "routed to java by filename" in err
    assert "### sample 1" in out and "### sample 2" in out


def test_generate_cli_errors(served, capsys):
    assert main(["generate", PY, "--server", served.target, "--max-tokens", "-3"]) == 2
    assert "INVALID_ARGUMENT" in capsys.readouterr().err
    assert main(["generate", PY, "--server", "127.0.0.1:1", "--timeout", "5"]) == 2
    err = capsys.readouterr().err
    assert "UNAVAILABLE" in err and "submodel serve" in err and err.count("\n") == 1
    assert main(["generate", "--server", served.target]) == 2
    assert "nothing to complete" in capsys.readouterr().err
