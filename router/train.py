"""Build router/model.json: `python -m submodel.router.train [--out PATH] [--kind KIND]`.

Training snippets (1 to 3 lines: what one-liners need; longer text is told apart as well) are
cut from many projects: the pinned "train" projects of `submodel.router.projects` (fetched once
through npm, PyPI and Debian's registry into the user cache), the "calib" split of each
language's default corpus (`submodel.corpora`: one source among the projects, drawn no more
often than a 20,000-line project would be) and the "other" text on this machine
(`submodel.router.other`).
The "heldout" projects are never read here: `submodel bench router` measures on them.
A snippet of a language comes from a source drawn with probability growing as the square root of
its size (capped), so that no one project stands for its language. "Other" text is learned as
groups of look-alike kinds (C, TypeScript, JVM-like, Go, Rust, scripts, data and prose), one class
each, which the router reads as "other".

Three model kinds fit the same log-linear file format (`--kind`): "logreg", a softmax regression
with L2 fitted by seeded mini-batch Adam, its least important features dropped and the rest
refitted; "nb", multinomial naive Bayes on the same features; "ensemble", the sum of the two
(the mean of their log-odds). Each kind is fitted on `--bag` independent draws of snippets and
the fits' weights are averaged: one model that votes like the bag (a one-line snippet's few
features make a single fit's weights noisy). Weights are written as integers (deterministic for
given inputs).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import sys
import time
from collections import Counter

import numpy as np

from submodel import corpora
from submodel.router import fetch, projects
from submodel.router.features import count, tf, tokenize
from submodel.router.model import FORMAT, MODEL_PATH
from submodel.router.snippets import SnippetSampler
from submodel.vocabulary import LANGUAGES, OTHER

from . import other

# "other" is many languages: one linear class cannot be C-like and Go-like at once, so it is
# learned as groups of look-alike kinds ("other:c"...), which the router reads as "other".
OTHER_GROUP = {"c": "c", "c_header": "c", "objc": "c", "typescript": "typescript",
               "kotlin": "jvm", "csharp": "jvm", "gradle": "jvm", "swift": "jvm", "go": "go",
               "rust": "rust", "shell": "script", "perl": "script", "php": "script",
               "ruby": "script", "cmake": "script", "vim": "script"}
GROUPS = ("c", "typescript", "jvm", "go", "rust", "script", "data")  # "data": everything else
CLASSES = (*LANGUAGES, *(f"{OTHER}:{g}" for g in GROUPS))
KINDS = ("logreg", "nb", "ensemble")
LENGTHS = (1, 1, 1, 2, 2, 3)  # lines per training snippet, drawn uniformly
PER_LANGUAGE = 16000  # training snippets per language
OTHER_SNIPPETS = 24000  # "other": more kinds, but fewer than it would take to outweigh ours
KEEP_PER_CLASS = 150  # most common words per class that stay themselves in n-grams
MIN_DF = 4  # a feature must occur in this many training snippets
MAX_FEATURES = 14000
SCALE = 100  # weights are stored as round(w * SCALE)
MIN_SOURCE_LINES = 100  # a project with fewer lines of a language is not a source of it
WEIGHT_CAP_LINES = 20_000  # a source's draw weight is sqrt(min(lines, this))
# "other" kinds that look most like ours are drawn more often.
OTHER_WEIGHT = {"c": 2.0, "c_header": 2.0, "typescript": 2.5, "go": 1.5, "rust": 1.5,
                "php": 1.5, "shell": 1.5, "kotlin": 2.0, "csharp": 2.0, "objc": 1.5, "gradle": 1.5}


def log(msg: str) -> None:
    print(f"[router.train] {msg}", file=sys.stderr, flush=True)


def _lines(texts: list[str]) -> int:
    return sum(t.count("\n") + 1 for t in texts)


def gather(overrides: dict[str, str], use_default: bool = True):
    """({language: [(source name, texts)]}, {other kind: texts}) from the train projects, the
    default corpora and this machine's "other" files; logs what it read."""
    ours: dict[str, list[tuple[str, list[str]]]] = {lang: [] for lang in LANGUAGES}
    others: dict[str, list[str]] = {}
    for project in projects.projects("train"):
        by_label: dict[str, list[str]] = {}
        for doc in fetch.documents(project):
            by_label.setdefault(doc.label, []).append(doc.text)
        for label, texts in sorted(by_label.items()):
            if label in ours and _lines(texts) >= MIN_SOURCE_LINES:
                ours[label].append((project.key, texts))
            elif label not in ours:
                others.setdefault(label, []).extend(texts)
        log(f"{project.key}: " + ", ".join(f"{label} {len(t)} files {_lines(t)} lines"
                                           for label, t in sorted(by_label.items())))
    if use_default:
        for lang in LANGUAGES:
            try:
                source = corpora.find_source(lang, overrides.get(lang))
            except corpora.CorpusError as e:
                log(f"{lang}: no default corpus ({e}); projects only")
                continue
            docs = corpora.documents(source, "calib")
            texts = [d.text for d in docs if not projects.is_heldout_path(d.name)]
            if len(texts) < len(docs):
                log(f"default {lang}: skipped {len(docs) - len(texts)} files of held-out projects")
            ours[lang].append((f"default:{source.description}", texts))
            log(f"default {lang}: {source.description}, {len(texts)} files {_lines(texts)} lines")
        local = [d for d in other.documents("calib") if not projects.is_heldout_path(d.name)]
        for doc in local:
            others.setdefault(doc.kind, []).append(doc.text)
        log(f"this machine's other text: {len(local)} files")
    return ours, others


