"""Sub-models added and removed while serving: ReloadSubModels and SIGHUP over a real server
on a loopback port. A request in flight during a reload finishes with the tokens it would have
produced without one. To make "in flight during the swap" certain rather than likely, the
engine's next decode step is held until the reload is waiting for the engine thread (a seam,
not a sleep: nothing here waits for time to pass)."""

import json
import shutil
import signal

import grpc
import httpx
import pytest
from safetensors.torch import load_file, save_file
from serving import serve_process, serve_store
from test_store_edit import add_config

from submodel.pruning.edit import remove_language
from submodel.pruning.models import sha256_file
from submodel.pruning.prune import prune
from submodel.server.api import Reason
from submodel.server.client import Client
from submodel.server.errors import reason_of
from submodel.v1 import submodel_pb2 as pb

PROMPT = "public class Main {\n"
TOKENS = 60


def stream_request(language: str) -> pb.GenerateRequest:
    return pb.GenerateRequest(prompt=PROMPT, language=language, max_tokens=TOKENS)


def token_ids(chunks) -> list[int]:
    return [c.delta.token_id for c in chunks if c.WhichOneof("chunk") == "delta"]


def languages(client: Client) -> list[str]:
    return [m.id for m in client.sub_models().sub_models]


@pytest.fixture
def store(tiny_store, tmp_path):
    dst = tmp_path / "store"
    shutil.copytree(tiny_store, dst)
    return dst


def hold_next_step_until_reload(engine) -> list[int]:
    """Make the engine's next decode step (the first after a prefill has produced a token)
    wait until a reload has handed it a new mask set, so the swap happens mid-stream. Returns
    a list that receives, at the swap, how many sequences were running."""
    real_decode, real_apply = engine._decode, engine._apply
    running_at_swap: list[int] = []
    armed = [True]

    def decode(batch):
        if armed[0]:
            armed[0] = False
            with engine.lock:
                assert engine.lock.wait_for(lambda: engine.pending is not None, 60)
        real_decode(batch)

    def apply(change):
        running_at_swap.append(len(engine.scheduler.running))
        real_apply(change)

    engine._decode, engine._apply = decode, apply
    return running_at_swap


def reload_during_stream(s, client: Client, language: str, edit) -> tuple[list, object]:
    """Stream `language`, `edit()` the store on disk after the first token, reload with the
    stream in flight; returns (the stream's chunks, the reload's response)."""
    running_at_swap = hold_next_step_until_reload(s.engine)
    stream = client.stream(stream_request(language))
    chunks = []
    for chunk in stream:
        chunks.append(chunk)
        if chunk.WhichOneof("chunk") == "delta":
            break
    edit()
    response = client.reload(timeout=120)
    chunks += list(stream)
    assert running_at_swap == [1], "the reload did not happen while the stream was in flight"
    return chunks, response


@pytest.mark.parametrize("strategy", ["fused", "swap"])
def test_add_a_language_while_a_stream_is_in_flight(store, tmp_path, strategy):
    s = serve_store(store, strategy=strategy, http=True)
    try:
        with s.client() as c:
            reference = token_ids(c.stream(stream_request("java")))
            assert len(reference) > 10
            assert s.value("submodel_sub_models") == 4
            masks_before = s.value("submodel_weight_bytes", kind="masks")
            chunks, response = reload_during_stream(
                s, c, "java", lambda: prune(add_config(store, tmp_path)))
            assert token_ids(chunks) == reference
            assert chunks[-1].HasField("summary")
            assert list(response.added) == ["go"] and not response.removed
            assert list(response.languages) == ["cpp", "go", "java", "javascript", "python"]
            assert languages(c) == ["dense", "cpp", "go", "java", "javascript", "python"]
            r = c.generate(pb.GenerateRequest(prompt="package main\n", language="go",
                                              max_tokens=4))
            assert r.routing.sub_model == "go" and r.completions[0].tokens > 0
            routed = c.detect("package main", filename="cmd/main.go")
            assert (routed.language, routed.source) == ("go", "filename")
            assert token_ids(c.stream(stream_request("java"))) == reference
        assert s.value("submodel_sub_models") == 5
        assert s.value("submodel_reloads_total", result="ok") == 1
        assert s.value("submodel_weight_bytes", kind="masks") == pytest.approx(
            masks_before * 5 / 4)
        models = httpx.get(f"{s.base_url}/models", timeout=30).json()
        assert "go" in [m["id"] for m in models["data"]]
    finally:
        s.stop()


