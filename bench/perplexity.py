"""Quality proxy: perplexity of the dense model and of each language's mask on held-out code.

`submodel bench perplexity STORE [--nsamples 8] [--seqlen 512] [--languages ...]
[--out results/perplexity]`

Rows are the dense model and each language's mask, columns each language's held-out code (the
corpus files never used for calibration, `corpora.documents(source, "heldout")`; windows drawn
with their own seed, 1234). The model is loaded once in the store's dtype; a mask is applied by
zeroing the pruned weights in place, and the dense values are read back from the store's dense
file afterwards (no second resident copy). A dense probe before and after all masks must agree
bit for bit, which proves the restore. Perplexity = exp(mean NLL over every predicted token; the
first token of each window has no context and is not scored).

Each finished cell is written at once (JSON, atomically), so an interrupted run resumes where it
stopped; the Markdown table goes to stdout and next to the JSON (OUT/perplexity.md).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors import safe_open
from tqdm import tqdm

from submodel import corpora
from submodel.bench.report import write_json
from submodel.corpora.windows import sample_windows
from submodel.pruning import masks as bits
from submodel.pruning.store import Store, open_store
from submodel.vocabulary import DENSE

HELDOUT_SEED = 1234  # calibration uses the store's seed (0 by default) on other files anyway
HEAD_CHUNK = 256  # tokens per lm_head chunk: bounds the [tokens, vocab] float32 logits


class BenchError(Exception):
    """Bad input or a failed self-check; one line for the user."""


def nll_sum(model, ids: torch.Tensor) -> tuple[float, int]:
    """Summed next-token NLL of a batch of windows [B, T] and the number of scored tokens."""
    hidden = model.get_decoder()(input_ids=ids, use_cache=False).last_hidden_state
    head = model.get_output_embeddings()
    softcap = getattr(model.config, "final_logit_softcapping", None)
    h = hidden[:, :-1].reshape(-1, hidden.shape[-1])
    targets = ids[:, 1:].reshape(-1)
    total = 0.0
    for i in range(0, h.shape[0], HEAD_CHUNK):
        logits = head(h[i:i + HEAD_CHUNK]).float()
        if softcap:
            logits = torch.tanh(logits / softcap) * softcap
        total += F.cross_entropy(logits, targets[i:i + HEAD_CHUNK], reduction="sum").item()
    return total, targets.numel()


def measure_cell(model, windows: torch.Tensor, batch_size: int, bar: tqdm) -> dict:
    """NLL, perplexity and token count of the model as it is now on one language's windows."""
    started = time.perf_counter()
    total, tokens = 0.0, 0
    for i in range(0, windows.shape[0], batch_size):
        s, n = nll_sum(model, windows[i:i + batch_size])
        total, tokens = total + s, tokens + n
        bar.update(1)
    nll = total / tokens
    return {"nll": nll, "ppl": math.exp(nll), "tokens": tokens,
            "seconds": round(time.perf_counter() - started, 2)}


def prunable_params(model, store: Store) -> dict[str, torch.Tensor]:
    params = dict(model.named_parameters())
    missing = [n for n in store.prunable if n not in params]
    if missing:
        raise BenchError(f"{store.path}: the model has no weight {missing[0]} named in the store")
    return {n: params[n] for n in store.prunable}


@torch.no_grad()
def apply_mask(params: dict[str, torch.Tensor], packed: dict[str, torch.Tensor]) -> None:
    for name, w in params.items():
        w.masked_fill_(~bits.unpack(packed[name], w.shape[1]), 0)


@torch.no_grad()
def restore_dense(params: dict[str, torch.Tensor], store: Store) -> None:
    """Copy the stored dense values back into the prunable weights (read via the page cache)."""
    with safe_open(str(store.dense_file), framework="pt") as f:
        for name, w in params.items():
            w.copy_(f.get_tensor(name))


def heldout_windows(store: Store, languages: list[str], nsamples: int, seqlen: int,
                    calib: dict[str, str]) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    tokenizer = store.load_tokenizer()
    windows, sources = {}, {}
    for lang in languages:
        source = corpora.find_source(lang, calib.get(lang))
        docs = corpora.documents(source, "heldout")
        windows[lang] = sample_windows(tokenizer, docs, nsamples, seqlen, HELDOUT_SEED)
        sources[lang] = source.description
    return windows, sources


def recipe(store: Store, nsamples: int, seqlen: int, sources: dict[str, str]) -> dict:
    """Everything a cell's value depends on; a saved result is reused only if this matches."""
    manifest = (store.path / "manifest.json").read_bytes()
    return {"store": str(store.path.resolve()),
            "manifest_sha256": hashlib.sha256(manifest).hexdigest(),
            "model": store.manifest["base_model"]["id"], "dtype": store.manifest["dtype"],
            "nsamples": nsamples, "seqlen": seqlen, "seed": HELDOUT_SEED, "sources": sources}