def _weight(texts: list[str]) -> float:
    return math.sqrt(min(_lines(texts), WEIGHT_CAP_LINES))


def draw_snippets(rng: random.Random, ours, others):
    """(text, class index) training pairs, and what fed them: per language each source's share
    of the draw weight, per "other" kind its number of files."""
    pairs, shares = [], {}
    for c, lang in enumerate(LANGUAGES):
        sources = ours[lang]
        if not sources:
            raise ValueError(f"no training source for {lang}")
        samplers = [SnippetSampler(texts, rng, whole_comments=True) for _, texts in sources]
        weights = [_weight(texts) for _, texts in sources]
        shares[lang] = {name: round(w / sum(weights), 4)
                        for (name, _), w in zip(sources, weights, strict=True)}
        pairs += [(rng.choices(samplers, weights)[0].draw(rng.choice(LENGTHS)), c)
                  for _ in range(PER_LANGUAGE)]
    kinds = sorted(others)
    samplers = [SnippetSampler(others[k], rng) for k in kinds]
    weights = [OTHER_WEIGHT.get(k, 1.0) for k in kinds]
    classes = [CLASSES.index(other_class(k)) for k in kinds]
    log("other: " + ", ".join(f"{k} {len(others[k])} files" for k in kinds))
    for _ in range(OTHER_SNIPPETS):
        i = rng.choices(range(len(kinds)), weights)[0]
        pairs.append((samplers[i].draw(rng.choice(LENGTHS)), classes[i]))
    return pairs, shares, {k: len(others[k]) for k in kinds}


def other_class(kind: str) -> str:
    """The class of an "other" kind: its group's ("other:c" for a C header)."""
    return f"{OTHER}:{OTHER_GROUP.get(kind, 'data')}"


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
BAG = 4  # independent draws of snippets, one fit each, averaged (see `average`)


def fit(cols, vals, starts, labels, n_features, seed, batch=256, lr=0.02, l2=L2):
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
            g_w += l2 * w
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


