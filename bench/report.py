"""Reports people can read: JSON, Markdown and PNG, each written atomically (temp file, then
rename), for the pass@k matrix and for the load bench."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np

from submodel.bench.matrix import pass_key
from submodel.bench.passk_run import ROUTED
from submodel.vocabulary import DENSE

PAPER_RETENTION = 0.88
TARGET_RETENTION = 0.85


# ---- atomic files ---------------------------------------------------------------------------

def write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def write_json(path: Path, obj: object) -> None:
    write_text(path, json.dumps(obj, indent=2) + "\n")


def write_report(out: Path, name: str, result: dict, markdown: str) -> list[Path]:
    """Every bench's output: OUT/NAME.json (the numbers) and OUT/NAME.md (the report)."""
    paths = [out / f"{name}.json", out / f"{name}.md"]
    write_json(paths[0], result)
    write_text(paths[1], markdown.rstrip() + "\n")
    return paths


def save_figure(fig, path: Path) -> None:
    import matplotlib.pyplot as plt

    tmp = path.with_name(f".{path.name}.tmp")
    fig.savefig(tmp, format="png", dpi=120, bbox_inches="tight")
    plt.close(fig)
    os.replace(tmp, path)


def pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _fmt(x: float | None, digits: int = 3) -> str:
    return "–" if x is None else f"{x:.{digits}f}"


def _pct(x: float | None) -> str:
    return "–" if x is None else f"{100 * x:.1f}%"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(r) + " |" for r in rows]


# ---- pass@k matrix --------------------------------------------------------------------------

def write_passk(results: dict, out: Path) -> list[Path]:
    """passk.json, passk.md, matrix.png and (with dense and a mask run) retention.png."""
    out.mkdir(parents=True, exist_ok=True)
    figures = [out / "matrix.png"]
    save_figure(matrix_figure(results), figures[0])
    if results["retention"]:
        figures.append(out / "retention.png")
        save_figure(retention_figure(results), figures[1])
    markdown = passk_markdown(results, [f.name for f in figures])
    return write_report(out, "passk", results, markdown) + figures


def headline_k(results: dict) -> int:
    """The k shown in figures: the retention k (the paper's Pass@10 when n allows it)."""
    return results["retention_k"] or min(results["ks"])


def passk_markdown(results: dict, figures: list[str]) -> str:
    rows, cols, cells = results["rows"], results["columns"], results["cells"]
    m, s = results["model"], results["sampling"]
    lines = [
        "# HumanEval pass@k per sub-model", "",
        f"Model `{m['base_model']}` ({m['method']}, {m['pattern']}), strategy `{m['strategy']}`,"
        f" served from {m['source']}; identity `{m['identity']}`.",
        f"{results['n']} samples per problem at temperature {s['temperature']}, top_p "
        f"{s['top_p']}, up to {s['max_tokens']} tokens, seed {s['seed']}; pass@k by the "
        "unbiased estimator (mean over problems). Prompt format: "
        f"{results.get('format', 'completion')}.",
        "Rows are sub-models: forced rows send `language=<row>` with every request (the pure "
        "sub-model); the `routed` row sends no hint, so the router picks the sub-model from the "
        "prompt. Columns are the problems' languages.", "",
        f"Command: `{results['command']}`", "",
    ]
    for k in results["ks"]:
        if all(cells[r][c][pass_key(k)] is None for r in rows for c in cols):
            continue
        lines += [f"## Pass@{k}", ""]
        body = [[f"**{r}**" if r in (DENSE, ROUTED) else r]
                + [_pct(cells[r][c][pass_key(k)]) for c in cols] for r in rows]
        body.append(["problems × samples"] + [
            f"{cells[rows[0]][c]['problems']} × {results['n']}" for c in cols])
        lines += _table(["sub-model", *cols], body) + [""]
    lines += _retention_md(results) + _routing_md(results) + _coverage_md(results)
    lines += ["## Outcomes of the samples", ""]
    lines += _table(["sub-model", "language", "passed", "failed", "compile_error", "timeout",
                     "error", "mean tokens"],
                    [[r, c, *(str(cells[r][c]["statuses"].get(st, 0)) for st in
                              ("passed", "failed", "compile_error", "timeout", "error")),
                      _fmt(cells[r][c]["mean_tokens"], 1)] for r in rows for c in cols])
    run = results["run"]
    lines += ["", f"Run: {run['seconds']} s, {run['requests']} requests, "
              f"{run['samples_generated']} samples generated ({run['tokens_generated']} tokens, "
              f"{run['generated_tokens_per_s']} tokens/s), {run['samples_cached']} from the "
              f"cache, {run['executions_run']} sandbox runs.", ""]
    lines += [f"![{name}]({name})" for name in figures] + [""]
    return "\n".join(lines)


