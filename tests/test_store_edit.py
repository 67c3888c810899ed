"""Adding a language to a finished store, and removing one (`submodel prune --out STORE`,
`submodel remove-language`)."""

import json
import shutil
import subprocess
import sys

import pytest
import torch
from conftest import build_tiny_store

from submodel.pruning.edit import remove_language
from submodel.pruning.prune import PruneConfig, prune
from submodel.pruning.recipe import MaskRecipe
from submodel.pruning.store import StoreError, open_store

GO = """package main

import "fmt"

func fib(n int) int {
\tif n < 2 {
\t\treturn n
\t}
\treturn fib(n-1) + fib(n-2)
}

func main() {
\tfor i := 0; i < 10; i++ {
\t\tfmt.Println(i, fib(i))
\t}
}
"""


def go_corpus(root):
    """A few Go files to calibrate on (the router has no Go class; the store does not care)."""
    root.mkdir(exist_ok=True)
    for i in range(4):
        (root / f"f{i}.go").write_text(GO.replace("fib", f"fib{i}") * 6)
    return root


@pytest.fixture(scope="module")
def two_language_store(tmp_path_factory):
    return build_tiny_store(tmp_path_factory.mktemp("two"), languages=("python", "java")).path


@pytest.fixture
def store_copy(two_language_store, tmp_path):
    dst = tmp_path / "store"
    shutil.copytree(two_language_store, dst)
    return dst


def base_model(store) -> str:
    """The --model the store was built from, as its manifest records it."""
    return json.loads((store / "manifest.json").read_text())["base_model"]["id"]


def add_config(store, tmp_path, languages=("go",), **overrides) -> PruneConfig:
    """The flags the store was built with (conftest.build_tiny_store), for other languages."""
    return PruneConfig(model=base_model(store), out=store, languages=languages,
                       calib={"go": str(go_corpus(tmp_path / "go"))}, nsamples=8, seqlen=64,
                       progress=False, dtype="float32", **overrides)


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "submodel.cli", *args], capture_output=True,
                          text=True, timeout=120)


def test_add_a_language_leaves_the_others_untouched(store_copy, tmp_path):
    before = json.loads((store_copy / "manifest.json").read_text())
    old_masks = {p.name: p.read_bytes() for p in (store_copy / "masks").iterdir()}
    store = prune(add_config(store_copy, tmp_path))
    assert store.languages == ["go", "java", "python"]
    m = store.manifest
    for name, data in old_masks.items():
        assert (store_copy / "masks" / name).read_bytes() == data
        assert m["files"][f"masks/{name}"] == before["files"][f"masks/{name}"]
    assert m["files"]["base/model.safetensors"] == before["files"]["base/model.safetensors"]
    assert m["languages"]["python"] == before["languages"]["python"]
    assert m["languages"]["go"]["sparsity"] == 0.5
    assert set(m["calibration"]["sources"]) == {"go", "java", "python"}
    overlap = store.report("overlap.json")
    assert overlap["languages"] == ["go", "java", "python"] and len(overlap["pairs"]) == 3
    assert set(store.report("sparsity.json")) == {"go", "java", "python"}
    assert not list((store_copy / "masks").glob(".*"))  # no temp file left behind
    # the same command again: nothing to do, nothing rewritten
    manifest = (store_copy / "manifest.json").read_text()
    assert prune(add_config(store_copy, tmp_path)).languages == ["go", "java", "python"]
    assert (store_copy / "manifest.json").read_text() == manifest


def test_adding_gives_the_mask_a_full_build_gives(store_copy, tmp_path):
    added = prune(add_config(store_copy, tmp_path, languages=("python", "go")))
    full = prune(PruneConfig(**{**vars(add_config(store_copy, tmp_path, ("python", "go"))),
                                "out": tmp_path / "full"}))
    a, b = added.load_mask("go"), full.load_mask("go")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_adding_with_another_recipe_is_refused_in_one_line(store_copy, tmp_path):
    with pytest.raises(StoreError, match=r"another recipe \(differs in score\); pass the "
                       r"store's flags to add a language, or --force to rebuild it$"):
        prune(add_config(store_copy, tmp_path, recipe=MaskRecipe(score="ria")))
    with pytest.raises(StoreError, match=r"differs in calibration.nsamples\)"):
        prune(PruneConfig(**{**vars(add_config(store_copy, tmp_path)), "nsamples": 4}))
    assert not (store_copy / "masks" / "go.safetensors").exists()
    result = _cli("prune", "--model", base_model(store_copy), "--out", str(store_copy),
                  "--languages", "go", "--calib", f"go={tmp_path / 'go'}", "--nsamples", "8",
                  "--seqlen", "64", "--dtype", "bfloat16", "--quiet")
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "differs in calibration_dtype, dtype)" in lines[0]


def test_adding_to_a_store_with_damaged_base_weights_is_refused(store_copy, tmp_path):
    path = store_copy / "base" / "model.safetensors"
    data = bytearray(path.read_bytes())
    data[-1] ^= 1
    path.write_bytes(bytes(data))
    with pytest.raises(StoreError, match=r"base/model.safetensors: sha256 does not match"):
        prune(add_config(store_copy, tmp_path))


def test_remove_a_language(store_copy, tmp_path):
    prune(add_config(store_copy, tmp_path))
    store = remove_language(store_copy, "java")
    assert store.languages == ["go", "python"]
    assert not (store_copy / "masks" / "java.safetensors").exists()
    assert "masks/java.safetensors" not in store.manifest["files"]
    assert set(store.manifest["calibration"]["sources"]) == {"go", "python"}
    overlap = store.report("overlap.json")
    assert overlap["languages"] == ["go", "python"] and len(overlap["pairs"]) == 1
    store = remove_language(store_copy, "go")
    assert store.report("overlap.json")["pairs"] == []
    assert not (store_copy / "report" / "overlap.png").exists()
    assert "report/overlap.png" not in store.manifest["files"]


@pytest.mark.parametrize("args,needle", [
    (["java", "cobol"], "no language 'cobol' (has java, python)"),
    (["solo", "python"], "'python' is its only language"),
    (["nowhere", "python"], "not a submodel store"),
])
def test_remove_language_cli_errors_are_one_line_exit_2(store_copy, args, needle):
    if args[0] == "solo":
        remove_language(store_copy, "java")
    where = store_copy if args[0] != "nowhere" else store_copy.parent / "nowhere"
    result = _cli("remove-language", str(where), args[1])
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0], result.stderr
    open_store(store_copy)  # untouched and still valid


def test_remove_language_cli(store_copy):
    result = _cli("remove-language", str(store_copy), "java")
    assert result.returncode == 0, result.stderr
    assert "now python" in result.stdout
    assert open_store(store_copy).languages == ["python"]
    assert "--help" not in result.stderr
    help_text = _cli("remove-language", "--help").stdout
    assert "manifest is rewritten atomically" in help_text
