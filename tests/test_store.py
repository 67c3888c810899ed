import json
import shutil
import subprocess
import sys

import pytest
import torch
from conftest import LANGS, build_tiny_store
from safetensors.torch import load_file, save_file

from submodel.pruning import corpora
from submodel.pruning import masks as bits
from submodel.pruning.store import StoreError, open_store


@pytest.fixture
def store_copy(tiny_store, tmp_path):
    dst = tmp_path / "store"
    shutil.copytree(tiny_store, dst)
    return dst


def test_round_trip(tiny_store):
    store = open_store(tiny_store)
    assert store.languages == sorted(LANGS)
    assert store.manifest["sparsity"] == 0.5 and store.manifest["method"] == "wanda"
    assert store.manifest["calibration"]["nsamples"] == 8
    model = store.load_hf_model()
    for lang in LANGS:
        loaded = store.load_mask(lang)
        assert loaded.keys() == store.prunable.keys()
        for name, (out_f, in_f) in store.prunable.items():
            assert bits.unpack(loaded[name], in_f).sum() == out_f * in_f // 2
    assert set(store.load_state_dict()) <= set(model.state_dict())
    overlap = store.report("overlap.json")
    assert len(overlap["pairs"]) == 6 and all(0 < p["overall"] < 1 for p in overlap["pairs"])
    assert (tiny_store / "report" / "overlap.png").stat().st_size > 1000


def test_pack_unpack_round_trip():
    m = torch.rand(5, 37) > 0.5
    packed = bits.pack(m)
    assert packed.shape == (5, 5)
    assert torch.equal(bits.unpack(packed, 37), m)
    assert torch.equal(bits.kept_per_row(packed), m.sum(1))


def _flip_byte(path, at=-1):
    data = bytearray(path.read_bytes())
    data[at] ^= 0x01
    path.write_bytes(bytes(data))


def test_missing_file_is_named(store_copy):
    (store_copy / "masks" / "java.safetensors").unlink()
    with pytest.raises(StoreError, match=r"masks/java.safetensors: missing"):
        open_store(store_copy)


def test_flipped_byte_is_named(store_copy):
    _flip_byte(store_copy / "base" / "model.safetensors")
    with pytest.raises(StoreError, match=r"base/model.safetensors: sha256 mismatch"):
        open_store(store_copy)


def test_wrong_shape_is_named(store_copy):
    path = store_copy / "masks" / "cpp.safetensors"
    tensors = load_file(str(path))
    name = next(iter(tensors))
    tensors[name] = tensors[name][:-1]
    save_file(tensors, str(path))
    manifest = json.loads((store_copy / "manifest.json").read_text())
    from submodel.pruning.models import sha256_file
    manifest["files"]["masks/cpp.safetensors"] = sha256_file(path)  # sha ok, shape wrong
    (store_copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(StoreError, match=rf"masks/cpp.safetensors: {name} has shape"):
        open_store(store_copy)


def test_wrong_format_version_is_refused(store_copy):
    manifest = json.loads((store_copy / "manifest.json").read_text())
    manifest["format_version"] = 99
    (store_copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(StoreError, match=r"manifest.json: format submodel-store version 99"):
        open_store(store_copy)


def test_resume_after_interruption_gives_the_same_masks(tmp_path, tiny_store, monkeypatch):
    real = corpora.sample_windows
    calls = []

    def interrupt_on_third(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(corpora, "sample_windows", interrupt_on_third)
    with pytest.raises(KeyboardInterrupt):
        build_tiny_store(tmp_path)
    work = tmp_path / "store.tmp-build"
    assert sorted(p.stem for p in (work / "masks").glob("*.safetensors")) == ["java", "python"]
    assert not (tmp_path / "store").exists()
    monkeypatch.setattr(corpora, "sample_windows", real)
    resumed = build_tiny_store(tmp_path)
    assert not work.exists()
    reference = open_store(tiny_store)
    for lang in LANGS:
        a, b = resumed.load_mask(lang), reference.load_mask(lang)
        assert all(torch.equal(a[k], b[k]) for k in a), lang


def test_different_seed_gives_different_windows():
    source = corpora.find_source("python")
    docs = corpora.documents(source, "calib")
    from tiny import tiny_tokenizer
    tok = tiny_tokenizer()
    a = corpora.sample_windows(tok, docs, 4, 32, seed=0)
    assert torch.equal(a, corpora.sample_windows(tok, docs, 4, 32, seed=0))
    assert not torch.equal(a, corpora.sample_windows(tok, docs, 4, 32, seed=1))


def _cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "submodel.cli", *args], capture_output=True,
                          text=True, cwd=cwd, timeout=120)


@pytest.mark.parametrize("args,needle", [
    (["prune", "--out", "X", "--sparsity", "1.5"], "--sparsity must be between 0 and 1"),
    (["prune", "--out", "X", "--pattern", "4:2"], "need 0 < N < M"),
    (["prune", "--out", "X", "--calib", "python"], "LANG=PATH"),
    (["prune", "--out", "X", "--languages", "cobol"], "cobol"),
    (["prune", "--out", "X", "--model", "/nonexistent"], "neither a known alias"),
    (["info", "/nonexistent"], "not a submodel store"),
])
def test_cli_errors_are_one_line_exit_2(tmp_path, args, needle):
    result = _cli(*args, cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0], result.stderr
    assert "Traceback" not in result.stderr


def test_info_prints_the_overlap_table(tiny_store):
    result = _cli("info", str(tiny_store))
    assert result.returncode == 0, result.stderr
    assert "Jaccard distance" in result.stdout and "javascript" in result.stdout