def _retention_md(results: dict) -> list[str]:
    ret = results["retention"]
    if not ret:
        return ["## Retention", "", "Needs the dense row and at least one mask row on its own "
                "language.", ""]
    k = results["retention_k"]
    lines = [f"## Retention (mask pass@{k} / dense pass@{k} on its own language)", "",
             f"Target ≥ {TARGET_RETENTION:.0%} (the paper: {PAPER_RETENTION:.0%}), and the "
             "language's mask beats the other masks there.", ""]
    body = []
    for lang, r in ret.items():
        beats = {True: "yes", False: "no", None: "–"}[r["beats_other_masks"]]
        other = (f"{r['best_other_mask']} {_pct(r['best_other'])}" if r["best_other_mask"]
                 else "–")
        body.append([lang, _pct(r["mask"]), _pct(r["dense"]), _pct(r["retention"]),
                     _interval(r.get("vs_dense"), "ratio_95"), beats, other,
                     _interval(r.get("vs_best_other"), "difference_95", points=True)])
    return lines + _table(["language", "own mask", "dense", "retention", "retention 95%",
                           "beats other masks", "best other mask", "own − best other 95%"],
                          body) + ["", "Intervals: paired bootstrap over problems "
                                   "(2,000 resamples).", ""]


def _interval(boot: dict | None, key: str, points: bool = False) -> str:
    if not boot or not boot.get(key):
        return "–"
    lo, hi = boot[key]
    if points:
        return f"[{100 * lo:+.1f}, {100 * hi:+.1f}] pts"
    return f"[{lo:.0%}, {hi:.0%}]"


def _routing_md(results: dict) -> list[str]:
    routed = results["routed"]
    if routed is None:
        return []
    targets = sorted({t for c in routed["confusion"].values() for t in c})
    lines = ["## Routing of the unhinted requests (routed row)", "",
             f"{routed['requests']} problems routed; {routed['misroutes']} misrouted "
             f"({routed['fallbacks']} of them sent to dense below the confidence threshold). "
             f"Sources: {', '.join(f'{k} {v}' for k, v in routed['sources'].items()) or '–'}.",
             "", "Rows: true language; columns: the sub-model the router chose.", ""]
    body = [[lang] + [str(c.get(t, 0)) for t in targets]
            + [_fmt(routed["mean_confidence"][lang], 2)]
            for lang, c in routed["confusion"].items()]
    lines += _table(["true \\ routed", *targets, "mean confidence"], body) + [""]
    if routed["misrouted"]:
        lines += ["Misrouted: " + ", ".join(
            f"{m['task_id']} ({m['true_language']} → {m['routed_language']}, "
            f"{m['confidence']:.2f}, {m['source']})" for m in routed["misrouted"]), ""]
    return lines


def _coverage_md(results: dict) -> list[str]:
    lines = ["## Problems per language", "",
             "How many of HumanEval's 164 problems each language has (our translator, MultiPL-E "
             "style: a problem that does not translate is skipped, not faked), and how many "
             "were evaluated.", ""]
    body = []
    for lang, c in results["coverage"].items():
        body.append([lang, c["source"], f"{c['available']} / {c['total']}",
                     str(len(c["skipped"])), str(c["selected"]),
                     str(len(c["too_long_for_context"])), str(c["evaluated"])])
    lines += _table(["language", "source", "available", "untranslatable", "selected",
                     "prompt too long", "evaluated"], body) + [""]
    for lang, c in results["coverage"].items():
        if c["skipped"]:
            reasons: dict[str, int] = {}
            for s in c["skipped"]:
                reasons[s["reason"]] = reasons.get(s["reason"], 0) + 1
            top = sorted(reasons.items(), key=lambda kv: -kv[1])[:5]
            lines.append(f"- {lang} untranslatable: " + "; ".join(
                f"{reason} ({count})" for reason, count in top))
    return lines + [""]