def load_previous(out: Path, want: dict) -> dict:
    """An earlier run's result with the same recipe (empty if none or if anything differs)."""
    try:
        old = json.loads(out.read_text())
    except (OSError, ValueError):
        return {}
    return old if isinstance(old, dict) and old.get("recipe") == want else {}


def run(store_path: str | os.PathLike, languages: list[str] | None = None, nsamples: int = 8,
        seqlen: int = 512, out: Path = Path("results/perplexity.json"), batch_size: int = 4,
        calib: dict[str, str] | None = None, progress: bool = True) -> dict:
    """Fill the matrix (resuming from the JSON at `out`, rewritten after each cell) and return
    the result."""
    store = open_store(store_path)
    languages = list(dict.fromkeys(languages or store.languages))
    unknown = [lang for lang in languages if lang not in store.languages]
    if unknown:
        raise BenchError(f"{store.path} has no mask for {', '.join(unknown)} "
                         f"(has {', '.join(store.languages)})")
    windows, sources = heldout_windows(store, languages, nsamples, seqlen, calib or {})
    calibrated = store.manifest["calibration"]["sources"]
    mismatched = sorted(lang for lang in languages
                        if lang in calibrated and calibrated[lang] != sources[lang])
    result = {"recipe": recipe(store, nsamples, seqlen, sources), "rows": [DENSE, *languages],
              "columns": languages}
    previous = load_previous(out, result["recipe"])
    result["cells"] = previous.get("cells", {})
    if "dense_probe" in previous:
        result["dense_probe"] = previous["dense_probe"]
    if mismatched:
        result["warning"] = (f"held-out source differs from the calibration source for "
                             f"{', '.join(mismatched)}: pass --calib as given to prune")
        print(f"warning: {result['warning']}", file=sys.stderr)
    todo = [(row, col) for row in result["rows"] for col in languages
            if col not in result["cells"].get(row, {})]
    if todo:
        result["dense_probe"] = fill(store, result, todo, windows, out, batch_size, progress)
    return result


def fill(store: Store, result: dict, todo: list[tuple[str, str]],
         windows: dict[str, torch.Tensor], out: Path, batch_size: int, progress: bool) -> dict:
    """Measure the `todo` cells one mask at a time, saving `result` to `out` after each; return
    the dense probe's NLL before and after (equal, or BenchError)."""
    batches = -(-next(iter(windows.values())).shape[0] // batch_size)
    model = store.load_hf_model(store.dtype).requires_grad_(False)
    params = prunable_params(model, store)
    probe = windows[result["columns"][0]][:batch_size]
    with torch.inference_mode(), tqdm(total=len(todo) * batches + 2, unit="batch",
                                      disable=not progress, desc="dense probe") as bar:
        before = nll_sum(model, probe)[0]
        bar.update(1)
        for row in result["rows"]:
            cols = [col for r, col in todo if r == row]
            if not cols:
                continue
            if row != DENSE:
                apply_mask(params, store.load_mask(row))
            for col in cols:
                bar.set_description(f"{row} on {col}")
                result["cells"].setdefault(row, {})[col] = measure_cell(
                    model, windows[col], batch_size, bar)
                write_json(out, result)
            if row != DENSE:
                restore_dense(params, store)
        bar.set_description("dense probe")
        after = nll_sum(model, probe)[0]
        bar.update(1)
    if before != after:
        raise BenchError(f"dense NLL of the probe changed after masking ({before} -> {after}): "
                         "the dense weights were not restored")
    return {"before": before, "after": after}


def markdown(result: dict) -> str:
    cols, cells = result["columns"], result["cells"]
    masks = [r for r in result["rows"] if r != DENSE]
    best = {c: min(masks, key=lambda r: cells[r][c]["ppl"]) for c in cols}
    r = result["recipe"]
    lines = [f"Perplexity on held-out code ({r['model']}, {r['dtype']}, {r['nsamples']} windows "
             f"x {r['seqlen']} tokens per language, seed {r['seed']}); rows: the model, "
             "columns: the code; **bold** = lowest-perplexity mask in the column.", "",
             "| model \\ code | " + " | ".join(cols) + " |", "|---|" + "---:|" * len(cols)]
    for row in result["rows"]:
        name = row if row == DENSE else f"{row} mask"
        vals = [f"**{cells[row][c]['ppl']:.3f}**" if best[c] == row else
                f"{cells[row][c]['ppl']:.3f}" for c in cols]
        lines.append(f"| {name} | " + " | ".join(vals) + " |")
    own = [c for c in cols if c in masks]
    wins = [c for c in own if best[c] == c]
    lines += ["", f"Own mask best on its own language (paper's expectation): {len(wins)} of "
              f"{len(own)}."]
    for c in own:
        ratio = cells[c][c]["ppl"] / cells[DENSE][c]["ppl"]
        verdict = "yes" if best[c] == c else f"no (best: {best[c]} mask)"
        lines.append(f"- {c}: {verdict}; own mask {ratio:.3f}x dense perplexity")
    return "\n".join(lines)