@pytest.mark.parametrize("strategy", ["fused", "swap"])
def test_remove_a_language_while_it_is_streaming(store, strategy):
    """A removed language's request in flight finishes on its mask; new ones are refused."""
    s = serve_store(store, strategy=strategy, http=True)
    try:
        with s.client() as c:
            reference = token_ids(c.stream(stream_request("java")))
            chunks, response = reload_during_stream(
                s, c, "java", lambda: remove_language(store, "java"))
            assert token_ids(chunks) == reference
            assert list(response.removed) == ["java"]
            assert languages(c) == ["dense", "cpp", "javascript", "python"]
            with pytest.raises(grpc.RpcError) as e:
                c.generate(stream_request("java"))
            assert e.value.code() == grpc.StatusCode.NOT_FOUND
            assert c.generate(stream_request("python")).completions[0].tokens > 0
        assert s.engine.retired == set()  # the old mask was freed after the stream ended
        assert s.value("submodel_sub_models") == 3
        models = httpx.get(f"{s.base_url}/models", timeout=30).json()
        assert "java" not in [m["id"] for m in models["data"]]
    finally:
        s.stop()


def _damage_and_reload(s, client, store, tmp_path, damage) -> grpc.RpcError:
    """Add go to a copy of the store, put its files into the served store with `damage`
    applied to the mask, and reload."""
    other = tmp_path / "other"
    shutil.copytree(store, other)
    prune(add_config(other, tmp_path))
    mask = store / "masks" / "go.safetensors"
    shutil.copy(other / "masks" / "go.safetensors", mask)
    manifest = json.loads((other / "manifest.json").read_text())
    damage(mask, manifest)
    (store / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(grpc.RpcError) as e:
        client.reload(timeout=120)
    return e.value


def _flip_byte(mask, manifest):
    data = bytearray(mask.read_bytes())
    data[-1] ^= 1
    mask.write_bytes(bytes(data))


def _cut_a_row(mask, manifest):
    tensors = load_file(str(mask))
    name = next(iter(tensors))
    tensors[name] = tensors[name][:-1]
    save_file(tensors, str(mask))
    manifest["files"]["masks/go.safetensors"] = sha256_file(mask)  # sha256 fine, shape wrong


@pytest.mark.parametrize("damage,why", [(_flip_byte, "sha256 mismatch"),
                                        (_cut_a_row, "has shape")])
def test_a_damaged_mask_is_refused_and_the_old_set_keeps_serving(store, tmp_path, caplog,
                                                                 damage, why):
    s = serve_store(store, strategy="fused")
    try:
        with s.client() as c:
            err = _damage_and_reload(s, c, store, tmp_path, damage)
            assert err.code() == grpc.StatusCode.FAILED_PRECONDITION
            assert reason_of(err) == (Reason.STORE_INVALID, None)
            assert "masks/go.safetensors" in err.details() and why in err.details()
            assert "still serving cpp, java, javascript, python" in err.details()
            assert languages(c) == ["dense", "cpp", "java", "javascript", "python"]
            assert c.generate(stream_request("java")).completions[0].tokens > 0
        assert s.value("submodel_reloads_total", result="refused") == 1
        assert s.value("submodel_sub_models") == 4
        assert any("masks/go.safetensors" in r.getMessage() for r in caplog.records)
    finally:
        s.stop()


def test_reload_needs_the_token(store):
    s = serve_store(store, token="s3cret-token")
    try:
        with s.client() as c, pytest.raises(grpc.RpcError) as e:
            c.reload(timeout=30)
        assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED
        with s.client(token="s3cret-token") as c:
            assert list(c.reload(timeout=30).languages) == ["cpp", "java", "javascript",
                                                           "python"]
    finally:
        s.stop()


def test_sighup_reloads_a_serve_process(store):
    with serve_process(store, "--no-http") as serve:
        target = serve.grpc_target()
        remove_language(store, "java")
        serve.proc.send_signal(signal.SIGHUP)
        line = serve.wait_for(r"reloaded sub-models.*|reload refused.*").group(0)  # its outcome
        assert "removed: java" in line, "".join(serve.log)
        with Client(target) as c:
            assert languages(c) == ["dense", "cpp", "javascript", "python"]
        serve.proc.send_signal(signal.SIGTERM)
        assert serve.proc.wait(timeout=60) == 0