def matrix_figure(results: dict):
    plt = pyplot()
    rows, cols, k = results["rows"], results["columns"], headline_k(results)
    values = [[results["cells"][r][c][pass_key(k)] for c in cols] for r in rows]
    grid = [[math.nan if v is None else v for v in row] for row in values]
    fig, ax = plt.subplots(figsize=(1.6 + 1.3 * len(cols), 1.0 + 0.55 * len(rows)))
    image = ax.imshow(grid, vmin=0, vmax=1, cmap="viridis", aspect="auto")
    ax.set_xticks(range(len(cols)), cols)
    ax.set_yticks(range(len(rows)), rows)
    ax.set_xlabel("problem language")
    ax.set_ylabel("sub-model")
    for i, row in enumerate(values):
        for j, v in enumerate(row):
            ax.text(j, i, "–" if v is None else f"{100 * v:.0f}", ha="center", va="center",
                    color="white" if v is None or v < 0.6 else "black")
    if ROUTED in rows and len(rows) > 1:  # set the routed row apart from the forced ones
        i = rows.index(ROUTED)
        for edge in (i - 0.5, i + 0.5):
            if 0 < edge + 0.5 < len(rows):
                ax.axhline(edge, color="white", lw=3)
    ax.set_title(f"HumanEval pass@{k} (%), n={results['n']}")
    fig.colorbar(image, ax=ax, fraction=0.04)
    return fig


def retention_figure(results: dict):
    plt = pyplot()
    ret = results["retention"]
    langs = list(ret)
    values = [100 * (ret[lang]["retention"] or 0) for lang in langs]
    fig, ax = plt.subplots(figsize=(1.5 + 1.2 * len(langs), 3.2))
    bars = ax.bar(langs, values, color=["tab:green" if ret[lang]["beats_other_masks"]
                                        else "tab:gray" for lang in langs])
    ax.axhline(100 * TARGET_RETENTION, color="tab:red", ls="--", lw=1,
               label=f"target {TARGET_RETENTION:.0%}")
    ax.axhline(100 * PAPER_RETENTION, color="tab:blue", ls=":", lw=1,
               label=f"paper {PAPER_RETENTION:.0%}")
    for bar, lang in zip(bars, langs, strict=True):
        r = ret[lang]["retention"]
        ax.text(bar.get_x() + bar.get_width() / 2, bar.get_height(),
                "–" if r is None else f"{100 * r:.0f}%", ha="center", va="bottom")
    ax.set_ylabel(f"mask / dense pass@{results['retention_k']} (%)")
    ax.set_title("Retention on its own language\n(green: the mask beats the other masks)")
    ax.legend(loc="lower right", fontsize=8)
    ax.set_ylim(0, max([110, *values]) * 1.1)
    return fig


# ---- load bench -----------------------------------------------------------------------------

def _mib(x: float | None) -> str:
    return "–" if x is None else f"{x / 2**20:.0f}"


def _ratio(x: float | None) -> str:
    return "–" if x is None else f"{x:.2f}x"


def write_load(results: dict, out: Path) -> list[Path]:
    """load.json, load.md and load.png."""
    out.mkdir(parents=True, exist_ok=True)
    figure = out / "load.png"
    save_figure(load_figure(results), figure)
    return write_report(out, "load", results, load_markdown(results, figure.name)) + [figure]


