"""Masked kernels vs torch dense over Qwen2.5-0.5B's Linear shapes (issue 7's kernel numbers).

`submodel bench kernels [--out DIR]`: a decode step = every prunable Linear of every
layer applied once, with random weights and random 50% masks (timing does not depend on values).
Each case reports its best wall time and its best CPU time (all threads) over the repeats: on a
shared machine the CPU time is the steadier of the two. A decode case's floor is the time its
bytes take at the read bandwidth measured just before each of its calls (the host's bandwidth
drifts by a third within minutes, so one figure at start would misstate later cases). Batch-1
kernel cases run with one-row and four-row tiles (the engine measures which to use). Prints
Markdown and writes JSON.
"""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F

from submodel.bench.timing import clock, fastest, since
from submodel.server import kernels

# (out, in) of q, k, v, o, gate, up, down in one Qwen2.5-0.5B decoder layer.
QWEN05_SHAPES = [(896, 896), (128, 896), (128, 896), (896, 896), (4864, 896), (4864, 896),
                 (896, 4864)]
# The calls a layer makes with int8 weights: q|k|v and gate|up joined (FusedStrategy.install).
INT8_CALLS = [(0, 3), (3, 4), (4, 6), (6, 7)]  # index ranges into QWEN05_SHAPES
LANGUAGES = 4
PREFILL_TOKENS = (2, 8, 16, 32, 64, 256)


