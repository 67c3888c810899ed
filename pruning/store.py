"""The sub-model store: the contract between pruning/ (writes it) and server/ (reads it).

    store/
      manifest.json                 recipe, languages, shapes, per-file sha256
      base/                         config.json, tokenizer files, model.safetensors (dense, once)
      masks/<lang>.safetensors      uint8 bit-packed masks (see masks.py), one per prunable weight
      report/                       overlap.json, overlap.png, sparsity.json; evaluations.json
                                    (what `bench passk --store` and `bench proxy` measured)

A build happens in `<store>.tmp-build/` and is renamed into place when every language is done.
Each finished piece is written atomically (temp file, then rename), so an interrupted build
resumes with the languages already finished and never mistakes a half-written file for done.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from submodel import __version__
from submodel.pruning import masks as bits
from submodel.pruning.models import sha256_file
from submodel.vocabulary import PRUNABLE

FORMAT = "submodel-store"
FORMAT_VERSION = 1
DENSE_FILE = "base/model.safetensors"
PRUNABLE_SUFFIXES = tuple(name.rsplit(".", 1)[-1] for name in PRUNABLE)  # q_proj ... down_proj


class StoreError(Exception):
    """A store that cannot be used; the message names the bad file."""


def layer_type(weight_name: str) -> str:
    """'model.layers.3.mlp.up_proj.weight' -> 'up_proj'."""
    return weight_name.rsplit(".", 2)[-2]


def block_index(weight_name: str) -> int:
    """'model.layers.3.mlp.up_proj.weight' -> 3."""
    match = re.search(r"(?:^|\.)layers\.(\d+)\.", weight_name)
    if match is None:
        raise ValueError(f"{weight_name}: not inside a decoder block")
    return int(match.group(1))


def expected_kept(in_features: int, sparsity: float, pattern: tuple[int, int] | None) -> int:
    """Kept weights per row: exactly what Wanda leaves, so a load can check every row."""
    if pattern is not None:
        n, m = pattern
        return in_features - n * (in_features // m)
    return in_features - int(in_features * sparsity)


def parse_pattern(pattern: str) -> tuple[int, int] | None:
    """'unstructured' -> None; 'N:M' -> (N, M) with 0 < N < M."""
    if pattern == "unstructured":
        return None
    try:
        n, m = (int(p) for p in pattern.split(":"))
    except ValueError:
        raise ValueError(f"pattern '{pattern}' is not 'unstructured' or N:M (e.g. 2:4)") from None
    if not 0 < n < m:
        raise ValueError(f"pattern '{pattern}': need 0 < N < M")
    return n, m


def write_json_atomic(path: Path, obj: object) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)


def save_safetensors_atomic(path: Path, tensors: dict[str, torch.Tensor],
                            metadata: dict[str, str] | None = None) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp), metadata=metadata)
    os.replace(tmp, path)


def load_tokenizer(base_dir: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(base_dir))


def load_hf_model(base_dir: Path, dtype: torch.dtype = torch.float32, device: str = "cpu"):
    """The dense model as a transformers module (pruning, evaluation, reference tests)."""
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    model = AutoModelForCausalLM.from_pretrained(str(base_dir), dtype=dtype)
    return model.to(device).eval()


def read_masks(path: Path) -> dict[str, torch.Tensor]:
    with safe_open(str(path), framework="pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}


@dataclass
class Store:
    """An opened, verified store. Read-only, but for the people-facing report/ folder."""

    path: Path
    manifest: dict
    prunable: dict[str, tuple[int, int]] = field(init=False)

    def __post_init__(self) -> None:
        self.prunable = {k: tuple(v) for k, v in self.manifest["prunable"].items()}

    @property
    def languages(self) -> list[str]:
        return sorted(self.manifest["languages"])

    @property
    def base_dir(self) -> Path:
        return self.path / "base"

    @property
    def dense_file(self) -> Path:
        return self.path / DENSE_FILE

    @property
    def dtype(self) -> torch.dtype:
        return getattr(torch, self.manifest["dtype"])

    @property
    def pattern(self) -> tuple[int, int] | None:
        return parse_pattern(self.manifest["pattern"])

    def mask_file(self, language: str) -> Path:
        if language not in self.manifest["languages"]:
            raise StoreError(f"{self.path}: no mask for language '{language}' "
                             f"(has {', '.join(self.languages)})")
        return self.path / self.manifest["languages"][language]["file"]

    def load_mask(self, language: str) -> dict[str, torch.Tensor]:
        """Packed masks of one language: weight name -> uint8 [out, ceil(in/8)]."""
        return read_masks(self.mask_file(language))

    def load_state_dict(self, dtype: torch.dtype | None = None) -> dict[str, torch.Tensor]:
        """The dense weights (tied lm_head is absent: loaders tie it to the embedding)."""
        with safe_open(str(self.dense_file), framework="pt") as f:
            sd = {k: f.get_tensor(k) for k in f.keys()}
        return sd if dtype is None else {k: v.to(dtype) for k, v in sd.items()}

    def config(self) -> dict:
        return json.loads((self.base_dir / "config.json").read_text())

    def load_tokenizer(self):
        return load_tokenizer(self.base_dir)

    def load_hf_model(self, dtype: torch.dtype = torch.float32, device: str = "cpu"):
        return load_hf_model(self.base_dir, dtype, device)

    def report(self, name: str) -> dict | None:
        path = self.path / "report" / name
        return json.loads(path.read_text()) if path.exists() else None

    def update_report(self, name: str, update: Callable[[dict], None]) -> Path:
        """Read report/NAME (or {}), let `update` change it, write it back atomically.

        An exclusive lock on a side file serializes writers, so two benches recording into
        one store at once both keep their entries. The report is for people and `submodel
        info`; the server never reads it.
        """
        folder = self.path / "report"
        folder.mkdir(exist_ok=True)
        with open(folder / f".{name}.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            obj = self.report(name) or {}
            update(obj)
            write_json_atomic(folder / name, obj)
        return folder / name


def _verify_file(root: Path, rel: str, want: str) -> None:
    path = root / rel
    if not path.is_file():
        raise StoreError(f"{path}: missing")
    if sha256_file(path) != want:
        raise StoreError(f"{path}: sha256 mismatch (file damaged or edited)")


def verify_language(store: Store, language: str, check_sha256: bool = True) -> None:
    """One language's mask file: its sha256 against the manifest (unless told not to), then
    shapes and the kept count of every row. Raises StoreError naming the file. A server
    reloading its mask set runs this for each new or changed mask before serving it."""
    if check_sha256:
        rel = store.manifest["languages"][language]["file"]
        digest = store.manifest["files"].get(rel)
        if digest is None:
            raise StoreError(f"{store.path / rel}: not listed in the manifest's files")
        _verify_file(store.path, rel, digest)
    _verify_masks(store, language)


def _verify_masks(store: Store, language: str) -> None:
    path = store.mask_file(language)
    try:
        loaded = store.load_mask(language)
    except Exception as e:  # safetensors raises several types for a corrupt header
        raise StoreError(f"{path}: unreadable mask file ({e})") from None
    entry = store.manifest["languages"][language]
    sparsity = entry.get("sparsity", store.manifest["sparsity"])
    per_block = entry.get("block_sparsity")  # OWL: one target per decoder block
    for name, (out_f, in_f) in store.prunable.items():
        if name not in loaded:
            raise StoreError(f"{path}: no mask for {name}")
        packed = loaded[name]
        if packed.dtype != torch.uint8 or tuple(packed.shape) != (out_f, (in_f + 7) // 8):
            raise StoreError(f"{path}: {name} has shape {tuple(packed.shape)} {packed.dtype}, "
                             f"expected ({out_f}, {(in_f + 7) // 8}) uint8")
        target = sparsity
        if per_block is not None:
            index = block_index(name)
            if index >= len(per_block):
                raise StoreError(f"{path}: manifest has no block_sparsity for block {index}")
            target = per_block[index]
        want = expected_kept(in_f, target, store.pattern)
        if not bool((bits.kept_per_row(packed) == want).all()):
            raise StoreError(f"{path}: {name} does not keep exactly {want} of {in_f} per row")


def open_store(path: str | os.PathLike, verify: bool = True) -> Store:
    """Open a store; with verify, check format version, sha256s, mask shapes and sparsity."""
    root = Path(path)
    manifest_path = root / "manifest.json"
    if not manifest_path.is_file():
        hint = " (an unfinished build; rerun prune to resume)" if Path(
            f"{root}.tmp-build").exists() else ""
        raise StoreError(f"{manifest_path}: missing; not a submodel store{hint}")
    try:
        manifest = json.loads(manifest_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise StoreError(f"{manifest_path}: not valid JSON ({e})") from None
    if manifest.get("format") != FORMAT or manifest.get("format_version") != FORMAT_VERSION:
        raise StoreError(f"{manifest_path}: format {manifest.get('format')} version "
                         f"{manifest.get('format_version')}, this tool reads {FORMAT} "
                         f"version {FORMAT_VERSION}")
    store = Store(root, manifest)
    if verify:
        for rel, digest in sorted(manifest["files"].items()):
            _verify_file(root, rel, digest)
        for language in store.languages:
            _verify_masks(store, language)
    return store


# What a partial build recorded before these recipe entries existed was built with, so that it
# still resumes under the flags that reproduce it.
RECIPE_DEFAULTS = {"score": "wanda", "allocation": {"kind": "uniform"},
                   "refine": {"kind": "none"}, "sparsity_overrides": {},
                   "calibration": {"kind": "raw"}}


def with_defaults(recipe: dict, defaults: dict) -> dict:
    """`recipe` with the entries it lacks taken from `defaults` (nested dicts merged)."""
    merged = dict(recipe)
    for key, value in defaults.items():
        if key not in merged:
            merged[key] = value
        elif isinstance(value, dict) and isinstance(merged[key], dict):
            merged[key] = with_defaults(merged[key], value)
    return merged


def recipe_differences(old: dict, new: dict, prefix: str = "") -> list[str]:
    """Dotted names of the recipe entries that differ ('score', 'calibration.nsamples')."""
    names = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            names += recipe_differences(a, b, f"{prefix}{key}.")
        elif a != b:
            names.append(f"{prefix}{key}")
    return names


class StoreBuilder:
    """Builds a store in `<path>.tmp-build`, resuming what an interrupted build finished."""

    def __init__(self, path: str | os.PathLike, recipe: dict, force: bool = False) -> None:
        self.path = Path(path)
        self.work = Path(f"{self.path}.tmp-build")
        self.recipe = recipe
        if self.path.exists():
            if not force:
                raise StoreError(f"{self.path}: already exists; pass --force to rebuild it")
            shutil.rmtree(self.path)
        recipe_file = self.work / "recipe.json"
        if self.work.exists():
            old = json.loads(recipe_file.read_text()) if recipe_file.exists() else None
            if old is not None:
                old = with_defaults(old, {k: v for k, v in RECIPE_DEFAULTS.items()
                                          if k in recipe})
            if old is not None and old != recipe and not force:
                raise StoreError(f"{self.work}: a partial build with another recipe (differs "
                                 f"in {', '.join(recipe_differences(old, recipe))}); rerun "
                                 "with its flags to resume it, or pass --force to discard it")
            if force or old is None:
                shutil.rmtree(self.work)  # nothing recorded to resume, or told to start over
        (self.work / "base").mkdir(parents=True, exist_ok=True)
        (self.work / "masks").mkdir(exist_ok=True)
        (self.work / "report").mkdir(exist_ok=True)
        write_json_atomic(recipe_file, recipe)

    @property
    def base_dir(self) -> Path:
        return self.work / "base"

    def has_base(self) -> bool:
        return (self.work / DENSE_FILE).is_file() and (self.base_dir / "config.json").is_file()

    def write_base(self, model, tokenizer, dtype: torch.dtype) -> None:
        """Dense weights once, as one safetensors file in `dtype`, plus config and tokenizer."""
        tokenizer.save_pretrained(str(self.base_dir))
        config = model.config.to_dict()
        config.pop("quantization_config", None)  # a GGUF source is dequantized now
        config["dtype"] = str(dtype).removeprefix("torch.")
        config["architectures"] = [type(model).__name__]
        sd = model.state_dict()
        if config.get("tie_word_embeddings") and "lm_head.weight" in sd:
            del sd["lm_head.weight"]  # shared storage; the loader re-ties it
        sd = {k: v.detach().to("cpu", dtype) for k, v in sd.items()}
        save_safetensors_atomic(self.work / DENSE_FILE, sd, metadata={"format": "pt"})
        write_json_atomic(self.base_dir / "config.json", config)

    def done_languages(self) -> list[str]:
        return sorted(p.stem for p in (self.work / "masks").glob("*.safetensors")
                      if not p.name.startswith("."))

    def mask_path(self, language: str) -> Path:
        return self.work / "masks" / f"{language}.safetensors"

    def write_mask(self, language: str, packed: dict[str, torch.Tensor], info: dict) -> None:
        """One language's masks, with how they were made (`info`) in the file's metadata."""
        save_safetensors_atomic(self.mask_path(language), packed,
                                metadata={"info": json.dumps(info, sort_keys=True)})

    def mask_info(self, language: str) -> dict:
        with safe_open(str(self.mask_path(language)), framework="pt") as f:
            return json.loads((f.metadata() or {}).get("info", "{}"))

    def write_report(self, name: str, obj: dict) -> Path:
        path = self.work / "report" / name
        write_json_atomic(path, obj)
        return path

    def finalize(self, prunable: dict[str, tuple[int, int]], languages: list[str]) -> Store:
        """Write the manifest over everything built, then rename into place."""
        for stale in set(self.done_languages()) - set(languages):
            self.mask_path(stale).unlink()
        files = {}
        for p in sorted(self.work.rglob("*")):
            rel = p.relative_to(self.work).as_posix()
            if p.is_file() and rel != "recipe.json" and not p.name.startswith("."):
                files[rel] = sha256_file(p)
        entries = {lang: {"file": f"masks/{lang}.safetensors", **self.mask_info(lang)}
                   for lang in languages}
        manifest = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "tool_version": __version__,
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            **self.recipe,
            "languages": entries,
            "prunable": {k: list(v) for k, v in prunable.items()},
            "files": files,
        }
        (self.work / "recipe.json").unlink()
        write_json_atomic(self.work / "manifest.json", manifest)
        os.replace(self.work, self.path)
        return open_store(self.path)