def load_markdown(results: dict, figure: str) -> str:
    runs = results["runs"]
    lines = [
        "# Load and memory", "",
        f"Store `{results['store']}`; {results['requests']} requests per strategy at "
        f"concurrency {results['concurrency']}, up to {results['max_tokens']} tokens each "
        f"(temperature {results['temperature']}, seeded, no stop strings). Each strategy runs "
        "in a fresh `submodel serve` process. Mixed traffic cycles through HumanEval prompts of "
        "every served language without a hint (the router decides); `dense` sends the same "
        "prompts with `language=dense` to a fused server.", "",
        "## Throughput and latency", "",
    ]
    lines += _table(
        ["strategy", "traffic", "tokens/s", "requests/s", "TTFT p50 (s)", "TTFT p99 (s)",
         "latency p50 (s)", "latency p99 (s)", "errors", "misroutes"],
        [[r["strategy"], r["traffic"], f"{r['tokens_per_s']:.1f}", f"{r['requests_per_s']:.2f}",
          _fmt(r["ttft_p50"], 2), _fmt(r["ttft_p99"], 2), _fmt(r["latency_p50"], 2),
          _fmt(r["latency_p99"], 2), str(r["errors"]), str(r["misroutes"])] for r in runs])
    lines += ["", "## Memory of the server process (MiB)", "",
              "Idle: after loading and one warm-up request per language. Peak: during the "
              "measured traffic. Weights: what the server reports resident "
              "(`submodel_weight_bytes`).", ""]
    kinds = sorted({k for r in runs for k in r["weight_bytes"]})
    lines += _table(
        ["strategy", "RSS idle", "PSS idle", "RSS peak", "PSS peak",
         *(f"weights: {k}" for k in kinds), "packed masks"],
        [[r["strategy"], _mib(r["rss_idle"]), _mib(r["pss_idle"]), _mib(r["rss_peak"]),
          _mib(r["pss_peak"]), *(_mib(r["weight_bytes"].get(k)) for k in kinds),
          _mib(r["mask_bytes"])] for r in runs])
    if any(r["vs_dense"] for r in runs):
        lines += ["", "## Ratios to dense (same prompts, same concurrency)", "",
                  "Targets: mixed-language throughput ≥ 0.95x dense; the RSS that serving the "
                  "language sub-models adds ≤ 1.25x their packed masks. The dense run is dense "
                  "traffic on a fused server, which holds the masks too: its extra RSS is what "
                  "serving them costs beyond holding them.", ""]
        lines += _table(
            ["strategy", "tokens/s", "latency p50", "RSS peak", "PSS peak", "extra RSS (MiB)",
             "extra RSS / packed masks"],
            [[r["strategy"], _ratio(v["tokens_per_s"]), _ratio(v["latency_p50"]),
              _ratio(v["rss_peak"]), _ratio(v["pss_peak"]), _mib(v["extra_rss_bytes"]),
              _ratio(v["extra_rss_over_mask_bytes"])]
             for r in runs if (v := r["vs_dense"])])
    if results.get("http"):
        lines += ["", "## HTTP against gRPC (same server, same requests)", "",
                  "The measured requests sent again through the OpenAI-compatible HTTP API "
                  "(`/v1/completions`, streamed), in the order gRPC, HTTP, HTTP, gRPC; each "
                  "column is over both passes of its protocol. Target: HTTP within a few percent "
                  "of gRPC.", ""]
        lines += _table(
            ["strategy", "gRPC tokens/s", "HTTP tokens/s", "HTTP/gRPC tokens/s",
             "HTTP/gRPC TTFT p50", "HTTP/gRPC latency p50", "HTTP errors", "same tokens"],
            [[r["strategy"], f"{h['grpc_tokens_per_s']:.1f}", f"{h['tokens_per_s']:.1f}",
              _ratio(h["vs_grpc"]["tokens_per_s"]), _ratio(h["vs_grpc"]["ttft_p50"]),
              _ratio(h["vs_grpc"]["latency_p50"]), str(h["errors"]),
              "yes" if h["same_tokens"] else "no"] for r in runs if (h := r["http"])])
    lines += ["", f"![{figure}]({figure})", ""]
    return "\n".join(lines)


def load_figure(results: dict):
    plt = pyplot()
    runs = results["runs"]
    names = [r["strategy"] for r in runs]
    fig, axes = plt.subplots(1, 3, figsize=(4 + 1.6 * len(runs), 3.4))
    axes[0].bar(names, [r["tokens_per_s"] for r in runs], color="tab:blue")
    axes[0].set_title("throughput (tokens/s)")
    x = np.arange(len(runs))
    axes[1].bar(x - 0.2, [r["latency_p50"] or 0 for r in runs], 0.4, label="p50")
    axes[1].bar(x + 0.2, [r["latency_p99"] or 0 for r in runs], 0.4, label="p99")
    axes[1].set_xticks(x, names)
    axes[1].set_title("latency (s)")
    axes[1].legend(fontsize=8)
    axes[2].bar(x - 0.2, [r["rss_peak"] / 2**20 for r in runs], 0.4, label="RSS")
    axes[2].bar(x + 0.2, [r["pss_peak"] / 2**20 for r in runs], 0.4, label="PSS")
    axes[2].set_xticks(x, names)
    axes[2].set_title("server peak memory (MiB)")
    axes[2].legend(fontsize=8, loc="lower right")
    fig.suptitle(f"concurrency {results['concurrency']}, {results['requests']} requests, "
                 f"{results['max_tokens']} tokens max")
    fig.tight_layout()
    return fig
