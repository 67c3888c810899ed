"""Human-readable description of a store (`submodel info`)."""

from __future__ import annotations

from submodel.pruning.recipe import describe_recipe
from submodel.pruning.report import distance_matrix
from submodel.pruning.store import Store


def _size(nbytes: int) -> str:
    return f"{nbytes / 2**20:,.1f} MiB"


def _sparsity(m: dict) -> str:
    """'0.5', or '0.5 (python=0.4, java=0.6)' with per-language targets."""
    overrides = m.get("sparsity_overrides") or {}
    extra = ", ".join(f"{lang}={value}" for lang, value in overrides.items())
    return f"{m['sparsity']}" + (f" ({extra})" if extra else "")


def describe(store: Store) -> str:
    m = store.manifest
    cal = m["calibration"]
    n_weights = sum(o * i for o, i in store.prunable.values())
    lines = [
        f"store        {store.path}  (format {m['format_version']}, tool {m['tool_version']}, "
        f"created {m['created']})",
        f"base model   {m['base_model']['id']}  sha256 {str(m['base_model']['sha256'])[:16]}",
        f"dense        {store.dtype}  {_size(store.dense_file.stat().st_size)}  "
        f"{n_weights:,} prunable weights in {len(store.prunable)} Linear layers",
        f"method       {m['method']}  sparsity {_sparsity(m)}  pattern {m['pattern']}",
        f"recipe       {describe_recipe(m)}",
        f"calibration  {cal['nsamples']} windows x {cal['seqlen']} tokens, seed {cal['seed']}",
    ]
    for lang, src in cal["sources"].items():
        lines.append(f"  {lang:<11}{src}")
    sparsity = store.report("sparsity.json") or {}
    lines.append("")
    lines.append(f"{'language':<12}{'target':>8}{'sparsity':>10}{'mask file':>12}"
                 f"{'prune time':>12}")
    for lang in store.languages:
        entry = m["languages"][lang]
        size = store.mask_file(lang).stat().st_size
        seconds = entry.get("seconds")
        lines.append(f"{lang:<12}{entry.get('sparsity', m['sparsity']):>8}"
                     f"{sparsity.get(lang, {}).get('overall', float('nan')):>10.4f}"
                     f"{_size(size):>12}{(f'{seconds:.0f} s' if seconds else '-'):>12}")
    for lang in store.languages:
        blocks = m["languages"][lang].get("block_sparsity")
        if blocks:
            lines.append(f"  {lang} per-block sparsity (OWL): "
                         + " ".join(f"{b:.3f}" for b in blocks))
    overlap = store.report("overlap.json")
    if overlap and overlap["pairs"]:
        langs = overlap["languages"]
        matrix = distance_matrix(overlap)
        lines.append("")
        lines.append("Jaccard distance of kept weights (0 = identical masks)")
        lines.append(" " * 12 + "".join(f"{lang:>12}" for lang in langs))
        for lang, row in zip(langs, matrix, strict=True):
            lines.append(f"{lang:<12}" + "".join(f"{d:>12.4f}" for d in row))
    return "\n".join(lines)
