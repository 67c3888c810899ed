"""How a language's mask reaches the matmuls. A strategy replaces every prunable Linear of the
model (and the LM head, never masked) with a Linear of its own kind, and `set_rows` says,
once per forward, which language each batch row uses. Three strategies:

- swap:     the live weights carry the active language's mask; a switch restores the values
            the old mask zeroed (from the store's dense file, via the page cache) and zeroes
            the new mask's, touching only positions where the two differ. One language per
            batch.
- fused:    the kernel reads each weight tile once with every row's own mask bits, so one
            decode step can mix languages. No masked copy is ever kept.
- replicas: one materialized masked copy per language (the naive baseline; bench only).

All three send decode-time matmuls through the same GEMV kernel, so they differ only in how
masks are applied. A batch is memory-bound up to about kernels.gemm_min_rows rows; past that,
one language's rows go through W*M in a reused scratch buffer and torch's GEMM.

Fused can also hold the weights as int8 (`weights="int8"`: codes and a scale per 32 columns, made
from the store's weights at load; the LM head too): a decode step then reads a bit over half the
bytes, at the cost of that rounding (`submodel bench kernels` times both). `weights="gguf"` takes
the codes and scales of the base GGUF's own Q5_0 and Q8_0 blocks where it has them (exactly its
values, gguf_blocks.py) and rounds the rest as int8 does.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from submodel.server import kernels
from submodel.server.dense_source import mapped_tensors
from submodel.server.model import Linear, Transformer
from submodel.vocabulary import DENSE, STRATEGIES, WEIGHT_FORMATS

Masks = dict[str, dict[str, torch.Tensor]]  # language -> weight name -> packed [out, in/8]


@dataclass
class Rows:
    """The languages of the next forward's rows, shared by every Linear of a strategy.
    `index` holds each row's place in the strategy's language list (-1 = dense)."""

    languages: list[str] = field(default_factory=lambda: [DENSE])
    index: torch.Tensor = field(default_factory=lambda: torch.full((1,), -1, dtype=torch.int32))
    prefill: bool = True
    gemm_groups: list[tuple[int, torch.Tensor]] = field(default_factory=list)  # fused only
    gemv_rows: torch.Tensor = field(default_factory=lambda: torch.empty(0, dtype=torch.long))


def _no_masks(weight: torch.Tensor) -> torch.Tensor:
    """An empty mask stack: the kernel's dense-only call."""
    return torch.empty(0, weight.shape[0], (weight.shape[1] + 7) // 8, dtype=torch.uint8)


def dense_gemv(x: torch.Tensor, weight: torch.Tensor, no_masks: torch.Tensor,
               bias: torch.Tensor | None) -> torch.Tensor:
    """The masked kernel with every row dense: faster than torch's GEMV at decode sizes,
    slower than torch's GEMM once a batch has enough rows."""
    rows = x.reshape(-1, x.shape[-1])
    if rows.shape[0] >= kernels.gemm_min_rows(weight.dtype):
        return F.linear(x, weight, bias)
    dense_rows = torch.full((rows.shape[0],), -1, dtype=torch.int32)
    out = kernels.masked_linear(rows, weight, no_masks, dense_rows, bias)
    return out.view(*x.shape[:-1], -1)


class HeadLinear(Linear):
    """The LM head: dense, through the kernel at decode sizes."""

    def __init__(self, weight: torch.Tensor) -> None:
        super().__init__(weight)
        self.no_masks = _no_masks(weight)

    def forward(self, x):
        return dense_gemv(x, self.weight, self.no_masks, None)


class Int8HeadLinear(Linear):
    """The LM head as int8 codes and scales (the embedding table stays as it was): the kernel
    for every batch size, as the head only ever sees one position per sequence."""

    def __init__(self, weight: torch.Tensor,
                 codes_scales: tuple[torch.Tensor, torch.Tensor] | None = None) -> None:
        super().__init__(None)
        self.codes, self.scales = codes_scales or kernels.quantize_q8(weight)
        self.no_masks = _no_masks(self.codes)

    def forward(self, x):
        rows = x.reshape(-1, x.shape[-1])
        dense_rows = torch.full((rows.shape[0],), -1, dtype=torch.int32)
        out = kernels.masked_linear_q8(rows, self.codes, self.scales, self.no_masks, dense_rows)
        return out.view(*x.shape[:-1], -1)


class Int8Embedding(nn.Module):
    """A tied embedding table read from the int8 LM head's codes and scales, so the full table
    need not be kept next to them."""

    def __init__(self, codes: torch.Tensor, scales: torch.Tensor, dtype: torch.dtype) -> None:
        super().__init__()
        self.codes, self.scales, self.dtype = codes, scales, dtype

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        codes = self.codes[tokens]
        grouped = codes.view(*codes.shape[:-1], -1, kernels.Q8_GROUP).float()
        return (grouped * self.scales[tokens][..., None]).view(codes.shape).to(self.dtype)


class LiveLinear(Linear):
    """A Linear whose weight already carries the mask (swap: the live weights; replicas: the
    active language's copy): torch's GEMM for prefill, the kernel for decode."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, rows: Rows) -> None:
        super().__init__(weight, bias)
        self.rows = rows
        self.dense = weight
        self.no_masks = _no_masks(weight)

    def forward(self, x):
        if self.rows.prefill:
            return F.linear(x, self.weight, self.bias)
        return dense_gemv(x, self.weight, self.no_masks, self.bias)


class FusedLinear(Linear):
    """Every language's mask bits of this weight stacked [L, out, in/8]; each row of a decode
    step uses its own (see FusedStrategy.set_rows for the GEMM/GEMV split)."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, rows: Rows,
                 scratch: list[torch.Tensor]) -> None:
        super().__init__(weight, bias)
        self.rows = rows
        self.scratch = scratch  # [one flat buffer] shared by all, grown on use
        self.stack = _no_masks(weight)

    def forward(self, x):
        r = self.rows
        rows = x.reshape(-1, x.shape[-1])
        if r.prefill:
            out = self.one_language(rows, int(r.index[0]))
        elif not r.gemm_groups:
            out = self.gemv(rows, r.index)
        elif len(r.gemm_groups) == 1 and not len(r.gemv_rows):
            out = self.one_language(rows, r.gemm_groups[0][0])
        else:
            out = rows.new_empty(rows.shape[0], self.stack.shape[1])
            for lang, picked in r.gemm_groups:
                out[picked] = self.one_language(rows[picked], lang)
            if len(r.gemv_rows):
                out[r.gemv_rows] = self.gemv(rows[r.gemv_rows], r.index[r.gemv_rows])
        return out.view(*x.shape[:-1], -1)

    def gemv(self, rows: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        """Rows of any languages (index: each row's, -1 = dense) through the masked kernel."""
        return kernels.masked_linear(rows, self.weight, self.stack, index, self.bias)

    def one_language(self, rows: torch.Tensor, lang: int) -> torch.Tensor:
        """rows [T, in] all of language `lang` (-1 = dense)."""
        if lang < 0:
            return F.linear(rows, self.weight, self.bias)
        if self.scratch[0].numel() < self.weight.numel():
            self.scratch[0] = torch.empty(self.weight.numel(), dtype=self.weight.dtype)
        return kernels.masked_linear_prefill(rows, self.weight, self.stack[lang], self.bias,
                                             self.scratch[0])


class Int8FusedLinear(FusedLinear):
    """FusedLinear over int8 codes and per-group scales instead of the weight: the masked int8
    GEMV for decode rows; W*M dequantized into the scratch buffer (in `dtype`, the weight's) for
    torch's GEMM."""

    def __init__(self, codes: torch.Tensor, scales: torch.Tensor, bias: torch.Tensor | None,
                 rows: Rows, scratch: list[torch.Tensor], dtype: torch.dtype) -> None:
        super().__init__(codes, bias, rows, scratch)  # the mask stack takes the codes' shape
        self.weight = None  # not kept: the codes and scales stand for it
        self.codes, self.scales, self.dtype = codes, scales, dtype

    def gemv(self, rows: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        return kernels.masked_linear_q8(rows, self.codes, self.scales, self.stack, index,
                                        self.bias)

    def one_language(self, rows, lang):
        if rows.shape[0] < kernels.gemm_min_rows(self.dtype, int8=True):
            return self.gemv(rows, torch.full((rows.shape[0],), lang, dtype=torch.int32))
        numel = self.codes.numel()
        if self.scratch[0].numel() < numel or self.scratch[0].dtype != self.dtype:
            self.scratch[0] = torch.empty(numel, dtype=self.dtype)
        w = self.scratch[0][:numel].view(self.codes.shape)
        mask = self.stack[lang] if lang >= 0 else None
        return F.linear(rows, kernels.dequantize_q8_into(self.codes, self.scales, mask, w),
                        self.bias)


def weight_bytes(linear: Linear) -> int:
    """Bytes of a Linear's weight as held: the tensor, or int8 codes and their scales."""
    if isinstance(linear, (Int8FusedLinear, Int8HeadLinear)):
        return linear.codes.numel() + linear.scales.numel() * linear.scales.element_size()
    return linear.weight.numel() * linear.weight.element_size()


def join(parts: list[Int8FusedLinear]) -> Int8FusedLinear:
    """One int8 Linear over the parts' rows side by side (a part without a bias adds zeros to
    the joint's); each part's tensors become views of its rows."""
    first = parts[0]
    outs = [p.codes.shape[0] for p in parts]
    bias = None
    if any(p.bias is not None for p in parts):
        ref = next(p.bias for p in parts if p.bias is not None)
        bias = torch.cat([p.bias if p.bias is not None else ref.new_zeros(out)
                          for p, out in zip(parts, outs, strict=True)])
    joint = Int8FusedLinear(torch.cat([p.codes for p in parts]),
                            torch.cat([p.scales for p in parts]), bias, first.rows,
                            first.scratch, first.dtype)
    start = 0
    for part, out in zip(parts, outs, strict=True):
        part.codes = joint.codes[start:start + out]
        part.scales = joint.scales[start:start + out]
        if part.bias is not None:
            part.bias = joint.bias[start:start + out]
        part.stack = joint.stack[:, start:start + out]
        start += out
    return joint


class MaskStrategy:
    """Owns the model's prunable Linears (by state-dict name) and their masks."""

    name = ""
    mixes_languages = False

    def __init__(self, model: Transformer, masks: Masks, dense_file: Path) -> None:
        self.model = model
        self.dense_file = dense_file
        self.dtype = model.lm_head.weight.dtype  # the compute dtype
        self.rows = Rows()
        self.linears: dict[str, Linear] = {}  # weight name (as in the store) -> its Linear
        self.install(model)
        self.masks: Masks = {}
        self.languages: list[str] = []
        self.set_masks(masks)

    def install(self, model: Transformer) -> None:
        """Replace the model's prunable Linears and its LM head with this strategy's kinds."""
        for name, dense in model.prunable().items():
            self.linears[f"{name}.weight"] = self.make_linear(f"{name}.weight", dense)
            model.replace(name, self.linears[f"{name}.weight"])
        model.lm_head = self.make_head(model.lm_head.weight)

    def make_linear(self, name: str, dense: Linear) -> Linear:
        return LiveLinear(dense.weight, dense.bias, self.rows)

    def make_head(self, weight: torch.Tensor) -> Linear:
        return HeadLinear(weight)

    @property
    def names(self) -> list[str]:
        """The prunable weights' state-dict names, in layer order."""
        return list(self.linears)

    def set_rows(self, row_languages: list[str], prefill: bool = False) -> float:
        """Set up the next forward: a prefill of one sequence (one language) or a decode step
        with these rows' languages; returns seconds spent switching masks."""
        self.rows.languages = row_languages
        self.rows.index = torch.tensor([self._index(lang) for lang in row_languages],
                                       dtype=torch.int32)
        self.rows.prefill = prefill
        return 0.0

    def set_masks(self, masks: Masks) -> None:
        """Serve this set of masks from the next `set_rows` on (a reload). The engine thread
        calls it between steps, so no forward ever sees two sets."""
        self.masks = masks
        self.languages = sorted(masks)

    def _index(self, language: str) -> int:
        return -1 if language == DENSE else self.languages.index(language)

    def resident_bytes(self) -> dict[str, int]:
        mask_bytes = sum(m.numel() for per in self.masks.values() for m in per.values())
        dense_bytes = sum(weight_bytes(m) for m in self.linears.values())
        return {"dense": dense_bytes, "masks": mask_bytes, "extra": 0}


class SwapStrategy(MaskStrategy):
    name = "swap"

    def __init__(self, *args, **kwargs) -> None:
        self.active: str | None = DENSE  # None: the live mask is no longer served by name
        self.live: dict[str, torch.Tensor] | None = None  # the mask the live weights carry
        super().__init__(*args, **kwargs)

    def set_masks(self, masks):
        """The live weights keep their mask; `active` follows it to whatever name serves it
        now (a retired language's requests run on it under another key), or becomes None so
        that the next switch starts from the live mask."""
        super().set_masks(masks)
        if self.live is not None:
            self.active = next((k for k, v in masks.items() if v is self.live), None)

    def set_rows(self, row_languages, prefill=False):
        assert len(set(row_languages)) == 1, "swap serves one language per batch"
        super().set_rows(row_languages, prefill)
        return self.switch(row_languages[0])

    def switch(self, language: str) -> float:
        if language == self.active:
            return 0.0
        started = time.perf_counter()
        old = self.live
        new = self.masks.get(language)
        with mapped_tensors(self.dense_file, self.names) as source:
            for name, linear in self.linears.items():
                src = source[name]
                if src.dtype != linear.weight.dtype:
                    src = src.to(linear.weight.dtype)
                kernels.swap_masks_(linear.weight, src, None if old is None else old[name],
                                    None if new is None else new[name])
                del src
        self.active = language
        self.live = new
        return time.perf_counter() - started


class FusedStrategy(MaskStrategy):
    name = "fused"
    mixes_languages = True

    def __init__(self, *args, weights: str = "full",
                 blocks: dict[str, tuple[torch.Tensor, torch.Tensor]] | None = None,
                 **kwargs) -> None:
        if weights not in WEIGHT_FORMATS:
            raise ValueError(f"unknown weight format {weights!r} (choose "
                             f"{', '.join(WEIGHT_FORMATS)})")
        self.int8 = weights in ("int8", "gguf")
        self.blocks = blocks or {}  # weight name -> the GGUF's own codes and scales
        self.scratch = [torch.empty(0)]  # its Linears' shared W*M buffer
        super().__init__(*args, **kwargs)

    def make_linear(self, name, dense):
        if not self.int8:
            return FusedLinear(dense.weight, dense.bias, self.rows, self.scratch)
        codes, scales = self.blocks.get(name) or kernels.quantize_q8(dense.weight)
        if codes.shape != dense.weight.shape:
            raise ValueError(f"int8 codes of shape {tuple(codes.shape)} for {name} of shape "
                             f"{tuple(dense.weight.shape)}")
        return Int8FusedLinear(codes, scales, dense.bias, self.rows, self.scratch,
                               dense.weight.dtype)

    def install(self, model):
        """With int8 weights, also joins each group of siblings (Linears of one input: q|k|v,
        gate|up) into one Linear over their rows side by side, so that a decode step reads the
        group in one kernel call: 4 calls a layer instead of 7 (1.04-1.06x a batch-1 step, AMD
        EPYC). The members stay in the tree, and in `linears`, as views of the joint's rows.
        Full weights are not joined: they are the store's file, mapped, shared with every
        process serving it; joined copies would add their size to each (0.45 GB here)."""
        super().install(model)
        self.calls: list[tuple[FusedLinear, list[str]]] = []  # each with its rows' weights
        grouped = set()
        for joint_name, members in model.siblings().items() if self.int8 else ():
            names = [f"{m}.weight" for m in members]
            joint = join([self.linears[n] for n in names])
            model.replace(joint_name, joint)
            self.calls.append((joint, names))
            grouped.update(names)
        self.calls += [(linear, [n]) for n, linear in self.linears.items() if n not in grouped]

    def make_head(self, weight):
        if not self.int8:
            return HeadLinear(weight)
        decoder = getattr(self.model, "model", None)
        tied = decoder is not None and decoder.embed_tokens.weight is weight
        head = Int8HeadLinear(weight, self.blocks.get(
            "model.embed_tokens.weight" if tied else "lm_head.weight"))
        if tied:
            decoder.embed_tokens = Int8Embedding(head.codes, head.scales, weight.dtype)
        return head

    def set_masks(self, masks):
        """Restack the masks of each Linear a forward calls [L, out, in/8], every language's
        bits side by side (a joint's rows: its members' masks one after the other); the
        per-language masks become views of the stacks (no second copy once the old stacks are
        dropped)."""
        super().set_masks(masks)
        self.masks = {lang: {} for lang in self.languages}
        for linear, names in self.calls:
            stack = torch.empty(len(self.languages), *linear.stack.shape[1:], dtype=torch.uint8)
            start = 0
            for name in names:
                member = self.linears[name]
                end = start + member.stack.shape[1]
                for k, lang in enumerate(self.languages):
                    stack[k, start:end] = masks[lang][name]
                    self.masks[lang][name] = stack[k, start:end]
                if member is not linear:
                    member.stack = stack[:, start:end]
                start = end
            linear.stack = stack

    def set_rows(self, row_languages, prefill=False):
        """Plans a decode step: a language with enough rows goes through W*M and torch's GEMM
        (compute-bound batches), the other rows through one call of the masked GEMV kernel
        (which reads each weight once for all of them)."""
        super().set_rows(row_languages, prefill)
        index = self.rows.index
        langs, counts = torch.unique(index, return_counts=True)
        big = langs[counts >= kernels.gemm_min_rows(self.dtype, self.int8)]
        self.rows.gemm_groups = [(int(lang), torch.nonzero(index == lang).flatten())
                                 for lang in big]
        self.rows.gemv_rows = torch.nonzero(~torch.isin(index, big)).flatten()
        return 0.0

    def resident_bytes(self):
        sizes = super().resident_bytes()
        if self.int8:  # the head's own codes, next to the embedding table it came from
            sizes["dense"] += weight_bytes(self.model.lm_head)
        sizes["extra"] = sum(s.numel() * s.element_size() for s in self.scratch)
        return sizes


class ReplicaStrategy(MaskStrategy):
    name = "replicas"

    def __init__(self, *args, **kwargs) -> None:
        self.replicas: dict[str, dict[str, torch.Tensor]] = {}
        super().__init__(*args, **kwargs)

    def set_masks(self, masks):
        """Materialize the masks not seen before; a mask kept (under any name) keeps its
        replica."""
        previous = self.masks  # keeps the old dicts alive while their ids are compared
        old = {id(previous[lang]): replica for lang, replica in self.replicas.items()}
        super().set_masks(masks)
        self.replicas = {
            lang: old.get(id(per)) or {
                name: kernels.apply_mask_into(m.dense, per[name], torch.empty_like(m.dense))
                for name, m in self.linears.items()}
            for lang, per in masks.items()}

    def set_rows(self, row_languages, prefill=False):
        assert len(set(row_languages)) == 1, "replicas serve one language per batch"
        language = row_languages[0]
        for name, linear in self.linears.items():
            linear.weight = linear.dense if language == DENSE else self.replicas[language][name]
        return super().set_rows(row_languages, prefill)

    def resident_bytes(self):
        sizes = super().resident_bytes()
        sizes["dense"] = sum(m.dense.numel() * m.dense.element_size()
                             for m in self.linears.values())
        sizes["extra"] = sum(w.numel() * w.element_size()
                             for per in self.replicas.values() for w in per.values())
        return sizes


def make_strategy(name: str, model: Transformer, masks: Masks, dense_file: Path,
                  weights: str = "full",
                  blocks: dict[str, tuple[torch.Tensor, torch.Tensor]] | None = None
                  ) -> MaskStrategy:
    """Install strategy `name` into `model` (replacing its prunable Linears and LM head);
    `weights="int8"` (fused only) holds them as int8 codes and scales, `"gguf"` the same but
    with `blocks` (weight name -> codes, scales: the GGUF's own) where it has them."""
    classes = {"swap": SwapStrategy, "fused": FusedStrategy, "replicas": ReplicaStrategy}
    if name not in classes:
        raise ValueError(f"unknown strategy '{name}' (choose {', '.join(STRATEGIES)})")
    if name == "fused":
        return FusedStrategy(model, masks, dense_file, weights=weights, blocks=blocks)
    if weights != "full":
        raise ValueError(f"--weights {weights} needs the fused strategy (got {name})")
    return classes[name](model, masks, dense_file)
