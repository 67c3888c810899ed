"""Editing a finished store in place: add a language's mask, or drop one.

A finished store may be served while it is edited (`submodel serve` reloads it on SIGHUP or
the ReloadSubModels RPC), so every edit keeps the manifest the single point of truth and
writes it last, atomically:

1. a new mask is written to a temp file and renamed to `masks/<lang>.safetensors` (a server
   never reads a mask file the manifest does not list, so this is invisible to it);
2. the reports (`report/`) are rewritten, each atomically;
3. the manifest is rewritten atomically: from here on the edit is visible;
4. a removed language's mask file is deleted (after the manifest stops naming it).

An edit interrupted between 2 and 3 leaves reports whose sha256 the old manifest does not
match; `open_store` then names the report file, and rerunning the same command finishes it.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from submodel.pruning.models import sha256_file
from submodel.pruning.report import overlap_report, plot_overlap, sparsity_report
from submodel.pruning.store import (
    Store,
    StoreError,
    open_store,
    read_masks,
    verify_language,
    write_json_atomic,
)

# Manifest entries that describe the store, not how its masks are made.
NOT_RECIPE = ("format", "format_version", "tool_version", "created", "languages", "prunable",
              "files")
# Recipe entries that are per language: adding a language adds to them.
PER_LANGUAGE = ("sparsity_overrides", "calibration.sources")
OVERLAP_PNG = "report/overlap.png"


def recipe_of(manifest: dict) -> dict:
    """The recipe a store was built with, as `prune` records it for a build."""
    return {k: v for k, v in manifest.items() if k not in NOT_RECIPE}


def shared_recipe(recipe: dict) -> dict:
    """`recipe` without its per-language entries: what every language of a store shares."""
    out = {k: v for k, v in recipe.items() if k != "sparsity_overrides"}
    out["calibration"] = {k: v for k, v in recipe.get("calibration", {}).items()
                          if k != "sources"}
    return out


def write_reports(root: Path, all_masks: dict[str, dict[str, torch.Tensor]],
                  prunable: dict[str, tuple[int, int]]) -> set[str]:
    """sparsity.json, overlap.json and (with two languages or more) overlap.png for this set
    of masks, each atomically; a stale overlap.png is deleted. Returns the paths written."""
    report = root / "report"
    report.mkdir(exist_ok=True)
    write_json_atomic(report / "sparsity.json", sparsity_report(all_masks, prunable))
    overlap = overlap_report(all_masks)
    write_json_atomic(report / "overlap.json", overlap)
    written = {"report/sparsity.json", "report/overlap.json"}
    if len(all_masks) > 1:
        plot_overlap(overlap, root / OVERLAP_PNG)
        written.add(OVERLAP_PNG)
    else:
        (root / OVERLAP_PNG).unlink(missing_ok=True)
    return written


def commit_manifest(root: Path, manifest: dict, changed: set[str]) -> None:
    """Write `manifest` with its `files` recomputed: the sha256 of every file in `changed`,
    the recorded one of every other file still listed and still present; atomically."""
    old = manifest.get("files", {})
    files = {}
    for rel in sorted(set(old) | changed):
        if (root / rel).is_file():
            files[rel] = sha256_file(root / rel) if rel in changed else old[rel]
    write_json_atomic(root / "manifest.json", {**manifest, "files": files})


def remove_language(path: str | os.PathLike, language: str) -> Store:
    """Drop `language` from a finished store: reports, then the manifest, then its mask file.
    Refuses (StoreError, one line) an unknown language and the last one."""
    store = open_store(path, verify=False)
    if language not in store.manifest["languages"]:
        raise StoreError(f"{store.path}: no language '{language}' (has "
                         f"{', '.join(store.languages)})")
    if len(store.languages) == 1:
        raise StoreError(f"{store.path}: '{language}' is its only language; a store needs one "
                         "(build another store instead)")
    keep = [lang for lang in store.languages if lang != language]
    for lang in keep:  # the reports are computed from these: check them first
        verify_language(store, lang)
    m = store.manifest
    mask_rel = m["languages"][language]["file"]
    written = write_reports(store.path, {lang: store.load_mask(lang) for lang in keep},
                            store.prunable)
    manifest = dict(m)
    manifest["languages"] = {k: v for k, v in m["languages"].items() if k != language}
    manifest["sparsity_overrides"] = {k: v for k, v in m.get("sparsity_overrides", {}).items()
                                      if k != language}
    calibration = dict(m["calibration"])
    calibration["sources"] = {k: v for k, v in calibration.get("sources", {}).items()
                              if k != language}
    manifest["calibration"] = calibration
    manifest["files"] = {k: v for k, v in m["files"].items() if k != mask_rel}
    commit_manifest(store.path, manifest, written)
    (store.path / mask_rel).unlink(missing_ok=True)
    return open_store(store.path)


def add_masks(store: Store, infos: dict[str, dict], recipe: dict) -> Store:
    """Add already-written mask files (`masks/<lang>.safetensors`) to `store`: verify each,
    rewrite the reports over every language, then the manifest, merging `recipe`'s
    per-language entries (sparsity overrides, calibration sources) into the store's."""
    m = store.manifest
    languages = dict(m["languages"])
    for lang, info in infos.items():
        languages[lang] = {"file": f"masks/{lang}.safetensors", **info}
    manifest = dict(m)
    manifest["languages"] = languages
    manifest["sparsity_overrides"] = dict(sorted({
        **m.get("sparsity_overrides", {}), **recipe.get("sparsity_overrides", {})}.items()))
    calibration = dict(m["calibration"])
    calibration["sources"] = dict(sorted({
        **calibration.get("sources", {}),
        **recipe.get("calibration", {}).get("sources", {})}.items()))
    manifest["calibration"] = calibration
    candidate = Store(store.path, manifest)
    for lang in infos:
        verify_language(candidate, lang, check_sha256=False)  # its sha256 is computed below
    all_masks = {lang: read_masks(candidate.mask_file(lang)) for lang in candidate.languages}
    written = write_reports(store.path, all_masks, store.prunable)
    changed = written | {languages[lang]["file"] for lang in infos}
    commit_manifest(store.path, manifest, changed)
    return open_store(store.path)
