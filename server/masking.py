"""How a language's mask reaches the matmuls. Three strategies, one interface:

- swap:     the live weights carry the active language's mask; a switch restores the values
            the old mask zeroed (from the store's dense file, via the page cache) and zeroes
            the new mask's, touching only positions where the two differ. One language per
            batch.
- fused:    the kernel reads each weight tile once with every row's own mask bits, so one
            decode step can mix languages. No masked copy is ever kept.
- replicas: one materialized masked copy per language (the naive baseline; bench only).

All three route decode-time matmuls through the same GEMV kernel, so they differ only in
how masks are applied. A batch is memory-bound up to about kernels.gemm_min_rows rows; past that,
one language's rows go through W*M in a reused scratch buffer and torch's GEMM.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch
import torch.nn.functional as F

from submodel.server import kernels
from submodel.server.dense_source import mapped_tensors
from submodel.server.model import LM_HEAD
from submodel.vocabulary import DENSE, STRATEGIES


class MaskStrategy:
    """Owns the prunable weights and computes `linear` for the batch set by `prepare`."""

    name = ""
    mixes_languages = False

    def __init__(self, weights: list[torch.Tensor], names: list[str],
                 masks: dict[str, list[torch.Tensor]], dense_file: Path,
                 lm_head: torch.Tensor) -> None:
        self.lm_head = lm_head
        self.lm_head_no_masks = _no_masks(lm_head)
        self.weights = weights  # index -> live weight [out, in]
        self.names = names  # index -> state-dict name
        self.masks = masks  # language -> index -> packed uint8 [out, ceil(in/8)]
        self.dense_file = dense_file
        self.languages = sorted(masks)
        self.row_lang = torch.empty(0, dtype=torch.int32)
        self.prefill_lang = DENSE
        self.scratch: torch.Tensor | None = None
        self.no_masks = [_no_masks(w) for w in weights]

    def prepare(self, row_languages: list[str]) -> float:
        """Set up the next forward for rows of these languages; returns seconds spent switching."""
        self.row_lang = torch.tensor([self._index(lang) for lang in row_languages],
                                     dtype=torch.int32)
        self.prefill_lang = row_languages[0]
        return 0.0

    def set_masks(self, masks: dict[str, list[torch.Tensor]]) -> None:
        """Serve this set of masks from the next `prepare` on (a reload). The engine thread
        calls it between steps, so no forward ever sees two sets."""
        self.masks = masks
        self.languages = sorted(masks)

    def _index(self, language: str) -> int:
        return -1 if language == DENSE else self.languages.index(language)

    def linear(self, x: torch.Tensor, index: int, bias: torch.Tensor | None,
               prefill: bool) -> torch.Tensor:
        """x [B, T, in] -> [B, T, out]."""
        if index == LM_HEAD:
            return self.dense_gemv(x, self.lm_head, self.lm_head_no_masks, None)
        weight = self.weight_for(index)
        if prefill:
            return F.linear(x, weight, bias)
        return self.dense_gemv(x, weight, self.no_masks[index], bias)

    @staticmethod
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

    def weight_for(self, index: int) -> torch.Tensor:
        return self.weights[index]

    def resident_bytes(self) -> dict[str, int]:
        mask_bytes = sum(m.numel() for per in self.masks.values() for m in per)
        dense_bytes = sum(w.numel() * w.element_size() for w in self.weights)
        return {"dense": dense_bytes, "masks": mask_bytes, "extra": 0}


class SwapStrategy(MaskStrategy):
    name = "swap"

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.active: str | None = DENSE  # None: the live mask is no longer served by name
        self.live: list[torch.Tensor] | None = None  # the mask the live weights carry

    def set_masks(self, masks):
        """The live weights keep their mask; `active` follows it to whatever name serves it
        now (a retired language's requests run on it under another key), or becomes None so
        that the next switch starts from the live mask."""
        super().set_masks(masks)
        if self.live is not None:
            self.active = next((k for k, v in masks.items() if v is self.live), None)

    def prepare(self, row_languages: list[str]) -> float:
        assert len(set(row_languages)) == 1, "swap serves one language per batch"
        super().prepare(row_languages)
        return self.switch(row_languages[0])

    def switch(self, language: str) -> float:
        if language == self.active:
            return 0.0
        started = time.perf_counter()
        old = self.live
        new = self.masks.get(language)
        with mapped_tensors(self.dense_file, self.names) as source:
            for i, weight in enumerate(self.weights):
                src = source[self.names[i]]
                if src.dtype != weight.dtype:
                    src = src.to(weight.dtype)
                kernels.swap_masks_(weight, src, None if old is None else old[i],
                                    None if new is None else new[i])
                del src
        self.active = language
        self.live = new
        return time.perf_counter() - started


class FusedStrategy(MaskStrategy):
    name = "fused"
    mixes_languages = True

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.set_masks(self.masks)
        self.gemm_groups: list[tuple[int, torch.Tensor]] = []
        self.gemv_rows = torch.empty(0, dtype=torch.long)

    def set_masks(self, masks):
        """Restack: index -> [L, out, ceil(in/8)], every language's bits of one weight side by
        side; the per-language masks become views of the stack (no second copy once the old
        stack is dropped)."""
        super().set_masks(masks)
        self.stacked = [torch.stack([masks[lang][i] for lang in self.languages])
                        if self.languages else _no_masks(w) for i, w in enumerate(self.weights)]
        self.masks = {lang: [s[k] for s in self.stacked] for k, lang in enumerate(self.languages)}

    def prepare(self, row_languages):
        """Plans the decode step: a language with enough rows goes through W*M and torch's GEMM
        (compute-bound batches), the other rows through one call of the masked GEMV kernel
        (which reads each weight once for all of them)."""
        super().prepare(row_languages)
        dtype = self.weights[0].dtype if self.weights else torch.float32
        langs, counts = torch.unique(self.row_lang, return_counts=True)
        big = langs[counts >= kernels.gemm_min_rows(dtype)]
        self.gemm_groups = [(int(lang), torch.nonzero(self.row_lang == lang).flatten())
                            for lang in big]
        self.gemv_rows = torch.nonzero(~torch.isin(self.row_lang, big)).flatten()
        return 0.0

    def linear(self, x, index, bias, prefill):
        if index == LM_HEAD:
            return super().linear(x, index, bias, prefill)
        rows = x.reshape(-1, x.shape[-1])
        if prefill:
            out = self.one_language(rows, index, self._index(self.prefill_lang), bias)
        elif not self.gemm_groups:
            out = kernels.masked_linear(rows, self.weights[index], self.stacked[index],
                                        self.row_lang, bias)
        elif len(self.gemm_groups) == 1 and not len(self.gemv_rows):
            out = self.one_language(rows, index, self.gemm_groups[0][0], bias)
        else:
            out = rows.new_empty(rows.shape[0], self.weights[index].shape[0])
            for lang, picked in self.gemm_groups:
                out[picked] = self.one_language(rows[picked], index, lang, bias)
            if len(self.gemv_rows):
                out[self.gemv_rows] = kernels.masked_linear(
                    rows[self.gemv_rows], self.weights[index], self.stacked[index],
                    self.row_lang[self.gemv_rows], bias)
        return out.view(*x.shape[:-1], -1)

    def one_language(self, rows: torch.Tensor, index: int, lang: int,
                     bias: torch.Tensor | None) -> torch.Tensor:
        """rows [T, in] all of language `lang` (-1 = dense) through weight `index`."""
        weight = self.weights[index]
        if self.scratch is None:
            self.scratch = torch.empty(max(w.numel() for w in self.weights), dtype=weight.dtype)
        mask = None if lang < 0 else self.stacked[index][lang]
        return kernels.masked_linear_prefill(rows, weight, mask, bias, self.scratch)

    def resident_bytes(self):
        sizes = super().resident_bytes()
        if self.scratch is not None:
            sizes["extra"] = self.scratch.numel() * self.scratch.element_size()
        return sizes


class ReplicaStrategy(MaskStrategy):
    name = "replicas"

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.replicas: dict[str, list[torch.Tensor]] = {}
        self.set_masks(self.masks)
        self.active = DENSE

    def set_masks(self, masks):
        """Materialize the masks not seen before; a mask kept (under any name) keeps its
        replica."""
        previous = self.masks  # keeps the old lists alive while their ids are compared
        old = {id(previous[lang]): replica for lang, replica in self.replicas.items()}
        super().set_masks(masks)
        self.replicas = {
            lang: old.get(id(per)) or [kernels.apply_mask_into(w, m, torch.empty_like(w))
                                       for w, m in zip(self.weights, per, strict=True)]
            for lang, per in masks.items()}

    def prepare(self, row_languages):
        assert len(set(row_languages)) == 1, "replicas serve one language per batch"
        self.active = row_languages[0]
        return super().prepare(row_languages)

    def weight_for(self, index):
        if self.active == DENSE:
            return self.weights[index]
        return self.replicas[self.active][index]

    def resident_bytes(self):
        sizes = super().resident_bytes()
        sizes["extra"] = sum(w.numel() * w.element_size()
                             for per in self.replicas.values() for w in per)
        return sizes


def _no_masks(weight: torch.Tensor) -> torch.Tensor:
    """An empty mask stack: the kernel's dense-only call."""
    return torch.empty(0, weight.shape[0], (weight.shape[1] + 7) // 8, dtype=torch.uint8)


def make_strategy(name: str, weights, names, masks, dense_file, lm_head) -> MaskStrategy:
    classes = {"swap": SwapStrategy, "fused": FusedStrategy, "replicas": ReplicaStrategy}
    if name not in classes:
        raise ValueError(f"unknown strategy '{name}' (choose {', '.join(STRATEGIES)})")
    return classes[name](weights, names, masks, dense_file, lm_head)
