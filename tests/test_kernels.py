"""The masked kernels against torch references, on every code path this CPU can run."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from submodel.server import kernels

PATHS = kernels.available_paths()
SHAPES = [(1, 8), (7, 40), (33, 136), (64, 64), (5, 31), (96, 200)]  # (out, in)


@pytest.fixture(params=PATHS)
def path(request):
    kernels.set_kernel_path(request.param)
    yield request.param
    kernels.set_kernel_path(None)


def random_masks(n: int, out: int, inp: int, gen: torch.Generator) -> tuple[torch.Tensor, ...]:
    """n random 0/1 masks [n, out, in] and their packed form [n, out, ceil(in/8)]."""
    bits = torch.rand(n, out, inp, generator=gen) < 0.5
    return bits, pack(bits)


def pack(bits: torch.Tensor) -> torch.Tensor:
    """Little-endian bit packing along the last axis, as the store writes masks."""
    inp = bits.shape[-1]
    padded = torch.zeros(*bits.shape[:-1], -(-inp // 8) * 8, dtype=torch.uint8)
    padded[..., :inp] = bits
    weights = 2 ** torch.arange(8, dtype=torch.int32)
    grouped = padded.view(*bits.shape[:-1], -1, 8).to(torch.int32)
    return (grouped * weights).sum(-1).to(torch.uint8)


def reference(x, weight, bits, row_lang, bias):
    """x @ (W * M[lang])^T in float64, row by row."""
    w = weight.double()
    rows = []
    for b, lang in enumerate(row_lang.tolist()):
        wm = w if lang < 0 else w * bits[lang].double()
        rows.append(x[b].double() @ wm.T)
    y = torch.stack(rows)
    return y + bias.double() if bias is not None else y


# int8 weights: the kernel codes x as int8 per group of 32 (here up to 0.16 off, against outputs of
# ~8); a row given another language's mask would be off by units
Q8_TOLERANCE = {"atol": 0.25, "rtol": 2e-2}


def tolerance(dtype):
    return {"atol": 2e-2, "rtol": 2e-2} if dtype == torch.bfloat16 else {"atol": 1e-4, "rtol": 1e-4}


def test_pack_matches_store_layout():
    bits = torch.tensor([[1, 0, 0, 0, 0, 0, 0, 0, 0, 1]], dtype=torch.bool)
    assert pack(bits).tolist() == [[1, 2]]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("out,inp", SHAPES)
def test_masked_linear_mixed_batch(path, dtype, out, inp):
    gen = torch.Generator().manual_seed(out * 1000 + inp)
    bits, packed = random_masks(4, out, inp, gen)
    weight = torch.randn(out, inp, generator=gen).to(dtype)
    for batch in (1, 3, 12):
        x = torch.randn(batch, inp, generator=gen).to(dtype)
        row_lang = torch.randint(-1, 4, (batch,), generator=gen, dtype=torch.int32)
        bias = torch.randn(out, generator=gen).to(dtype) if batch != 3 else None
        y = kernels.masked_linear(x, weight, packed, row_lang, bias)
        assert y.dtype == dtype and y.shape == (batch, out)
        ref = reference(x, weight, bits, row_lang, bias)
        torch.testing.assert_close(y.double(), ref, **tolerance(dtype))


def test_masked_linear_every_language_and_dense_in_one_batch(path):
    gen = torch.Generator().manual_seed(1)
    out, inp = 48, 72
    bits, packed = random_masks(4, out, inp, gen)
    weight = torch.randn(out, inp, generator=gen)
    x = torch.randn(1, inp, generator=gen).expand(5, inp).contiguous()
    row_lang = torch.tensor([3, -1, 0, 2, 1], dtype=torch.int32)
    y = kernels.masked_linear(x, weight, packed, row_lang)
    ref = reference(x, weight, bits, row_lang, None)
    torch.testing.assert_close(y.double(), ref, **tolerance(torch.float32))
    assert len({tuple(r) for r in y.tolist()}) == 5  # same input, five different sub-models


def test_masked_linear_ignores_bits_past_the_last_column(path):
    gen = torch.Generator().manual_seed(2)
    weight = torch.randn(3, 13, generator=gen)
    x = torch.randn(2, 13, generator=gen)
    packed = torch.full((1, 3, 2), 0xFF, dtype=torch.uint8)  # padding bits set too
    y = kernels.masked_linear(x, weight, packed, torch.zeros(2, dtype=torch.int32))
    torch.testing.assert_close(y, x @ weight.T)


def test_masked_linear_rejects_bad_input():
    weight = torch.randn(4, 16)
    masks = torch.zeros(2, 4, 2, dtype=torch.uint8)
    x = torch.randn(1, 16)
    with pytest.raises(RuntimeError, match="row_lang\\[0\\] = 2 is outside"):
        kernels.masked_linear(x, weight, masks, torch.tensor([2], dtype=torch.int32))
    with pytest.raises(RuntimeError, match="masks must be"):
        kernels.masked_linear(x, weight, masks[:, :, :1], torch.tensor([0], dtype=torch.int32))
    with pytest.raises(RuntimeError, match="x must be"):
        kernels.masked_linear(x.bfloat16(), weight, masks, torch.tensor([0], dtype=torch.int32))
    with pytest.raises(ValueError, match="unknown kernel path"):
        kernels.set_kernel_path("neon")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("out,inp", SHAPES)
def test_apply_mask_into(path, dtype, out, inp):
    gen = torch.Generator().manual_seed(3)
    bits, packed = random_masks(1, out, inp, gen)
    weight = torch.randn(out, inp, generator=gen).to(dtype)
    scratch = torch.full((out, inp), 7.0, dtype=dtype)
    kernels.apply_mask_into(weight, packed[0], scratch)
    assert torch.equal(scratch, weight * bits[0])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("tokens", [3, 100])  # below and above both dtypes' GEMM thresholds
def test_prefill_matches_reference(path, dtype, tokens):
    gen = torch.Generator().manual_seed(4)
    bits, packed = random_masks(1, 24, 40, gen)
    weight = torch.randn(24, 40, generator=gen).to(dtype)
    bias = torch.randn(24, generator=gen).to(dtype)
    x = torch.randn(tokens, 40, generator=gen).to(dtype)
    scratch = torch.empty(2000, dtype=dtype)
    y = kernels.masked_linear_prefill(x, weight, packed[0], bias, scratch)
    ref = reference(x, weight, bits, torch.zeros(tokens, dtype=torch.int32), bias)
    torch.testing.assert_close(y.double(), ref, **tolerance(dtype))
    dense = kernels.masked_linear_prefill(x, weight, None, bias, scratch)
    torch.testing.assert_close(dense, torch.nn.functional.linear(x, weight, bias))
    with pytest.raises(ValueError, match="scratch must be"):
        kernels.masked_linear_prefill(x, weight, packed[0], bias, scratch[:10])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_swap_masks_round_trips_bit_identically(path, dtype):
    gen = torch.Generator().manual_seed(5)
    out, inp = 37, 136
    bits, packed = random_masks(4, out, inp, gen)
    dense = torch.randn(out, inp, generator=gen).to(dtype)
    weight = dense.clone()
    ints = torch.int16 if dtype == torch.bfloat16 else torch.int32
    current = None  # dense
    for _ in range(200):
        nxt = int(torch.randint(-1, 4, (1,), generator=gen))
        new = None if nxt < 0 else packed[nxt]
        kernels.swap_masks_(weight, dense, None if current is None else packed[current], new)
        current = None if nxt < 0 else nxt
        expected = dense if current is None else torch.where(bits[current], dense, 0)
        assert torch.equal(weight.view(ints), expected.view(ints))  # bit-identical, +0.0
    kernels.swap_masks_(weight, dense, None if current is None else packed[current], None)
    assert torch.equal(weight.view(ints), dense.view(ints))


def test_swap_masks_writes_only_where_masks_differ(path):
    dense = torch.ones(2, 16)
    weight = torch.full((2, 16), 5.0)  # not dense*mask anywhere: shows which positions are written
    old = torch.tensor([[0b00001111, 0], [0xFF, 0xFF]], dtype=torch.uint8)
    new = torch.tensor([[0b00110011, 0], [0xFF, 0xFF]], dtype=torch.uint8)
    kernels.swap_masks_(weight, dense, old, new)
    assert weight[0, :8].tolist() == [5, 5, 0, 0, 1, 1, 5, 5]
    assert (weight[0, 8:] == 5).all() and (weight[1] == 5).all()


def test_results_do_not_depend_on_thread_count():
    gen = torch.Generator().manual_seed(6)
    _, packed = random_masks(4, 301, 136, gen)
    weight = torch.randn(301, 136, generator=gen)
    x = torch.randn(6, 136, generator=gen)
    row_lang = torch.tensor([0, 1, -1, 2, 3, 0], dtype=torch.int32)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = kernels.masked_linear(x, weight, packed, row_lang)
        torch.set_num_threads(2)
        two = kernels.masked_linear(x, weight, packed, row_lang)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(one, two)


def test_env_var_forces_a_path():
    code = "from submodel.server import kernels; print(kernels.kernel_path())"
    env = dict(os.environ, SUBMODEL_KERNEL_PATH="generic")
    run = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert run.stdout.strip() == "generic", run.stderr


def test_missing_compiler_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(kernels, "_ext", None)
    monkeypatch.setenv("CXX", "/nonexistent/c++")
    with pytest.raises(kernels.KernelUnavailableError, match="need a C\\+\\+ compiler"):
        kernels.kernel_path()


class OneLinear(torch.nn.Module):
    """The least a strategy installs into: one prunable Linear `w` and an LM head."""

    def __init__(self, weight: torch.Tensor, lm_head: torch.Tensor) -> None:
        from submodel.server.model import Linear

        super().__init__()
        self.w = Linear(weight)
        self.lm_head = Linear(lm_head)

    def prunable(self) -> dict:
        return {"w": self.w}

    def siblings(self) -> dict:
        return {}

    def replace(self, name: str, module: torch.nn.Module) -> None:
        setattr(self, name, module)


@pytest.mark.parametrize("weights", ["full", "int8"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fused_decode_plan_matches_reference(dtype, weights):
    """A decode batch where one language has enough rows for the GEMM route, others go through
    the GEMV kernel, and the LM head too: every row still gets its own language's weights
    (with int8 weights: the dequantized ones), and a prefill of each language as well."""
    from submodel.server.masking import make_strategy

    gen = torch.Generator().manual_seed(5)
    out, inp, langs = 24, 64, ["cpp", "java", "python"]
    bits, packed = random_masks(3, out, inp, gen)
    weight = torch.randn(out, inp, generator=gen).to(dtype)
    lm_head = torch.randn(30, inp, generator=gen).to(dtype)
    masks = {lang: {"w.weight": packed[k]} for k, lang in enumerate(langs)}
    model = OneLinear(weight, lm_head)
    strategy = make_strategy("fused", model, masks, None, weights)
    tol = tolerance(dtype)
    if weights == "int8":  # the reference computes with the values int8 holds
        weight, lm_head = (dequantized(*kernels.quantize_q8(w)) for w in (weight, lm_head))
        tol = Q8_TOLERANCE
    many = kernels.gemm_min_rows(dtype, weights == "int8")
    for rows in (["java"] * many + ["cpp", "dense", "python"], ["python"] * many,
                 ["dense"] * many + ["java"] * many, ["cpp", "dense"]):
        strategy.set_rows(rows, prefill=False)
        x = torch.randn(len(rows), 1, inp, generator=gen).to(dtype)
        y = model.w(x)
        row_lang = torch.tensor([langs.index(r) if r != "dense" else -1 for r in rows])
        ref = reference(x[:, 0], weight, bits, row_lang, None)
        torch.testing.assert_close(y[:, 0].double(), ref, **tol)
        head = model.lm_head(x)
        torch.testing.assert_close(head[:, 0].double(), x[:, 0].double() @ lm_head.double().T,
                                   **tol)
    for rows in (3, many + 5):  # prefill: the GEMV kernel, then W*M and torch's GEMM
        for lang in ["dense", *langs]:
            strategy.set_rows([lang], prefill=True)
            x = torch.randn(1, rows, inp, generator=gen).to(dtype)
            row_lang = torch.full((rows,), langs.index(lang) if lang != "dense" else -1)
            ref = reference(x[0], weight, bits, row_lang, None)
            torch.testing.assert_close(model.w(x)[0].double(), ref, **tol)


def test_fused_strategy_without_languages_serves_dense():
    from submodel.server.masking import make_strategy

    gen = torch.Generator().manual_seed(6)
    weight = torch.randn(24, 40, generator=gen)
    model = OneLinear(weight, torch.randn(30, 40))
    strategy = make_strategy("fused", model, {}, None)
    for rows in (1, 60):  # the GEMV kernel and the GEMM route
        strategy.set_rows(["dense"] * rows, prefill=False)
        x = torch.randn(rows, 1, 40, generator=gen)
        y = model.w(x)
        torch.testing.assert_close(y, torch.nn.functional.linear(x, weight), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("row_lang", [[0, 1] * 8, [-1, 2] * 4, [0, 1, 2, 3] * 2, [3, -1, 1],
                                     [0, 1, 2, 3, -1] * 2, [2, 2, -1, -1, 0, 0],
                                     [0, 1, 1, 2, 2, 2, 3]])
def test_masked_linear_group_shapes(path, dtype, row_lang):
    """Few large language groups and many small ones take different routes through the kernel."""
    gen = torch.Generator().manual_seed(7)
    bits, packed = random_masks(4, 37, 70, gen)
    weight = torch.randn(37, 70, generator=gen).to(dtype)
    row_lang = torch.tensor(row_lang, dtype=torch.int32)
    x = torch.randn(len(row_lang), 70, generator=gen).to(dtype)
    y = kernels.masked_linear(x, weight, packed, row_lang)
    torch.testing.assert_close(y.double(), reference(x, weight, bits, row_lang, None),
                               **tolerance(dtype))


# ---- int8 weights ------------------------------------------------------------------------------

# in: multiples of the 32-column group; the AVX-512 tile takes scales in blocks of 8 pairs of
# groups: 1088 columns are 2 whole blocks and a pair, 544 a whole block and an odd last group
Q8_SHAPES = [(1, 32), (7, 64), (33, 96), (64, 160), (9, 1088), (5, 544)]


def dequantized(codes: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    out, inp = codes.shape
    return (codes.double().view(out, -1, 32) * scales.double()[..., None]).view(out, inp)


def test_quantize_q8_rounds_each_group_to_its_own_scale():
    gen = torch.Generator().manual_seed(11)
    weight = torch.randn(5, 96, generator=gen)
    weight[1, 32:64] = 0  # an all-zero group: scale 0, codes 0
    weight[2, :32] *= 1000  # a group far larger than the others keeps them precise
    codes, scales = kernels.quantize_q8(weight)
    assert codes.dtype == torch.int8 and scales.dtype == torch.float16 and scales.shape == (5, 3)
    assert codes.abs().max() == 127 and scales[1, 1] == 0 and not codes[1, 32:64].any()
    error = (dequantized(codes, scales) - weight.double()).abs().view(5, 3, 32)
    assert (error <= scales.double()[..., None] / 2 + 1e-9).all()
    with pytest.raises(ValueError, match="divisible by 32"):
        kernels.quantize_q8(torch.randn(4, 40))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("out,inp", Q8_SHAPES)
def test_masked_linear_q8_mixed_batch(path, dtype, out, inp):
    gen = torch.Generator().manual_seed(out * inp)
    codes, scales = kernels.quantize_q8(torch.randn(out, inp, generator=gen))
    bits, packed = random_masks(3, out, inp, gen)
    # up to 4 batch rows: tiles of 4; more: tiles of up to 8, a tile of one mask masking the
    # weights once per output row (the last case: 8 mixed rows, then 5 of one mask)
    for row_lang in ([0], [-1], [2, -1, 0, 1, 1], [1, 0, 2, -1, 2, 0, 1, -1, 0], [1, 1, 1, 1],
                     [0, 2, 2, 2, 2, 2], [-1, -1, -1], [2] * 7, [-1] * 5, [1] * 11,
                     [0, 1, 2, -1, 0, 1, 2, -1, 2, 2, 2, 2, 2]):
        lang = torch.tensor(row_lang, dtype=torch.int32)
        x = torch.randn(len(row_lang), inp, generator=gen)
        x[:, 3] *= 50  # an outlier column, as activations have
        bias = torch.randn(out, generator=gen)
        y = kernels.masked_linear_q8(x.to(dtype), codes, scales, packed, lang, bias.to(dtype))
        assert y.dtype == dtype and y.shape == (len(row_lang), out)
        ref = reference(x.to(dtype), dequantized(codes, scales), bits, lang, bias.to(dtype))
        if dtype == torch.bfloat16 and len(row_lang) > 1:
            # several bf16 rows take the weights rounded to bf16 (half an ulp, 2^-9 relative,
            # per product) and y is rounded to bf16: bound both, with a margin
            products = x.to(dtype).double().abs() @ dequantized(codes, scales).double().abs().T
            bound = (products + ref.abs()) * 2**-8 + 1e-6
            assert ((y.double() - ref).abs() <= bound).all()
            continue
        # fp32, or one bf16 row: the AVX-512 path codes x as int8 per group of 32, half a step
        # (group max / 127) each; the scalar one computes in fp32; bf16's y is rounded
        half_step = x.to(dtype).double().abs().view(len(row_lang), -1, 32).amax(-1) / 127 / 2
        w = dequantized(codes, scales).abs().view(out, -1, 32).sum(-1)  # [out, groups]
        bound = half_step @ w.T + (ref.abs() * 2**-8 if dtype == torch.bfloat16 else 0)
        assert ((y.double() - ref).abs() <= bound * 1.001 + 1e-5).all()
        if path.startswith("avx512") and len(row_lang) == 1:  # not loose: x is coded
            assert (y.double() - ref).abs().max() > bound.max() / 1000


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_dequantize_q8_into_is_exact(path, dtype):
    gen = torch.Generator().manual_seed(12)
    codes, scales = kernels.quantize_q8(torch.randn(33, 96, generator=gen))
    bits, packed = random_masks(1, 33, 96, gen)
    want = codes.float() * scales.repeat_interleave(32, dim=1)
    out = torch.empty(33, 96, dtype=dtype)
    assert torch.equal(kernels.dequantize_q8_into(codes, scales, packed[0], out),
                       (want * bits[0]).to(dtype))
    assert torch.equal(kernels.dequantize_q8_into(codes, scales, None, out), want.to(dtype))


def test_q8_ops_reject_bad_input():
    codes, scales = kernels.quantize_q8(torch.randn(8, 64))
    masks = torch.zeros(1, 8, 8, dtype=torch.uint8)
    lang = torch.zeros(1, dtype=torch.int32)
    with pytest.raises(RuntimeError, match="x must be"):
        kernels.masked_linear_q8(torch.randn(1, 32), codes, scales, masks, lang)
    with pytest.raises(RuntimeError, match="scales must be"):
        kernels.masked_linear_q8(torch.randn(1, 64), codes, scales[:, :1].contiguous(), masks,
                                 lang)
    with pytest.raises(RuntimeError, match="outside"):
        kernels.masked_linear_q8(torch.randn(1, 64), codes, scales, masks,
                                 torch.ones(1, dtype=torch.int32))
    with pytest.raises(RuntimeError, match="codes must be"):
        kernels.dequantize_q8_into(codes.float(), scales, None, torch.empty(8, 64))


def test_int8_tied_head_serves_the_embeddings_from_its_codes():
    """A tied model: the int8 head's codes also give the embedding rows, and the full table is
    no longer held by the model."""
    from submodel.server.masking import make_strategy
    from submodel.server.model import Embedding, Linear

    class Tied(torch.nn.Module):
        def __init__(self, table: torch.Tensor) -> None:
            super().__init__()
            self.model = torch.nn.Module()
            self.model.embed_tokens = Embedding(table)
            self.lm_head = Linear(table)

        def prunable(self) -> dict:
            return {}

        def siblings(self) -> dict:
            return {}

    table = torch.randn(50, 64, generator=torch.Generator().manual_seed(13)).bfloat16()
    model = Tied(table)
    make_strategy("fused", model, {}, None, "int8")
    tokens = torch.tensor([[3, 49, 0, 3]])
    want = dequantized(*kernels.quantize_q8(table))[tokens].to(torch.bfloat16)
    assert torch.equal(model.model.embed_tokens(tokens), want)
    assert not any(v is table for m in model.modules() for v in vars(m).values())
    assert model.lm_head(torch.ones(1, 64, dtype=torch.bfloat16)).shape == (1, 50)


def test_engine_path_is_the_fastest_measured_and_cached(monkeypatch, tmp_path):
    candidates = [p for p in PATHS if p.startswith("avx512")]
    if len(candidates) < 2:
        pytest.skip("one AVX-512 path or none here: nothing to choose between")
    monkeypatch.delenv(kernels.ENV_PATH, raising=False)
    monkeypatch.setattr(kernels, "_fastest_path_file", lambda: tmp_path / "fastest.json")
    calls = []

    def measured(dtype, paths):  # the first candidate (fewer CPU features) is faster here
        calls.append((dtype, paths))
        return {p: 1.0 + i for i, p in enumerate(paths)}

    monkeypatch.setattr(kernels, "measure_paths", measured)
    try:
        assert kernels.use_fastest_path(torch.bfloat16) == candidates[0] == kernels.kernel_path()
        assert kernels.use_fastest_path(torch.bfloat16) == candidates[0] and len(calls) == 1
        kernels.use_fastest_path(torch.float32)
        assert calls == [(torch.bfloat16, candidates), (torch.float32, candidates)]
        monkeypatch.setenv(kernels.ENV_PATH, PATHS[-1])  # an explicit choice is left alone
        kernels.set_kernel_path(PATHS[-1])
        (tmp_path / "fastest.json").unlink()
        assert kernels.use_fastest_path(torch.bfloat16) == PATHS[-1] and len(calls) == 2
    finally:
        kernels.set_kernel_path(None)


def test_measure_paths_times_each_path_and_restores_the_current_one():
    times = kernels.measure_paths(torch.bfloat16, PATHS)
    assert set(times) == set(PATHS) and all(t > 0 for t in times.values())
    assert kernels.kernel_path() == PATHS[-1]


@pytest.fixture
def single_row_tiles():
    """Restores the tile setting a test changes."""
    before = kernels.single_row_tiles()
    yield
    kernels.set_single_row_tiles(before)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_single_row_tiles_give_the_same_numbers(path, dtype, single_row_tiles):
    """One output row a tile (batches of 1-2 rows, of one language or two) sums each row in
    the same order as the wider tiles do, so the results are bit-identical whichever the engine
    picks."""
    gen = torch.Generator().manual_seed(5)
    for out, inp in SHAPES:
        bits, packed = random_masks(2, out, inp, gen)
        weight = torch.randn(out, inp, generator=gen).to(dtype)
        for row_lang in ([0], [-1], [1, 1], [0, -1], [1, 0], [1, 0, 1]):
            lang = torch.tensor(row_lang, dtype=torch.int32)
            x = torch.randn(len(row_lang), inp, generator=gen).to(dtype)
            y = {}
            for on in (False, True):
                kernels.set_single_row_tiles(on)
                y[on] = kernels.masked_linear(x, weight, packed, lang)
            assert torch.equal(y[True], y[False]), (out, inp, row_lang)
            ref = reference(x, weight, bits, lang, None)
            torch.testing.assert_close(y[True].double(), ref, **tolerance(dtype))
    for out, inp in Q8_SHAPES + [(37, 64)]:
        codes, scales = kernels.quantize_q8(torch.randn(out, inp, generator=gen))
        _, packed = random_masks(2, out, inp, gen)
        for row_lang in ([0], [1, 1], [0, 1], [-1, 0, 1]):
            lang = torch.tensor(row_lang, dtype=torch.int32)
            x = torch.randn(len(row_lang), inp, generator=gen).to(dtype)
            y = {}
            for on in (False, True):
                kernels.set_single_row_tiles(on)
                y[on] = kernels.masked_linear_q8(x, codes, scales, packed, lang)
            assert torch.equal(y[True], y[False]), (out, inp, row_lang)


def test_tiles_are_measured_once_per_kernel_and_cached(monkeypatch, tmp_path, single_row_tiles):
    monkeypatch.setattr(kernels, "_fastest_path_file", lambda: tmp_path / "fastest.json")
    calls = []

    def measured(dtype, int8=False):  # single-row tiles win for the int8 kernel only
        calls.append((dtype, int8))
        return {False: 1.0, True: 0.5 if int8 else 2.0}

    monkeypatch.setattr(kernels, "measure_tiles", measured)
    bf16 = torch.bfloat16
    assert kernels.use_fastest_tiles(bf16) is False and kernels.single_row_tiles() is False
    assert kernels.use_fastest_tiles(bf16, int8=True) is True and kernels.single_row_tiles()
    assert kernels.use_fastest_tiles(bf16) is False and kernels.single_row_tiles() is False
    assert kernels.use_fastest_tiles(bf16, int8=True) is True
    assert calls == [(bf16, False), (bf16, True)]  # the later calls read the file


@pytest.mark.parametrize("int8", [False, True])
def test_measure_tiles_times_both_and_restores_the_setting(int8, single_row_tiles):
    kernels.set_single_row_tiles(True)
    times = kernels.measure_tiles(torch.bfloat16, int8)
    assert set(times) == {False, True} and all(t > 0 for t in times.values())
    assert kernels.single_row_tiles() is True


def test_gemm_min_rows_is_measured_once_and_cached(monkeypatch, tmp_path):
    monkeypatch.setattr(kernels, "_fastest_path_file", lambda: tmp_path / "fastest.json")
    monkeypatch.setattr(kernels, "_measured_gemm_min_rows", {})
    calls = []

    def measured(dtype, int8=False):
        calls.append((dtype, int8))
        return 12 if int8 else 40

    monkeypatch.setattr(kernels, "measure_gemm_min_rows", measured)
    bf16 = torch.bfloat16
    assert kernels.gemm_min_rows(bf16) == kernels.PREFILL_GEMM_MIN_TOKENS[bf16]
    assert kernels.gemm_min_rows(bf16, int8=True) == kernels.INT8_GEMM_MIN_ROWS
    assert kernels.use_measured_gemm_min_rows(bf16) == 40
    assert kernels.use_measured_gemm_min_rows(bf16, int8=True) == 12
    assert kernels.gemm_min_rows(bf16) == 40 and kernels.gemm_min_rows(bf16, int8=True) == 12
    assert kernels.gemm_min_rows(torch.float32) == kernels.PREFILL_GEMM_MIN_TOKENS[torch.float32]
    monkeypatch.setattr(kernels, "_measured_gemm_min_rows", {})
    assert kernels.use_measured_gemm_min_rows(bf16) == 40
    assert kernels.use_measured_gemm_min_rows(bf16, int8=True) == 12
    assert calls == [(bf16, False), (bf16, True)]  # the second round read the file


@pytest.mark.parametrize("int8", [False, True])
def test_measure_gemm_min_rows_gives_a_tried_count_or_one_past_them(int8):
    rows = kernels.measure_gemm_min_rows(torch.bfloat16, int8, tried=(8, 256))
    assert rows in (8, 256, 257)


def reference_decode_attention(q, k, v, k_cache, v_cache, slots, positions, cos, sin):
    """The model's torch steps: rotate q and k, write k and v into the caches (in place), each
    row attends to its keys 0..position in fp32."""
    from submodel.server.model import rotate

    b, g, d = k.shape[0], k_cache.shape[1], k_cache.shape[3]
    h = q.shape[1] // d
    c, s = cos.view(b, 1, 1, d), sin.view(b, 1, 1, d)
    q = rotate(q.view(b, 1, h, d).transpose(1, 2), c, s)
    k = rotate(k.view(b, 1, g, d).transpose(1, 2), c, s)
    k_cache[slots, :, positions] = k[:, :, 0]
    v_cache[slots, :, positions] = v.view(b, g, d)
    out = []
    for row in range(b):
        keys = k_cache[slots[row], :, : positions[row] + 1].float()
        values = v_cache[slots[row], :, : positions[row] + 1].float()
        out.append(F.scaled_dot_product_attention(q[row : row + 1].float(), keys[None],
                                                  values[None], enable_gqa=True))
    return torch.cat(out).view(b, h * d)


@pytest.mark.parametrize("path", [PATHS[0], PATHS[-1]])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("dim", [16, 64, 10])  # 10: not a multiple of 16, the scalar loop
@pytest.mark.parametrize("heads", [6, 14])  # 14: 7 a group, as the default model
def test_decode_attention_matches_the_models_torch_steps(path, dtype, dim, heads):
    """Every path against the model's torch steps (bf16 with AVX512_BF16 and head sizes of a
    multiple of 32 takes the scores 16 keys at a time: whole blocks and a last partial one)."""
    gen = torch.Generator().manual_seed(dim)
    rows, groups, slots_total, max_len = 3, 2, 5, 80
    k_cache = torch.randn(slots_total, groups, max_len, dim, generator=gen).to(dtype)
    v_cache = torch.randn(slots_total, groups, max_len, dim, generator=gen).to(dtype)
    slots, positions = torch.tensor([4, 0, 2]), torch.tensor([70, 0, 15])
    q = torch.randn(rows, heads * dim, generator=gen).to(dtype)
    k, v = (torch.randn(rows, groups * dim, generator=gen).to(dtype) for _ in range(2))
    angles = torch.rand(rows, dim, generator=gen) * 6
    cos, sin = angles.cos().to(dtype), angles.sin().to(dtype)
    want_k, want_v = k_cache.clone(), v_cache.clone()
    want = reference_decode_attention(q, k, v, want_k, want_v, slots, positions, cos, sin)
    kernels.set_kernel_path(path)
    try:
        got = kernels.decode_attention(q, k, v, k_cache, v_cache, slots, positions, cos, sin)
    finally:
        kernels.set_kernel_path(None)
    tol = 1e-5 if dtype == torch.float32 else 1e-2
    assert got.dtype == dtype and got.shape == (rows, heads * dim)
    torch.testing.assert_close(k_cache, want_k, atol=tol, rtol=tol)
    assert torch.equal(v_cache, want_v)
    torch.testing.assert_close(got.float(), want, atol=tol, rtol=tol)


def test_bf16_dot_attention_is_said_for_the_shapes_decode_ops_takes_through_it():
    on = kernels.kernel_path() == "avx512bf16"
    assert kernels.bf16_dot_attention(torch.bfloat16, 7, 64) == on
    assert kernels.bf16_dot_attention(torch.bfloat16, 8, 128) == on
    assert not kernels.bf16_dot_attention(torch.bfloat16, 9, 64)  # more heads than registers
    assert not kernels.bf16_dot_attention(torch.bfloat16, 7, 16)  # not whole 32-dim blocks
    assert not kernels.bf16_dot_attention(torch.float32, 7, 64)


def test_decode_attention_rejects_a_position_outside_the_cache():
    cache = torch.zeros(2, 1, 4, 8)
    args = (torch.zeros(1, 8), torch.zeros(1, 8), torch.zeros(1, 8), cache, cache.clone(),
            torch.tensor([1]), torch.tensor([4]), torch.ones(1, 8), torch.zeros(1, 8))
    with pytest.raises(RuntimeError, match="outside the cache"):
        kernels.decode_attention(*args)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_rms_norm_matches_the_models_torch_steps(dtype):
    gen = torch.Generator().manual_seed(0)
    x = (torch.randn(3, 5, 96, generator=gen) * 4).to(dtype)
    weight = torch.randn(96, generator=gen).to(dtype)
    h = x.float()
    want = weight * (h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + 1e-6)).to(dtype)
    got = kernels.rms_norm(x, weight, 1e-6)
    assert got.dtype == dtype
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5 if dtype == torch.float32 else 1e-2)


THP_MODE = Path("/sys/kernel/mm/transparent_hugepage/enabled")


@pytest.mark.skipif(not THP_MODE.exists() or "[never]" in THP_MODE.read_text(),
                    reason="no transparent huge pages here")
def test_cli_processes_ask_for_huge_pages_for_large_tensors():
    """The console script turns on torch's THP allocation before torch allocates: a large
    tensor's mapping is then eligible for 2 MiB pages, where the kernel's mode is madvise."""
    script = """
import sys
if sys.argv[1] == "cli":
    from submodel import cli
    try:
        cli.main(["--help"])
    except SystemExit:
        pass
import torch
t = torch.ones(64 << 20, dtype=torch.uint8)
inside = False
for line in open("/proc/self/smaps"):
    head = line.split()[0]
    if "-" in head and not head.endswith(":"):
        lo, hi = (int(a, 16) for a in head.split("-"))
        inside = lo <= t.data_ptr() < hi
    elif inside and head == "THPeligible:":
        print(line.split()[1])
"""
    env = {k: v for k, v in os.environ.items() if k != "THP_MEM_ALLOC_ENABLE"}
    eligible = {how: subprocess.run([sys.executable, "-c", script, how], env=env, check=True,
                                    capture_output=True, text=True).stdout.split()[-1]
                for how in ("cli", "plain")}
    assert eligible["cli"] == "1"
    if "[madvise]" in THP_MODE.read_text():
        assert eligible["plain"] == "0"
