"""Masked Linear kernels: one compiled op serves every language's sub-model from one dense copy.

The C++ extension (masked_linear.cpp; q8_linear.cpp for int8 weights; decode_ops.cpp for a
decode step's attention and RMSNorm) is compiled on first use with torch.utils.cpp_extension and
cached under the user cache dir, keyed by a hash of the sources, torch and Python versions, so an
edit rebuilds and an unchanged tree loads in well under a second. Masks use the store's layout:
uint8 [out, ceil(in/8)], little-endian bits per row, 1 = kept.

The engine runs the path that measured fastest on this machine (`use_fastest_path`, cached),
and so the tile height for batches of 1-2 rows (`use_fastest_tiles`);
`SUBMODEL_KERNEL_PATH=generic|avx2|avx512|avx512bf16` (or `set_kernel_path`) forces a code path.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import sys
import threading
import time
from pathlib import Path
from types import ModuleType

import torch
import torch.nn.functional as F

PATHS = ("generic", "avx2", "avx512", "avx512bf16")
ENV_PATH = "SUBMODEL_KERNEL_PATH"
# From this many tokens on, prefill writes W*M into a scratch buffer and calls torch's GEMM;
# below it, the masked kernel blocked over tokens is faster. The same holds for a decode batch
# of one language (rows = tokens). These defaults were measured on a Xeon with AVX-512 and AMX
# (torch's bf16 GEMM pulls ahead much sooner there); the engine measures the crossover of the
# machine it runs on (`use_measured_gemm_min_rows`), per weight format: on Zen 4 the bf16
# kernel wins up to ~32 rows, the int8 one (which re-widens its codes for every row) to ~8.
PREFILL_GEMM_MIN_TOKENS = {torch.bfloat16: 20, torch.float32: 48}
INT8_GEMM_MIN_ROWS = 8
GEMM_ROWS_TRIED = (4, 8, 16, 24, 32, 48, 64, 96, 128)
_measured_gemm_min_rows: dict[tuple[torch.dtype, bool], int] = {}  # (dtype, int8) -> rows

_SOURCE = Path(__file__).with_name("masked_linear.cpp")
_SOURCES = (_SOURCE, *(_SOURCE.with_name(name)
                       for name in ("q8_linear.cpp", "q8_linear.h", "gemv_output.h",
                                    "decode_ops.cpp", "decode_ops.h")))
Q8_GROUP = 32  # int8 weights: columns sharing one scale (kQ8Group in q8_linear.h)
_lock = threading.Lock()
_ext: ModuleType | None = None
log = logging.getLogger(__name__)


class KernelUnavailableError(RuntimeError):
    """The extension cannot be built or loaded here (no compiler, build failure)."""


def _build_dir() -> tuple[str, Path]:
    import platformdirs

    key = hashlib.sha256(b"".join(p.read_bytes() for p in _SOURCES))
    key.update(f"{torch.__version__}|{sys.version}".encode())
    name = f"submodel_masked_linear_{key.hexdigest()[:16]}"
    root = Path(platformdirs.user_cache_dir("submodel")) / "torch_extensions" / name
    return name, root


def _load() -> ModuleType:
    global _ext
    with _lock:
        if _ext is None:
            ext = _build()
            _force(ext, os.environ.get(ENV_PATH) or None, ENV_PATH)
            _ext = ext
        return _ext


def _build() -> ModuleType:
    from torch.utils import cpp_extension

    compiler = os.environ.get("CXX", "c++")
    if shutil.which(compiler) is None:
        raise KernelUnavailableError(
            f"masked kernels need a C++ compiler ({compiler!r} not found on PATH); "
            "install g++ or set CXX"
        )
    name, root = _build_dir()
    root.mkdir(parents=True, exist_ok=True)
    omp = ["-fopenmp"] if torch.backends.openmp.is_available() else []  # torch's own libgomp
    try:
        return cpp_extension.load(
            name=name,
            sources=[str(p) for p in _SOURCES if p.suffix == ".cpp"],
            build_directory=str(root),
            extra_cflags=["-O3", *omp],
            extra_ldflags=omp,
            verbose=False,
        )
    except Exception as e:  # the compiler output is in the message: keep its first error
        lines = str(e).strip().splitlines() or [type(e).__name__]
        first = next((ln for ln in lines if "error:" in ln), lines[-1])  # the compiler's
        raise KernelUnavailableError(
            f"building the masked kernels failed: {first.strip()} (build dir: {root})"
        ) from e


def _force(ext: ModuleType, path: str | None, what: str) -> None:
    if path is None:
        path = [p for i, p in enumerate(PATHS) if ext.path_supported(i)][-1]
    if path not in PATHS:
        raise ValueError(f"{what}: unknown kernel path {path!r}; expected one of {PATHS}")
    if not ext.path_supported(PATHS.index(path)):
        raise ValueError(f"{what}: kernel path {path!r} is not supported by this CPU")
    ext.set_path(PATHS.index(path))


def set_kernel_path(path: str | None) -> None:
    """Force a code path (`generic`, `avx2`, `avx512`, `avx512bf16`); None picks the best one."""
    _force(_load(), path, "set_kernel_path")


def kernel_path() -> str:
    """The code path the ops use now."""
    return PATHS[_load().get_path()]


def available_paths() -> list[str]:
    """Paths this CPU can run, slowest first."""
    ext = _load()
    return [p for i, p in enumerate(PATHS) if ext.path_supported(i)]


def cpu_model() -> str:
    """The CPU's model name, as /proc/cpuinfo gives it ("unknown" elsewhere)."""
    try:
        with open("/proc/cpuinfo") as f:
            return next((line.split(":", 1)[1].strip() for line in f
                         if line.startswith("model name")), "unknown")
    except OSError:
        return "unknown"