def read_bandwidth(repeats: int, gib: float = 1.0) -> float:
    """Bytes read per second by a sum over a large tensor, with torch's threads: the rate a
    GEMV's weight reads can reach (a copy reads and writes; on Zen 4 its read + write rate
    came within 5% of this, run side by side)."""
    src = torch.ones(int(gib * 2**30) // 4)
    return src.numel() * 4 / (fastest(src.sum, repeats)["ms"] / 1e3)


def timed_with_reads(fn, repeats: int, probe: torch.Tensor) -> dict:
    """Best wall and CPU ms of `fn` over `repeats` calls after one warm-up, each call preceded
    by a sum over `probe` (fp32, larger than the caches); with the best read bandwidth those
    sums reached."""
    fn()
    wall = cpu = read_s = float("inf")
    for _ in range(repeats):
        start = clock()
        probe.sum()
        read_s = min(read_s, since(start)[0])
        start = clock()
        fn()
        w, c = since(start)
        wall, cpu = min(wall, w), min(cpu, c)
    return {"ms": wall * 1e3, "cpu_ms": cpu * 1e3,
            "bandwidth_gbs": probe.numel() * 4 / read_s / 1e9}


def make_layers(n_layers: int, dtype: torch.dtype, gen: torch.Generator) -> list[tuple]:
    """Per Linear: (weight, packed masks of LANGUAGES languages, 8 rows of x)."""
    layers = []
    for _ in range(n_layers):
        for out, inp in QWEN05_SHAPES:
            w = (torch.randn(out, inp, generator=gen) * 0.02).to(dtype)
            masks = torch.randint(0, 256, (LANGUAGES, out, (inp + 7) // 8), generator=gen,
                                  dtype=torch.uint8)
            x = torch.randn(8, inp, generator=gen).to(dtype)
            layers.append((w, masks, x))
    return layers


def int8_calls(layers: list[tuple]) -> list[tuple]:
    """(codes, scales, masks, x) of each call a decode step makes with int8 weights: the
    layers' Linears quantized, siblings joined along their output rows."""
    calls = []
    per_layer = len(QWEN05_SHAPES)
    for base in range(0, len(layers), per_layer):
        for start, end in INT8_CALLS:
            group = layers[base + start:base + end]
            codes, scales = zip(*(kernels.quantize_q8(w) for w, _, _ in group), strict=True)
            calls.append((torch.cat(codes), torch.cat(scales),
                          torch.cat([m for _, m, _ in group], dim=1), group[0][2]))
    return calls


def decode_rows(layers: list[tuple], repeats: int, paths: list[str]) -> list[dict]:
    """A decode step: torch dense vs the kernel (slower paths at batch 1 only, timed once),
    and the kernel over int8 codes of the same weights; batch-1 kernel cases with tiles of 1 and
    of 4 output rows. Each row carries the weight bytes one step reads (weights or codes and
    scales, plus the mask bits of each language in the batch) and the read bandwidth measured
    around it, and so its fraction of the bandwidth floor."""
    quantized = int8_calls(layers)
    full_bytes = sum(w.numel() * w.element_size() for w, _, _ in layers)
    int8_bytes = sum(c.numel() + s.numel() * s.element_size() for c, s, _, _ in quantized)
    mask_bytes = sum(m[0].numel() for _, m, _ in layers)  # one language's
    one = torch.zeros(1, dtype=torch.int32)
    eight_one = torch.zeros(8, dtype=torch.int32)
    eight_mixed = torch.arange(8, dtype=torch.int32) % LANGUAGES

    def step(f):
        return lambda: [f(w, m, x) for w, m, x in layers]

    def masked(lang):
        return step(lambda w, m, x: kernels.masked_linear(x[: len(lang)], w, m, lang))

    def int8(lang):
        return lambda: [kernels.masked_linear_q8(x[: len(lang)], codes, scales, m, lang)
                        for codes, scales, m, x in quantized]

    best = paths[-1]
    cases = [  # (case, batch, path, output rows a tile at batch 1, step)
        ("torch dense F.linear", 1, "-", None, step(lambda w, m, x: F.linear(x[:1], w))),
        ("torch dense F.linear", 8, "-", None, step(lambda w, m, x: F.linear(x, w))),
        *[("masked, 1 language", 1, best, t, masked(one)) for t in (1, 4)],
        *[("kernel, dense rows", 1, best, t, masked(one - 1)) for t in (1, 4)],
        ("masked, 1 language", 8, best, None, masked(eight_one)),
        ("masked, 4 languages", 8, best, None, masked(eight_mixed)),
        *[("int8 masked, 1 language", 1, best, t, int8(one)) for t in (1, 4)],
        *[("int8 kernel, dense rows", 1, best, t, int8(one - 1)) for t in (1, 4)],
        ("int8 masked, 4 languages", 8, best, None, int8(eight_mixed)),
    ] + [("masked, 1 language", 1, path, 4, masked(one)) for path in paths[:-1]]
    rows = []
    probe = torch.ones(2**28)  # 1 GiB
    tiles_before = kernels.single_row_tiles()
    for name, batch, path, tile_rows, fn in cases:
        kernels.set_kernel_path(None if path == "-" else path)
        kernels.set_single_row_tiles(tile_rows == 1)
        t = timed_with_reads(fn, repeats if path in ("-", best) else 1, probe)
        nbytes = int8_bytes if name.startswith("int8") else full_bytes
        if "masked" in name:
            nbytes += mask_bytes * (LANGUAGES if "languages" in name else 1)
        rows.append({"case": name, "batch": batch, "path": path, "tile_rows": tile_rows,
                     "weight_bytes": nbytes, **t,
                     "floor_fraction": nbytes / (t["bandwidth_gbs"] * 1e9) * 1e3 / t["ms"]})
    kernels.set_kernel_path(None)
    kernels.set_single_row_tiles(tiles_before)
    return rows


def swap_row(layers: list[tuple], repeats: int) -> dict:
    """One language switch of every Linear in place (swap_masks_ from language 0 to 1 and back)
    with the dense weights as the restore source."""
    live = [(w.clone(), w, m) for w, m, _ in layers]  # the benchmark's own second copy
    for weight, dense, masks in live:
        kernels.apply_mask_into(dense, masks[0], weight)
    state = {"lang": 0}

    def switch():
        old, new = state["lang"], 1 - state["lang"]
        for weight, dense, masks in live:
            kernels.swap_masks_(weight, dense, masks[old], masks[new])
        state["lang"] = new

    return {"case": "swap_masks_, one switch", **fastest(switch, repeats)}


def prefill_rows(layers: list[tuple], repeats: int) -> list[dict]:
    """Prefill through one language's masks: blocked kernel vs W*M in scratch + torch GEMM."""
    dtype = layers[0][0].dtype
    scratch = torch.empty(max(w.numel() for w, _, _ in layers), dtype=dtype)
    rows = []
    for tokens in PREFILL_TOKENS:
        xs = [torch.randn(tokens, w.shape[1]).to(dtype) for w, _, _ in layers]
        lang = torch.zeros(tokens, dtype=torch.int32)

        def blocked(xs=xs, lang=lang):
            for (w, m, _), x in zip(layers, xs, strict=True):
                kernels.masked_linear(x, w, m[:1], lang)

        def materialized(xs=xs):
            for (w, m, _), x in zip(layers, xs, strict=True):
                F.linear(x, kernels.apply_mask_into(w, m[0], scratch[: w.numel()].view(w.shape)))

        def dense(xs=xs):
            for (w, _, _), x in zip(layers, xs, strict=True):
                F.linear(x, w)

        for name, fn in (("blocked kernel", blocked), ("W*M scratch + GEMM", materialized),
                         ("torch dense F.linear", dense)):
            rows.append({"case": name, "tokens": tokens, **fastest(fn, repeats)})
    return rows


def run(layers: int, threads: int, repeats: int, prefill_layers: int) -> dict:
    torch.set_num_threads(threads)
    gen = torch.Generator().manual_seed(0)
    result = {"layers": layers, "threads": threads, "load_average": os.getloadavg()[0],
              "cpu": kernels.cpu_model(), "cpu_features": kernels.cpu_features(),
              "paths": kernels.available_paths(), "dtypes": {}}
    for dtype in (torch.bfloat16, torch.float32):
        built = make_layers(layers, dtype, gen)
        weight_bytes = sum(w.numel() * w.element_size() for w, _, _ in built)
        decode = decode_rows(built, repeats, result["paths"])
        result["dtypes"][str(dtype).removeprefix("torch.")] = {
            "weight_bytes": weight_bytes,
            "decode": decode,
            "swap": swap_row(built, repeats),
            "prefill": prefill_rows(built[: len(QWEN05_SHAPES) * prefill_layers], repeats),
        }
        del built
    return result


def markdown(result: dict) -> str:
    lines = [
        f"Masked kernels: {result['layers']} layers of Qwen2.5-0.5B Linear shapes, "
        f"{result['threads']} threads, load average {result['load_average']:.1f}, "
        f"CPU {result['cpu']} with {', '.join(result['cpu_features'])}.",
        "Floor = the bytes a row reads (weights, or int8 codes + scales; and each batch "
        "language's mask bits) / the read bandwidth (GB/s: a sum over 1 GiB before each call, "
        "best of the case's calls). tiles = output rows a tile at batch 1. ms = best wall time, "
        "cpu = best CPU time of all threads.",
        "",
        "| decode step | dtype | batch | path | tiles | ms | cpu ms | vs torch dense (ms) | "
        "read GB/s | floor |",
        "|---|---|---:|---|---:|---:|---:|---:|---:|---:|",
    ]
    for dtype, d in result["dtypes"].items():
        dense = {r["batch"]: r["ms"] for r in d["decode"] if r["path"] == "-"}
        lines += [f"| {r['case']} | {dtype} | {r['batch']} | {r['path']} | "
                  f"{r['tile_rows'] or '-'} | {r['ms']:.1f} | "
                  f"{r['cpu_ms']:.1f} | {dense[r['batch']] / r['ms']:.2f}x | "
                  f"{r['bandwidth_gbs']:.1f} | {r['floor_fraction']:.0%} |" for r in d["decode"]]
    lines += ["", "| other | dtype | tokens | ms | cpu ms |", "|---|---|---:|---:|---:|"]
    for dtype, d in result["dtypes"].items():
        for r in [d["swap"], *d["prefill"]]:
            lines.append(f"| {r['case']} | {dtype} | {r.get('tokens', '-')} | {r['ms']:.1f} | "
                         f"{r['cpu_ms']:.1f} |")
    return "\n".join(lines)
