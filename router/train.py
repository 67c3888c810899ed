"""Build router/model.json: `python -m submodel.router.train [--out PATH] [--calib LANG=PATH]`.

Training snippets (1 to 40 lines, short ones most often) are cut from the "calib" split of each
language's corpus (`submodel.pruning.corpora`) and of the "other" text on this machine
(`submodel.router.other`); the held-out files of both are left for the bench. A softmax
regression with L2 is fitted by seeded mini-batch Adam, the features that matter least are
dropped, the rest refitted, and the weights written as integers (deterministic for given inputs).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
from collections import Counter

import numpy as np

from submodel.pruning import corpora
from submodel.router.features import count, tf, tokenize
from submodel.router.model import FORMAT, MODEL_PATH
from submodel.router.snippets import SnippetSampler

from . import other

CLASSES = (*corpora.LANGUAGES, "other")
LENGTHS = (1, 1, 1, 2, 2, 3, 4, 6, 8, 12, 20, 40)  # lines per training snippet, drawn uniformly
PER_LANGUAGE = 16000  # training snippets per language; "other" gets twice as many
KEEP_PER_CLASS = 150  # most common words per class that stay themselves in n-grams
MIN_DF = 4  # a feature must occur in this many training snippets
MAX_FEATURES = 14000
SCALE = 100  # weights are stored as round(w * SCALE)
# "other" kinds that look most like ours are drawn more often.
OTHER_WEIGHT = {"c": 2.0, "typescript": 2.0, "go": 1.5, "rust": 1.5, "php": 1.5, "shell": 1.5}


def log(msg: str) -> None:
    print(f"[router.train] {msg}", file=sys.stderr, flush=True)


def draw_snippets(rng: random.Random, overrides: dict[str, str]):
    """(text, class index) training pairs, and how many "other" files of each kind fed them."""
    pairs = []
    for c, lang in enumerate(corpora.LANGUAGES):
        source = corpora.find_source(lang, overrides.get(lang))
        sampler = SnippetSampler([d.text for d in corpora.documents(source, "calib")], rng,
                                 whole_comments=True)
        log(f"{lang}: {source.description}")
        pairs += [(sampler.draw(rng.choice(LENGTHS)), c) for _ in range(PER_LANGUAGE)]
    by_kind: dict[str, list[str]] = {}
    for doc in other.documents("calib"):
        by_kind.setdefault(doc.kind, []).append(doc.text)
    kinds = sorted(by_kind)
    samplers = [SnippetSampler(by_kind[k], rng) for k in kinds]
    weights = [OTHER_WEIGHT.get(k, 1.0) for k in kinds]
    log("other: " + ", ".join(f"{k} {len(by_kind[k])} files" for k in kinds))
    for _ in range(2 * PER_LANGUAGE):
        sampler = rng.choices(samplers, weights)[0]
        pairs.append((sampler.draw(rng.choice(LENGTHS)), len(CLASSES) - 1))
    return pairs, {k: len(by_kind[k]) for k in kinds}


def choose_keep(pairs: list[tuple[str, int]]) -> list[str]:
    """The KEEP_PER_CLASS words found in most snippets of each class."""
    per_class = [Counter() for _ in CLASSES]
    for text, c in pairs:
        per_class[c].update({t for line in tokenize(text) for t in line
                             if t[0].isalpha() or t[0] == "_"})
    keep = set()
    for counts in per_class:
        keep.update(w for w, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
                    [:KEEP_PER_CLASS])
    return sorted(keep)


def vectorize(pairs, keep):
    """Sparse rows: feature ids, values, row starts; plus the id -> feature list."""
    ids: dict[str, int] = {}
    cache: dict[str, str] = {}
    cols, vals, starts = [], [], [0]
    for text, _ in pairs:
        for feature, n in sorted(count(text, frozenset(keep), cache).items()):
            cols.append(ids.setdefault(feature, len(ids)))
            vals.append(n)
        starts.append(len(cols))
    names = [None] * len(ids)
    for f, i in ids.items():
        names[i] = f
    return np.array(cols), tf(np.array(vals, dtype=np.float64)), np.array(starts), names


def restrict(cols, vals, starts, allowed: np.ndarray):
    """Drop the columns not in `allowed` (sorted old ids) and renumber the rest 0..len-1."""
    new_id = np.full(int(cols.max()) + 1, -1)
    new_id[allowed] = np.arange(len(allowed))
    mapped = new_id[cols]
    mask = mapped >= 0
    row = np.repeat(np.arange(len(starts) - 1), np.diff(starts))[mask]
    new_starts = np.searchsorted(row, np.arange(len(starts)), side="left")
    return mapped[mask], vals[mask], new_starts


L2 = 1e-6
EPOCHS = 15


def fit(cols, vals, starts, labels, n_features, seed, batch=256, lr=0.02):
    """Softmax regression by mini-batch Adam (learning rate decaying linearly to zero);
    returns (weights [F, C], bias [C])."""
    n, k = len(labels), len(CLASSES)
    rng = np.random.default_rng(seed)
    w = np.zeros((n_features, k))
    b = np.zeros(k)
    m_w, v_w, m_b, v_b = np.zeros_like(w), np.zeros_like(w), np.zeros(k), np.zeros(k)
    lengths = np.diff(starts)
    total = EPOCHS * -(-n // batch)
    step = 0
    for epoch in range(EPOCHS):
        order = rng.permutation(n)
        loss = 0.0
        for lo in range(0, n, batch):
            rows = order[lo:lo + batch]
            idx = np.concatenate([np.arange(starts[r], starts[r + 1]) for r in rows])
            row_of = np.repeat(np.arange(len(rows)), lengths[rows])
            c, x = cols[idx], vals[idx]
            logits = scores(c, x, row_of, len(rows), w, b)
            logits -= logits.max(1, keepdims=True)
            p = np.exp(logits)
            p /= p.sum(1, keepdims=True)
            y = labels[rows]
            loss += -np.log(p[np.arange(len(rows)), y] + 1e-12).sum()
            p[np.arange(len(rows)), y] -= 1
            p /= len(rows)
            g_w = np.zeros_like(w)
            np.add.at(g_w, c, x[:, None] * p[row_of])
            g_w += L2 * w
            g_b = p.sum(0)
            step += 1
            rate = lr * (1 - (step - 1) / total)  # linear decay to zero
            for param, g, m, v in ((w, g_w, m_w, v_w), (b, g_b, m_b, v_b)):
                m *= 0.9
                m += 0.1 * g
                v *= 0.999
                v += 0.001 * g * g
                param -= rate * (m / (1 - 0.9**step)) / (np.sqrt(v / (1 - 0.999**step)) + 1e-8)
        log(f"epoch {epoch + 1}/{EPOCHS}: loss {loss / n:.4f}")
    return w, b


def scores(cols, vals, row_of, n_rows, w, b) -> np.ndarray:
    """[n_rows, classes] logits of sparse rows (`row_of` gives each entry's row)."""
    return b + np.stack([np.bincount(row_of, vals * w[cols, k], n_rows)
                         for k in range(w.shape[1])], axis=1)


def accuracy(cols, vals, starts, labels, w, b) -> float:
    row_of = np.repeat(np.arange(len(labels)), np.diff(starts))
    return float((scores(cols, vals, row_of, len(labels), w, b).argmax(1) == labels).mean())


def train(overrides: dict[str, str], seed: int = 0) -> dict:
    rng = random.Random(seed)
    t0 = time.perf_counter()
    pairs, other_kinds = draw_snippets(rng, overrides)
    labels = np.array([c for _, c in pairs])
    keep = choose_keep(pairs)
    cols, vals, starts, names = vectorize(pairs, keep)
    df = np.bincount(cols, minlength=len(names))
    frequent = np.flatnonzero(df >= MIN_DF)
    log(f"{len(pairs)} snippets, {len(keep)} kept words, {len(names)} features, "
        f"{len(frequent)} in {MIN_DF}+ snippets ({time.perf_counter() - t0:.0f} s)")
    c1, v1, s1 = restrict(cols, vals, starts, frequent)
    w, b = fit(c1, v1, s1, labels, len(frequent), seed)
    # Importance: how far a feature moves the classes apart, times how often it occurs.
    importance = (w.max(1) - w.min(1)) * np.sqrt(df[frequent])
    top = np.sort(frequent[np.argsort(-importance, kind="stable")[:MAX_FEATURES]])
    c2, v2, s2 = restrict(cols, vals, starts, top)
    w, b = fit(c2, v2, s2, labels, len(top), seed + 1)
    wq, bq = np.round(w * SCALE).astype(int), np.round(b * SCALE).astype(int)
    log(f"{len(top)} features; training accuracy {accuracy(c2, v2, s2, labels, w, b):.4f} "
        f"(quantized {accuracy(c2, v2, s2, labels, wq / SCALE, bq / SCALE):.4f})")
    used = np.flatnonzero(np.abs(wq).sum(1) > 0)
    return {
        "format": FORMAT,
        "classes": list(CLASSES),
        "keep": keep,
        "scale": SCALE,
        "bias": bq.tolist(),
        "features": {names[top[i]]: wq[i].tolist() for i in used},
        "trained_on": {
            "snippets": len(pairs), "seed": seed, "lengths": list(LENGTHS),
            "sources": {lang: corpora.find_source(lang, overrides.get(lang)).description
                        for lang in corpora.LANGUAGES},
            "other_files": other_kinds,
        },
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m submodel.router.train", description=__doc__)
    parser.add_argument("--out", default=str(MODEL_PATH),
                        help="where to write the model (default: the package's model.json)")
    parser.add_argument("--calib", action="append", default=[], metavar="LANG=PATH",
                        help="a language's training source instead of the default (repeatable)")
    parser.add_argument("--seed", type=int, default=0, help="sampling and training seed")
    args = parser.parse_args(argv)
    try:
        model = train(corpora.parse_calib_flags(args.calib), args.seed)
    except (corpora.CorpusError, ValueError) as e:
        print(f"router.train: error: {e}", file=sys.stderr)
        return 2
    tmp = f"{args.out}.tmp-{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(model, f, separators=(",", ":"), sort_keys=False)
        f.write("\n")
    os.replace(tmp, args.out)
    log(f"wrote {args.out} ({os.path.getsize(args.out) / 1e3:.0f} kB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
