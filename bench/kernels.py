"""Masked kernels vs torch dense over Qwen2.5-0.5B's Linear shapes (issue 7's kernel numbers).

`python -m submodel.bench.kernels [--json PATH]`: one decode step = every prunable Linear of every
layer applied once, with random weights and random 50% masks. Prints a Markdown table and writes
the same numbers as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

from submodel.server import kernels

# (out, in) of q, k, v, o, gate, up, down in one Qwen2.5-0.5B decoder layer.
QWEN05_SHAPES = [(896, 896), (128, 896), (128, 896), (896, 896), (4864, 896), (4864, 896),
                 (896, 4864)]
LANGUAGES = 4
PREFILL_TOKENS = (2, 8, 16, 64, 256)


def timed(fn: Callable[[], object], repeats: int) -> float:
    """Best seconds of `repeats` calls after one warm-up (the CPU is shared: best filters noise)."""
    fn()
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def copy_bandwidth(gib: float = 1.0, repeats: int = 5) -> float:
    """Bytes moved (read + write) per second by a large tensor copy, with torch's threads."""
    src = torch.ones(int(gib * 2**30) // 4)
    dst = torch.empty_like(src)
    return 2 * src.numel() * 4 / timed(lambda: dst.copy_(src), repeats)


def make_layers(n_layers: int, dtype: torch.dtype, gen: torch.Generator) -> list[tuple]:
    """Per Linear: (weight, packed masks of LANGUAGES languages, x rows for batch 8)."""
    layers = []
    for _ in range(n_layers):
        for out, inp in QWEN05_SHAPES:
            w = (torch.randn(out, inp, generator=gen) * 0.02).to(dtype)
            masks = torch.randint(0, 256, (LANGUAGES, out, (inp + 7) // 8), generator=gen,
                                  dtype=torch.uint8)
            x = torch.randn(8, inp, generator=gen).to(dtype)
            layers.append((w, masks, x))
    return layers


def decode_rows(layers: list[tuple], dtype: torch.dtype, floor_s: float, repeats: int,
                paths: list[str]) -> list[dict]:
    """One decode step over all layers: torch dense vs the kernel on every path (slower paths
    at batch 1 only, timed once)."""
    one = torch.zeros(1, dtype=torch.int32)
    eight_one = torch.zeros(8, dtype=torch.int32)
    eight_mixed = torch.arange(8, dtype=torch.int32) % LANGUAGES

    def step(f):
        return lambda: [f(w, m, x) for w, m, x in layers]

    best = paths[-1]
    cases: list[tuple[str, int, str, Callable]] = [
        ("torch dense F.linear", 1, "-", step(lambda w, m, x: F.linear(x[:1], w))),
        ("torch dense F.linear", 8, "-", step(lambda w, m, x: F.linear(x, w))),
        ("masked, 1 language", 1, best,
         step(lambda w, m, x: kernels.masked_linear(x[:1], w, m, one))),
        ("kernel, dense rows", 1, best,
         step(lambda w, m, x: kernels.masked_linear(x[:1], w, m, one - 1))),
        ("masked, 1 language", 8, best,
         step(lambda w, m, x: kernels.masked_linear(x, w, m, eight_one))),
        ("masked, 4 languages", 8, best,
         step(lambda w, m, x: kernels.masked_linear(x, w, m, eight_mixed))),
    ]
    cases += [("masked, 1 language", 1, path,
               step(lambda w, m, x: kernels.masked_linear(x[:1], w, m, one)))
              for path in paths[:-1]]
    rows = []
    for name, batch, path, fn in cases:
        kernels.set_kernel_path(None if path == "-" else path)
        s = timed(fn, repeats if path in ("-", best) else 1)
        rows.append({"case": name, "dtype": str(dtype).removeprefix("torch."), "batch": batch,
                     "path": path, "ms": s * 1e3, "floor_fraction": floor_s / s})
    kernels.set_kernel_path(None)
    return rows


def swap_ms(layers: list[tuple], repeats: int) -> float:
    """One language switch of every Linear in place (swap_masks_ from language 0 to 1 and back),
    with the dense weights as the restore source."""
    live = [(w * 1, w, m) for w, m, _ in layers]  # a second copy: the benchmark's own
    for weight, dense, masks in live:
        kernels.apply_mask_into(dense, masks[0], weight)
    state = {"lang": 0}

    def switch():
        old, new = state["lang"], 1 - state["lang"]
        for weight, dense, masks in live:
            kernels.swap_masks_(weight, dense, masks[old], masks[new])
        state["lang"] = new

    return timed(switch, repeats) * 1e3


def prefill_rows(layers: list[tuple], dtype: torch.dtype, repeats: int) -> list[dict]:
    """Prefill through one language's masks: blocked kernel vs W*M in scratch + torch GEMM."""
    scratch = torch.empty(max(w.numel() for w, _, _ in layers), dtype=dtype)
    lang = torch.zeros(max(PREFILL_TOKENS), dtype=torch.int32)
    rows = []
    for tokens in PREFILL_TOKENS:
        xs = [torch.randn(tokens, w.shape[1]).to(dtype) for w, _, _ in layers]

        def blocked(xs=xs, tokens=tokens):
            for (w, m, _), x in zip(layers, xs, strict=True):
                kernels.masked_linear(x, w, m[:1], lang[:tokens])

        def materialized(xs=xs):
            for (w, m, _), x in zip(layers, xs, strict=True):
                buf = scratch[: w.numel()].view(w.shape)
                F.linear(x, kernels.apply_mask_into(w, m[0], buf))

        def dense(xs=xs):
            for (w, _, _), x in zip(layers, xs, strict=True):
                F.linear(x, w)

        for name, fn in (("blocked kernel", blocked), ("W*M scratch + GEMM", materialized),
                         ("torch dense F.linear", dense)):
            rows.append({"case": name, "dtype": str(dtype).removeprefix("torch."),
                         "tokens": tokens, "ms": timed(fn, repeats) * 1e3})
    return rows


def markdown(result: dict) -> str:
    lines = [
        f"Masked kernels, {result['layers']} layers of Qwen2.5-0.5B Linear shapes, "
        f"{result['threads']} threads, CPU features: {', '.join(result['cpu_features'])}",
        f"Copy bandwidth {result['bandwidth_gbs']:.1f} GB/s (read + write); floor = weight "
        "bytes / bandwidth",
        "",
        "| decode step | dtype | batch | path | ms | x faster than torch dense | floor fraction |",
        "|---|---|---:|---|---:|---:|---:|",
    ]
    for r in result["decode"]:
        dense = next(d["ms"] for d in result["decode"] if d["path"] == "-"
                     and d["dtype"] == r["dtype"] and d["batch"] == r["batch"])
        lines.append(f"| {r['case']} | {r['dtype']} | {r['batch']} | {r['path']} | "
                     f"{r['ms']:.1f} | {dense / r['ms']:.2f} | {r['floor_fraction']:.0%} |")
    lines += ["", "| mask switch, all Linears (swap_masks_) | dtype | ms |", "|---|---|---:|"]
    lines += [f"| one switch | {dtype} | {ms:.1f} |" for dtype, ms in result["swap_ms"].items()]
    lines += ["", "| prefill (1 language) | dtype | tokens | ms |", "|---|---|---:|---:|"]
    for r in result["prefill"]:
        lines.append(f"| {r['case']} | {r['dtype']} | {r['tokens']} | {r['ms']:.1f} |")
    return "\n".join(lines)


def run(layers: int, threads: int, repeats: int, prefill_layers: int) -> dict:
    torch.set_num_threads(threads)
    gen = torch.Generator().manual_seed(0)
    bandwidth = copy_bandwidth()
    result = {"layers": layers, "threads": threads, "bandwidth_gbs": bandwidth / 1e9,
              "cpu_features": kernels.cpu_features(), "paths": kernels.available_paths(),
              "decode": [], "swap_ms": {}, "prefill": []}
    for dtype in (torch.bfloat16, torch.float32):
        built = make_layers(layers, dtype, gen)
        weight_bytes = sum(w.numel() * w.element_size() for w, _, _ in built)
        result["decode"] += decode_rows(built, dtype, weight_bytes / bandwidth, repeats,
                                        result["paths"])
        result["swap_ms"][str(dtype).removeprefix("torch.")] = swap_ms(built, repeats)
        result["prefill"] += prefill_rows(built[: 7 * prefill_layers], dtype, repeats)
        del built
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m submodel.bench.kernels",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, default=Path("runs/kernels.json"),
                        help="where to write the results as JSON (default: runs/kernels.json)")
    parser.add_argument("--layers", type=int, default=24, help="decoder layers (default: 24)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default: 2)")
    parser.add_argument("--repeats", type=int, default=5,
                        help="timed repeats per case, best reported (default: 5)")
    parser.add_argument("--prefill-layers", type=int, default=2,
                        help="layers used for the prefill comparison (default: 2)")
    args = parser.parse_args(argv)
    if min(args.layers, args.threads, args.repeats, args.prefill_layers) < 1:
        parser.error("--layers, --threads, --repeats and --prefill-layers must be >= 1")
    try:
        result = run(args.layers, args.threads, args.repeats,
                     min(args.prefill_layers, args.layers))
    except kernels.KernelUnavailableError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(markdown(result))
    args.json.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.json.with_name(args.json.name + f".tmp-{os.getpid()}")
    tmp.write_text(json.dumps(result, indent=2) + "\n")
    tmp.replace(args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
