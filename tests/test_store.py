import json
import shutil
import subprocess
import sys

import pytest
import torch
from conftest import LANGS, build_tiny_store
from safetensors.torch import load_file, save_file

from submodel import corpora
from submodel.corpora import windows
from submodel.pruning import masks as bits
from submodel.pruning.recipe import MaskRecipe
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
    real = windows.sample_windows
    calls = []

    def interrupt_on_third(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(windows, "sample_windows", interrupt_on_third)
    with pytest.raises(KeyboardInterrupt):
        build_tiny_store(tmp_path)
    work = tmp_path / "store.tmp-build"
    assert sorted(p.stem for p in (work / "masks").glob("*.safetensors")) == ["java", "python"]
    assert not (tmp_path / "store").exists()
    monkeypatch.setattr(windows, "sample_windows", real)
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
    a = windows.sample_windows(tok, docs, 4, 32, seed=0)
    assert torch.equal(a, windows.sample_windows(tok, docs, 4, 32, seed=0))
    assert not torch.equal(a, windows.sample_windows(tok, docs, 4, 32, seed=1))


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
    (["prune", "--out", "X", "--sparsity", "python=abc"], "is not a number or LANG=NUMBER"),
    (["prune", "--out", "X", "--sparsity", "0.5,cobol=0.4"], "--sparsity given for cobol"),
    (["prune", "--out", "X", "--sparsity", "python=0.4,python=0.3"], "distinct LANG=NUMBER"),
    (["prune", "--out", "X", "--sparsity", "java=1.2"], "--sparsity must be between 0 and 1"),
    (["prune", "--out", "X", "--allocation", "owl", "--pattern", "2:4"],
     "--allocation owl needs --pattern unstructured"),
    (["prune", "--out", "X", "--refine", "dsnot", "--pattern", "2:4"],
     "--refine dsnot needs --pattern unstructured"),
    (["prune", "--out", "X", "--score", "ria", "--method", "magnitude"], "need --method wanda"),
    (["prune", "--out", "X", "--allocation", "owl", "--sparsity", "0.05"],
     "leaves the range (0, 1)"),
    (["prune", "--out", "X", "--dsnot-cycles", "0"], "--dsnot-cycles must be >= 1"),
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


RECIPE = MaskRecipe(score="ria", allocation="owl", owl_m=2.0, refine="dsnot")


@pytest.fixture(scope="module")
def recipe_store(tmp_path_factory):
    """python at 0.5 and java at 0.4, with RIA scores, OWL allocation and DSnoT swaps."""
    root = tmp_path_factory.mktemp("recipe")
    return build_tiny_store(root, languages=("python", "java"), recipe=RECIPE,
                            sparsity_overrides={"java": 0.4}).path


def test_recipe_round_trip(recipe_store):
    store = open_store(recipe_store)  # verifies every row against the recorded targets
    m = store.manifest
    assert m["score"] == "ria"
    assert m["allocation"] == {"kind": "owl", "m": 2.0, "lambda": 0.08}
    assert m["refine"] == {"kind": "dsnot", "cycles": 50, "threshold": 0.0}
    assert m["sparsity"] == 0.5 and m["sparsity_overrides"] == {"java": 0.4}
    for lang, target in (("python", 0.5), ("java", 0.4)):
        entry = m["languages"][lang]
        assert entry["sparsity"] == target
        per_block = entry["block_sparsity"]
        assert len(per_block) == 3 and len(set(per_block)) > 1
        assert all(abs(s - target) <= 0.08 + 1e-12 for s in per_block)
        masks = store.load_mask(lang)
        for name, (_, in_f) in store.prunable.items():
            want = in_f - int(in_f * per_block[int(name.split(".layers.")[1].split(".")[0])])
            assert (bits.kept_per_row(masks[name]) == want).all(), (lang, name)
        assert store.report("sparsity.json")[lang]["overall"] == pytest.approx(target, abs=0.03)


def test_info_shows_the_recipe(recipe_store):
    result = _cli("info", str(recipe_store))
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "sparsity 0.5 (java=0.4)" in out
    assert "score ria  allocation owl (M=2.0, lambda=0.08)" in out
    assert "refine dsnot (cycles=50, threshold=0.0)" in out
    assert "java per-block sparsity (OWL):" in out


def test_load_checks_each_block_against_its_recorded_sparsity(recipe_store, tmp_path):
    copy = tmp_path / "store"
    shutil.copytree(recipe_store, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    blocks = manifest["languages"]["python"]["block_sparsity"]
    manifest["languages"]["python"]["block_sparsity"] = blocks[::-1]
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(StoreError, match=r"masks/python.safetensors: .* does not keep exactly"):
        open_store(copy)


def _interrupted_build(root, monkeypatch, **overrides):
    """A partial build in root/store.tmp-build with python done, java not."""
    real = windows.sample_windows
    calls = []

    def interrupt_on_second(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(windows, "sample_windows", interrupt_on_second)
    with pytest.raises(KeyboardInterrupt):
        build_tiny_store(root, languages=("python", "java"), **overrides)
    monkeypatch.setattr(windows, "sample_windows", real)
    return root / "store.tmp-build"


def test_resume_with_another_recipe_is_refused(tmp_path, monkeypatch):
    work = _interrupted_build(tmp_path, monkeypatch)
    with pytest.raises(StoreError, match=r"another recipe \(differs in refine.cycles, "
                       r"refine.kind, refine.threshold, score\); rerun with its flags to "
                       r"resume it, or pass --force to discard it$"):
        build_tiny_store(tmp_path, languages=("python", "java"),
                         recipe=MaskRecipe(score="ria", refine="dsnot"))
    with pytest.raises(StoreError, match=r"differs in sparsity_overrides"):
        build_tiny_store(tmp_path, languages=("python", "java"),
                         sparsity_overrides={"java": 0.4})
    with pytest.raises(StoreError, match=r"differs in activation_power\)"):
        build_tiny_store(tmp_path, languages=("python", "java"),
                         recipe=MaskRecipe(activation_power=0.5))
    assert (work / "masks" / "python.safetensors").is_file()  # the partial work is kept
    store = build_tiny_store(tmp_path, languages=("python", "java"),
                             recipe=MaskRecipe(score="ria"), force=True)
    assert store.manifest["score"] == "ria"


def test_a_partial_build_from_before_recipes_resumes_with_the_defaults(tmp_path, monkeypatch):
    work = _interrupted_build(tmp_path, monkeypatch)
    recipe = json.loads((work / "recipe.json").read_text())
    for key in ("score", "allocation", "refine", "sparsity_overrides"):
        del recipe[key]
    del recipe["calibration"]["kind"]
    (work / "recipe.json").write_text(json.dumps(recipe))
    with pytest.raises(StoreError, match=r"differs in score\)"):
        build_tiny_store(tmp_path, languages=("python", "java"), recipe=MaskRecipe(score="ria"))
    real, calls = windows.sample_windows, []
    monkeypatch.setattr(windows, "sample_windows",
                        lambda *a, **k: calls.append(1) or real(*a, **k))
    store = build_tiny_store(tmp_path, languages=("python", "java"))
    assert len(calls) == 1  # java only: python's mask from the earlier run was kept
    assert store.manifest["score"] == "wanda"


def test_cli_refuses_resume_with_another_recipe_in_one_line(tmp_path, monkeypatch):
    _interrupted_build(tmp_path, monkeypatch)
    result = _cli("prune", "--model", str(tmp_path / "model"), "--out", str(tmp_path / "store"),
                  "--languages", "python,java", "--nsamples", "8", "--seqlen", "64",
                  "--dtype", "float32", "--quiet", "--allocation", "owl")
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "differs in allocation.kind, allocation.lambda" in lines[0]


def test_a_store_from_before_recipes_still_opens_and_describes(store_copy):
    manifest = json.loads((store_copy / "manifest.json").read_text())
    for key in ("score", "allocation", "refine", "sparsity_overrides"):
        del manifest[key]
    for entry in manifest["languages"].values():
        del entry["sparsity"]
    (store_copy / "manifest.json").write_text(json.dumps(manifest))
    from submodel.pruning.info import describe
    text = describe(open_store(store_copy))
    assert "score wanda  allocation uniform  refine none" in text