def naive_bayes(cols, vals, starts, labels, n_features, alpha: float = 0.5):
    """Multinomial naive Bayes on the (sublinear) feature values: log P(feature | class),
    centred per feature (softmax ignores a feature's common offset), and log class priors."""
    sums = np.zeros((n_features, len(CLASSES)))
    np.add.at(sums, (cols, np.repeat(labels, np.diff(starts))), vals)
    theta = np.log(sums + alpha) - np.log(sums.sum(0) + alpha * n_features)
    w = theta - theta.mean(1, keepdims=True)
    prior = (np.bincount(labels, minlength=len(CLASSES)) + 1) / (len(labels) + len(CLASSES))
    return w, np.log(prior)


def _model(kind, keep, names, w, b, provenance) -> dict:
    wq, bq = np.round(w * SCALE).astype(int), np.round(b * SCALE).astype(int)
    used = np.flatnonzero(np.abs(wq).sum(1) > 0)
    return {
        "format": FORMAT,
        "kind": kind,
        "classes": list(CLASSES),
        "keep": keep,
        "scale": SCALE,
        "bias": bq.tolist(),
        "features": {names[i]: wq[i].tolist() for i in used},
        "trained_on": provenance,
    }


def fit_draw(pairs, keep, kinds, seed: int, l2: float) -> dict[str, tuple[list[str], np.ndarray,
                                                                          np.ndarray]]:
    """{kind: (feature names, weights [F, C], bias [C])} fitted on one draw of snippets."""
    labels = np.array([c for _, c in pairs])
    cols, vals, starts, names = vectorize(pairs, keep)
    df = np.bincount(cols, minlength=len(names))
    frequent = np.flatnonzero(df >= MIN_DF)
    log(f"{len(pairs)} snippets, {len(names)} features, {len(frequent)} in {MIN_DF}+ snippets")
    c1, v1, s1 = restrict(cols, vals, starts, frequent)
    out = {}

    def top_of(w):  # how far a feature moves the classes apart, times how often it occurs
        importance = (w.max(1) - w.min(1)) * np.sqrt(df[frequent])
        return np.sort(frequent[np.argsort(-importance, kind="stable")[:MAX_FEATURES]])

    if "nb" in kinds:
        top = top_of(naive_bayes(c1, v1, s1, labels, len(frequent))[0])
        c2, v2, s2 = restrict(cols, vals, starts, top)
        w, b = naive_bayes(c2, v2, s2, labels, len(top))
        log(f"nb: {len(top)} features; training accuracy {accuracy(c2, v2, s2, labels, w, b):.4f}")
        out["nb"] = ([names[i] for i in top], w, b)
    if "logreg" in kinds or "ensemble" in kinds:
        top = top_of(fit(c1, v1, s1, labels, len(frequent), seed, l2=l2)[0])
        c2, v2, s2 = restrict(cols, vals, starts, top)
        w, b = fit(c2, v2, s2, labels, len(top), seed + 1, l2=l2)
        log(f"logreg: {len(top)} features; training accuracy "
            f"{accuracy(c2, v2, s2, labels, w, b):.4f}")
        top_names = [names[i] for i in top]
        if "logreg" in kinds:
            out["logreg"] = (top_names, w, b)
        if "ensemble" in kinds:
            w_nb, b_nb = naive_bayes(c2, v2, s2, labels, len(top))
            out["ensemble"] = (top_names, (w + w_nb) / 2, (b + b_nb) / 2)
    return out


def average(fits: list[tuple[list[str], np.ndarray, np.ndarray]]):
    """One model from several: each feature's weights averaged over the fits, 0 where a fit
    lacks it. The logits of a log-linear model are linear in its weights, so this is the mean of
    the fits' logits: their geometric-mean vote, at the cost of one model."""
    names = sorted({n for fit_names, _, _ in fits for n in fit_names})
    row = {n: i for i, n in enumerate(names)}
    w = np.zeros((len(names), len(CLASSES)))
    for fit_names, fit_w, _ in fits:
        w[[row[n] for n in fit_names]] += fit_w
    return names, w / len(fits), np.mean([b for _, _, b in fits], axis=0)


