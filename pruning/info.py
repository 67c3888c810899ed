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
    for title, table in (store.report("evaluations.json") or {}).items():
        lines += ["", *evaluation_table(title, table)]
    return "\n".join(lines)


def evaluation_table(title: str, table: dict) -> list[str]:
    """One table a bench recorded in report/evaluations.json: sub-models x languages, and
    where a language has both dense and its own mask, the mask's retention of dense."""
    cells = table["cells"]
    rows = sorted(cells, key=lambda r: (r != "dense", r == "routed", r))
    columns = sorted({c for by_col in cells.values() for c in by_col})

    def show(x: float | None) -> str:
        if x is None:
            return "-"
        return f"{100 * x:.1f}%" if table.get("percent") else f"{x:.4f}"

    def value(row: str, col: str) -> float | None:
        return cells.get(row, {}).get(col, {}).get("value")

    lines = [title, f"{'':<12}" + "".join(f"{c:>12}" for c in columns)]
    for row in rows:
        lines.append(f"{row:<12}" + "".join(f"{show(value(row, c)):>12}" for c in columns))
    if table.get("percent") and "dense" in cells:
        retention = [(value(c, c), value("dense", c)) for c in columns]
        if any(own is not None and dense for own, dense in retention):
            lines.append(f"{'retention':<12}" + "".join(
                f"{(f'{100 * own / dense:.1f}%' if own is not None and dense else '-'):>12}"
                for own, dense in retention))
    return lines