def measure_paths(dtype: torch.dtype, paths: list[str]) -> dict[str, float]:
    """Best seconds of a decode-sized masked GEMV (batch 1, one language, 4 gate/up-shaped
    weights: past the L2 cache, as in a decode step) on each of `paths`."""
    ext = _load()
    gen = torch.Generator().manual_seed(0)
    weights = [torch.randn(4864, 896, generator=gen).to(dtype) for _ in range(4)]
    mask = torch.randint(0, 256, (1, 4864, 112), generator=gen, dtype=torch.uint8)
    x, lang = torch.randn(1, 896, generator=gen).to(dtype), torch.zeros(1, dtype=torch.int32)
    previous, times = ext.get_path(), {}
    try:
        for path in paths:
            ext.set_path(PATHS.index(path))
            best = float("inf")
            for _ in range(5):
                started = time.perf_counter()
                for w in weights:
                    ext.masked_linear(x, w, mask, lang, None)
                best = min(best, time.perf_counter() - started)
            times[path] = best
    finally:
        ext.set_path(previous)
    return times


def _fastest_path_file() -> Path:
    return _build_dir()[1] / "fastest-path.json"


def use_fastest_path(dtype: torch.dtype) -> str:
    """Switch to the path that runs `dtype`'s decode-sized masked GEMV fastest on this machine
    (machines with the same flags differ: Zen 4 splits 512-bit ops, Intel does not). The
    AVX-512 paths are the candidates: the scalar and AVX2 paths are never faster where AVX-512
    runs, and a machine without it has one path to take. Measured once per CPU model, dtype and
    kernel build, then read from a file next to the build; an explicit SUBMODEL_KERNEL_PATH
    wins. Returns the path in use."""
    candidates = [p for p in available_paths() if p.startswith("avx512")]
    if os.environ.get(ENV_PATH) or len(candidates) < 2:
        return kernel_path()
    key = f"{cpu_model()}|{str(dtype).removeprefix('torch.')}"

    def fastest() -> str:
        times = measure_paths(dtype, candidates)
        log.info("kernel paths measured for %s: %s", key, ", ".join(
            f"{p} {t * 1e3:.2f} ms" for p, t in times.items()))
        return min(times, key=times.get)

    path = _measured(key, lambda known: known in candidates, fastest)
    set_kernel_path(path)
    return path


def _measured(key: str, valid, measure):
    """The value measured for `key` on this machine: read from the file next to the kernel
    build, or measured now and written there (atomically) when missing or not `valid`."""
    file = _fastest_path_file()
    try:
        known = json.loads(file.read_text())
    except (OSError, ValueError):
        known = {}
    if not valid(known.get(key)):
        known[key] = measure()
        file.parent.mkdir(parents=True, exist_ok=True)
        tmp = file.with_suffix(f".tmp-{os.getpid()}")
        tmp.write_text(json.dumps(known, indent=1))
        os.replace(tmp, file)
    return known[key]