def train(overrides: dict[str, str], seed: int = 0, kinds: tuple[str, ...] = ("logreg",),
          use_default: bool = True, l2: float = L2, bag: int = BAG) -> dict[str, dict]:
    """{kind: model dict} for each of `kinds`, each the average of `bag` fits on as many
    independent draws of snippets (one set of kept words for all)."""
    t0 = time.perf_counter()
    ours, others = gather(overrides, use_default)
    draws = []
    for i in range(bag):
        pairs, shares, other_kinds = draw_snippets(random.Random(seed * 1000 + i), ours, others)
        draws.append(pairs)
    for lang, share in shares.items():
        log(f"{lang} sources (share of draws): "
            + ", ".join(f"{n} {v:.1%}" for n, v in sorted(share.items(), key=lambda kv: -kv[1])))
    keep = choose_keep([pair for pairs in draws for pair in pairs])
    log(f"{bag} draws of {len(draws[0])} snippets, {len(keep)} kept words "
        f"({time.perf_counter() - t0:.0f} s)")
    fits = [fit_draw(pairs, frozenset(keep), kinds, seed * 1000 + i, l2)
            for i, pairs in enumerate(draws)]
    provenance = {"snippets": len(draws[0]), "draws": bag, "seed": seed, "l2": l2,
                  "lengths": list(LENGTHS),
                  "projects": [p.key for p in projects.projects("train")],
                  "source_shares": shares, "other_files": other_kinds}
    out = {}
    for kind in kinds:
        names, w, b = average([f[kind] for f in fits])
        out[kind] = _model(kind, keep, names, w, b, provenance)
        log(f"{kind}: {len(out[kind]['features'])} features after averaging")
    return out


def _write(model: dict, path: str) -> None:
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(model, f, separators=(",", ":"), sort_keys=False)
        f.write("\n")
    os.replace(tmp, path)
    log(f"wrote {path} ({os.path.getsize(path) / 1e3:.0f} kB)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m submodel.router.train",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(MODEL_PATH),
                        help="where to write the model (default: the package's model.json)")
    parser.add_argument("--kind", choices=KINDS, default="logreg",
                        help="the model to write to --out (default: logreg)")
    parser.add_argument("--compare-dir", default=None, metavar="DIR",
                        help="also write every kind to DIR/model-KIND.json, for the bench's "
                        "--model")
    parser.add_argument("--calib", action="append", default=[], metavar="LANG=PATH",
                        help="a language's default source instead of the usual (repeatable)")
    parser.add_argument("--no-default-sources", action="store_true",
                        help="train on the pinned projects only (no default corpora, no "
                        "\"other\" files of this machine)")
    parser.add_argument("--seed", type=int, default=0, help="sampling and training seed")
    parser.add_argument("--l2", type=float, default=L2,
                        help=f"the logistic regression's L2 penalty (default: {L2:g})")
    parser.add_argument("--bag", type=int, default=BAG,
                        help="independent draws of training snippets, one fit each, whose "
                        f"weights are averaged into the model (default: {BAG})")
    args = parser.parse_args(argv)
    if args.l2 < 0:
        parser.error("--l2 must be >= 0")
    if args.bag < 1:
        parser.error("--bag must be >= 1")
    kinds = KINDS if args.compare_dir else (args.kind,)
    try:
        models = train(corpora.parse_calib_flags(args.calib), args.seed, kinds,
                       not args.no_default_sources, args.l2, args.bag)
    except (corpora.CorpusError, fetch.FetchError, ValueError) as e:
        print(f"router.train: error: {e}", file=sys.stderr)
        return 2
    _write(models[args.kind], args.out)
    if args.compare_dir:
        os.makedirs(args.compare_dir, exist_ok=True)
        for kind, model in models.items():
            _write(model, os.path.join(args.compare_dir, f"model-{kind}.json"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