def set_single_row_tiles(on: bool) -> None:
    """Batches of 1-2 rows in tiles of one output row instead of several."""
    _load().set_single_row_tiles(on)


def single_row_tiles() -> bool:
    return _load().get_single_row_tiles()


def _best_in_turns(runs: dict, turns: int = 5) -> dict:
    """Best seconds of each of `runs` (key -> callable), timed in turn `turns` times: another
    process on the machine slows them alike."""
    best = dict.fromkeys(runs, float("inf"))
    for _ in range(turns):
        for key, run in runs.items():
            started = time.perf_counter()
            run()
            best[key] = min(best[key], time.perf_counter() - started)
    return best


def measure_tiles(dtype: torch.dtype, int8: bool = False) -> dict[bool, float]:
    """Best seconds of a batch-1 masked GEMV over 12 gate/up-shaped weights (past the L3
    cache, as in a decode step), with single-row tiles off and on, timed in turn 5 times (a
    busy machine slows both alike); the bf16/fp32 kernel, or the int8 one over the same
    weights' codes."""
    gen = torch.Generator().manual_seed(0)
    weights = (torch.randn(12 * 4864, 896, generator=gen) * 0.02).to(dtype).split(4864)
    mask = torch.randint(0, 256, (1, 4864, 112), generator=gen, dtype=torch.uint8)
    x, lang = torch.randn(1, 896, generator=gen).to(dtype), torch.zeros(1, dtype=torch.int32)
    if int8:
        codes = [quantize_q8(w) for w in weights]

        def step() -> None:
            for c, s in codes:
                masked_linear_q8(x, c, s, mask, lang)
    else:
        def step() -> None:
            for w in weights:
                masked_linear(x, w, mask, lang)

    def tiled(on: bool):
        def run() -> None:
            set_single_row_tiles(on)
            step()
        return run

    previous = single_row_tiles()
    try:
        return _best_in_turns({False: tiled(False), True: tiled(True)})
    finally:
        set_single_row_tiles(previous)


def use_fastest_tiles(dtype: torch.dtype, int8: bool = False) -> bool:
    """Turn single-row tiles on where they measure faster for the kernel the engine decodes
    with (`dtype`'s, or the int8 one): on Zen 4 they are (one sequential stream of weights per
    thread); the kernels were first tuned with 4-row tiles on a Xeon. Measured once per
    CPU model, dtype, weight format and kernel build, with the kernel path in use, then read
    from the file next to the build as use_fastest_path does. Returns the setting in use."""
    key = (f"{cpu_model()}|{str(dtype).removeprefix('torch.')}|{kernel_path()}|"
           f"{'int8_' if int8 else ''}single_row_tiles")

    def fastest() -> bool:
        times = measure_tiles(dtype, int8)
        log.info("batch-1 tiles measured for %s: 4 rows %.2f ms, 1 row %.2f ms", key,
                 times[False] * 1e3, times[True] * 1e3)
        return times[True] < times[False]

    on = _measured(key, lambda known: isinstance(known, bool), fastest)
    set_single_row_tiles(on)
    return on


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """weight * (x / sqrt(mean(x^2) + eps)) over the last dim, in fp32, rounded to x's dtype
    before the weight multiplies (as the model's torch version): one op instead of eight."""
    return _load().rms_norm(x.contiguous(), weight, eps)


def decode_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, k_cache: torch.Tensor,
                     v_cache: torch.Tensor, slots: torch.Tensor, positions: torch.Tensor,
                     cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """One layer's attention for rows that each add one token: q [B, H*D], k and v [B, G*D]
    as projected; the rotary embedding (cos, sin [B, D]) is applied here, the rotated key and
    the value go into the layer's cache [slots, G, max_len, D] at (slots[b], positions[b]),
    and each row's heads attend to its keys 0..positions[b]. Returns [B, H*D]."""
    return _load().decode_attention(q.contiguous(), k.contiguous(), v.contiguous(), k_cache,
                                    v_cache, slots, positions, cos.contiguous(),
                                    sin.contiguous())


def bf16_dot_attention(dtype: torch.dtype, heads_per_group: int, head_dim: int) -> bool:
    """Whether decode_attention takes caches of this dtype and head shape through VDPBF16PS
    (decode_ops.cpp: bf16 on the avx512bf16 path, head_dim a multiple of 32, at most 8 heads a
    KV group)."""
    return dtype == torch.bfloat16 and _load().decode_attention_bf16_dot(heads_per_group,
                                                                         head_dim)


def cpu_features() -> list[str]:
    """The SIMD features the kernels look for that this CPU has."""
    return list(_load().cpu_features())


def masked_linear(
    x: torch.Tensor,
    weight: torch.Tensor,
    masks: torch.Tensor,
    row_lang: torch.Tensor,
    bias: torch.Tensor | None = None,
) -> torch.Tensor:
    """y[b] = x[b] @ (weight * unpack(masks[row_lang[b]]))^T + bias; row_lang[b] = -1 is dense.

    x [B, in] and weight [out, in] share a dtype (float32 or bfloat16); masks is uint8
    [L, out, ceil(in/8)]; row_lang is int32 [B]. Weight rows are read from memory once per call.
    """
    return _load().masked_linear(x, weight, masks, row_lang, bias)


def apply_mask_into(weight: torch.Tensor, mask: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """Write weight * unpack(mask) into out (same shape and dtype as weight); returns out."""
    return _load().apply_mask_into(weight, mask, out)


def quantize_q8(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Int8 codes [out, in] and fp16 scales [out, in/Q8_GROUP] with weight ~= scale * code:
    per group of Q8_GROUP columns of a row, scale = max|w| / 127 in fp16 (as a GGUF's Q8_0
    blocks hold it), codes rounded to nearest against that scale."""
    out, cols = weight.shape
    if cols % Q8_GROUP:
        raise ValueError(f"int8 weights need in_features divisible by {Q8_GROUP}, got {cols}")
    codes = torch.empty(out, cols, dtype=torch.int8)
    scales = torch.empty(out, cols // Q8_GROUP, dtype=torch.float16)
    for r in range(0, out, 4096):  # in slices: a whole fp32 copy of the LM head is 0.5 GB
        w = weight[r:r + 4096].float().view(-1, cols // Q8_GROUP, Q8_GROUP)
        s = (w.abs().amax(dim=2) / 127).clamp_max_(torch.finfo(torch.float16).max).half()
        scales[r:r + 4096] = s
        codes[r:r + 4096] = (w / s.float().clamp_min(torch.finfo(torch.float32).tiny)[..., None]
                             ).round_().clamp_(-127, 127).view(-1, cols).to(torch.int8)
    return codes, scales


def masked_linear_q8(
    x: torch.Tensor,
    codes: torch.Tensor,
    scales: torch.Tensor,
    masks: torch.Tensor,
    row_lang: torch.Tensor,
    bias: torch.Tensor | None = None,
) -> torch.Tensor:
    """masked_linear with the weight held as int8 codes and per-group scales (quantize_q8);
    y has x's dtype (float32 or bfloat16)."""
    return _load().masked_linear_q8(x, codes, scales, masks, row_lang, bias)


def dequantize_q8_into(codes: torch.Tensor, scales: torch.Tensor, mask: torch.Tensor | None,
                       out: torch.Tensor) -> torch.Tensor:
    """Write scale * code (times the mask's bits, if one is given) into out (float32 or
    bfloat16, codes' shape); returns out."""
    return _load().dequantize_q8_into(codes, scales, mask, out)


def swap_masks_(
    weight: torch.Tensor,
    dense_source: torch.Tensor,
    old_mask: torch.Tensor | None,
    new_mask: torch.Tensor | None,
) -> None:
    """Turn weight = dense * old_mask into dense * new_mask in place (None = dense).

    Writes only where the masks differ: kept-by-new-only positions get dense_source's value,
    kept-by-old-only positions become 0.
    """
    _load().swap_masks_(weight, dense_source, old_mask, new_mask)


def gemm_min_rows(dtype: torch.dtype, int8: bool = False) -> int:
    """From this many rows of one language on, W*M (for int8: the dequantized codes) and
    torch's GEMM beat the masked kernel: measured on this machine once the engine has
    (use_measured_gemm_min_rows), else the defaults."""
    default = INT8_GEMM_MIN_ROWS if int8 else PREFILL_GEMM_MIN_TOKENS.get(dtype, 1)
    return _measured_gemm_min_rows.get((dtype, int8)) or default


def measure_gemm_min_rows(dtype: torch.dtype, int8: bool = False,
                          tried: tuple[int, ...] = GEMM_ROWS_TRIED) -> int:
    """The fewest rows (of `tried`) from which W*M into a scratch buffer plus torch's GEMM is
    faster than the masked kernel over the rows (int8: the int8 kernel against dequantizing
    into the buffer), at that count and the next one, so one noisy timing does not decide; on
    a gate/up-shaped weight with the kernel path in use. The two are timed in turn, 5 times
    each, best kept: another process on the machine slows both alike. One more than the
    largest tried if the kernel wins throughout."""
    gen = torch.Generator().manual_seed(0)
    weight = torch.randn(4864, 896, generator=gen).to(dtype)
    mask = torch.randint(0, 256, (4864, 112), generator=gen, dtype=torch.uint8)
    scratch = torch.empty_like(weight)
    codes, scales = quantize_q8(weight) if int8 else (None, None)

    def kernel(x, lang):
        if int8:
            return masked_linear_q8(x, codes, scales, mask[None], lang)
        return masked_linear(x, weight, mask[None], lang)

    def gemm(x):
        if int8:
            return F.linear(x, dequantize_q8_into(codes, scales, mask, scratch))
        return F.linear(x, apply_mask_into(weight, mask, scratch))

    gemm_wins = []
    for rows in tried:
        x = torch.randn(rows, 896, generator=gen).to(dtype)
        lang = torch.zeros(rows, dtype=torch.int32)
        best = _best_in_turns({"kernel": lambda x=x, lang=lang: kernel(x, lang),
                               "gemm": lambda x=x: gemm(x)})
        gemm_wins.append(best["gemm"] < best["kernel"])
    for i, rows in enumerate(tried):
        if all(gemm_wins[i:i + 2]):
            return rows
    return tried[-1] + 1


def use_measured_gemm_min_rows(dtype: torch.dtype, int8: bool = False) -> int:
    """Measure gemm_min_rows for `dtype` (and the int8 kernel) on this machine, once per CPU
    model, dtype and kernel build, then read from the file next to the build as
    use_fastest_path does, and use it."""
    key = (f"{cpu_model()}|{str(dtype).removeprefix('torch.')}|"
           f"{'int8_' if int8 else ''}gemm_min_rows")

    def crossover() -> int:
        rows = measure_gemm_min_rows(dtype, int8)
        log.info("%s beats the masked kernel from %d rows (%s)",
                 "dequantizing + GEMM" if int8 else "W*M + GEMM", rows, key)
        return rows

    rows = _measured(key, lambda known: isinstance(known, int) and known > 0, crossover)
    _measured_gemm_min_rows[dtype, int8] = rows
    return rows


def masked_linear_prefill(
    x: torch.Tensor,
    weight: torch.Tensor,
    mask: torch.Tensor | None,
    bias: torch.Tensor | None,
    scratch: torch.Tensor,
) -> torch.Tensor:
    """x[T, in] through one language's masked Linear (mask None = dense).

    Few tokens: the masked kernel blocked over tokens. Many: W*M written into `scratch` (a flat
    buffer of at least weight.numel() elements, reused across layers) and torch's GEMM.
    """
    if mask is None:
        return F.linear(x, weight, bias)
    if scratch.dtype != weight.dtype or scratch.numel() < weight.numel():
        raise ValueError(
            f"scratch must be a {weight.dtype} buffer of at least {weight.numel()} elements, "
            f"got {scratch.dtype} with {scratch.numel()}"
        )
    if x.shape[0] < gemm_min_rows(weight.dtype):
        lang = torch.zeros(x.shape[0], dtype=torch.int32)
        return masked_linear(x, weight, mask.unsqueeze(0), lang, bias)
    w = scratch.view(-1)[: weight.numel()].view(weight.shape)
    return F.linear(x, apply_mask_into(weight, mask, w), bias)
