"""Wanda (Sun et al. 2023) and magnitude pruning, block by block, producing masks only.

For each decoder block in order: run the calibration inputs through the block as pruned so
far, record every prunable Linear's per-input-channel sum of squared activations, score
S = |W| * sqrt(sum_sq / n_tokens), keep the highest-scoring weights of each output row (or of
each group of M inputs for N:M), then recompute the block's outputs with its masks applied as
the next block's inputs. The weights themselves are restored after each block.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from submodel.pruning import masks as bits
from submodel.pruning.store import PRUNABLE_SUFFIXES


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The decoder blocks of an HF causal LM (Llama, Qwen2, Mistral, Gemma 3 layouts)."""
    inner = getattr(model, "model", None)
    for candidate in (inner, getattr(inner, "language_model", None)):
        if candidate is not None and isinstance(getattr(candidate, "layers", None), nn.ModuleList):
            return candidate.layers
    raise ValueError(f"{type(model).__name__}: cannot find its decoder layers")


def prunable_linears(model: nn.Module) -> dict[str, nn.Linear]:
    """Full state-dict weight name -> Linear, for q/k/v/o and gate/up/down of every block."""
    found = {}
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear) and name.rsplit(".", 1)[-1] in PRUNABLE_SUFFIXES:
            found[f"{name}.weight"] = module
    if not found:
        raise ValueError(f"{type(model).__name__}: no prunable Linear layers found")
    return found


def keep_mask(score: torch.Tensor, sparsity: float,
              pattern: tuple[int, int] | None) -> torch.Tensor:
    """Boolean keep-mask pruning the lowest scores per row (or the lowest N of every M inputs).

    Ties go to the lower column index (stable sort), so masks are deterministic.
    """
    out_f, in_f = score.shape
    keep = torch.ones_like(score, dtype=torch.bool)
    if pattern is None:
        k = int(in_f * sparsity)
        order = torch.sort(score, dim=1, stable=True).indices[:, :k]
        keep.scatter_(1, order, False)
        return keep
    n, m = pattern
    whole = (in_f // m) * m
    groups = score[:, :whole].reshape(out_f, -1, m)
    order = torch.sort(groups, dim=2, stable=True).indices[:, :, :n]
    keep_groups = torch.ones_like(groups, dtype=torch.bool).scatter_(2, order, False)
    keep[:, :whole] = keep_groups.reshape(out_f, whole)
    return keep


def wanda_score(weight: torch.Tensor, sum_sq: torch.Tensor, n_tokens: int) -> torch.Tensor:
    """|W| * ||X_j||_2 per input channel j (the norm over all calibration tokens, averaged)."""
    norm = torch.sqrt(sum_sq / n_tokens).to(torch.float32)
    return weight.detach().abs().to(torch.float32) * norm[None, :]


def magnitude_masks(model: nn.Module, sparsity: float,
                    pattern: tuple[int, int] | None) -> dict[str, torch.Tensor]:
    return {name: bits.pack(keep_mask(lin.weight.detach().abs().float(), sparsity, pattern))
            for name, lin in prunable_linears(model).items()}


class _StopForward(Exception):
    pass


def _capture_block_inputs(model: nn.Module, batches: list[torch.Tensor]) -> list[tuple]:
    """Run the model up to the first block and keep what it is called with, per batch.

    Recent transformers pass rotary `position_embeddings`, masks and positions as keyword
    arguments; capturing the real call keeps every architecture's conventions intact.
    """
    layers = decoder_layers(model)
    captured = []

    def hook(_module, args, kwargs):
        hidden = args[0] if args else kwargs.pop("hidden_states")
        captured.append((hidden.detach(), dict(kwargs)))
        raise _StopForward

    handle = layers[0].register_forward_pre_hook(hook, with_kwargs=True)
    try:
        for ids in batches:
            try:
                model(input_ids=ids, use_cache=False)
            except _StopForward:
                pass
    finally:
        handle.remove()
    return captured


def _move_all_but_layers(model: nn.Module, layers: nn.ModuleList, device) -> None:
    """Embeddings, rotary tables and norms go to `device`; blocks move one at a time."""
    owner = next(m for m in model.modules() if getattr(m, "layers", None) is layers)
    owner.layers = nn.ModuleList()
    try:
        model.to(device)
    finally:
        owner.layers = layers


def _accumulate_into(total: torch.Tensor):
    """A pre-hook adding the input's per-channel sum of squares (over all tokens) to `total`."""
    def hook(_module, args):
        x = args[0].detach()
        total.add_(x.reshape(-1, x.shape[-1]).float().pow(2).sum(0, dtype=torch.float64))
    return hook


def _block_output(out) -> torch.Tensor:
    return out[0] if isinstance(out, tuple) else out


@torch.no_grad()
def wanda_masks(model: nn.Module, calib: torch.Tensor, sparsity: float,
                pattern: tuple[int, int] | None, batch_size: int = 8,
                device: str | torch.device = "cpu",
                on_block: Callable[[int, int], None] | None = None) -> dict[str, torch.Tensor]:
    """Wanda masks (packed) for every prunable weight, from token ids `calib` [N, T].

    `device`: where each block runs; the model may live on the CPU and only the block being
    pruned is moved, so accelerator memory is one block plus the activations.
    """
    layers = decoder_layers(model)
    linears = prunable_linears(model)
    _move_all_but_layers(model, layers, device)
    calib = calib.to(device)
    batches = list(torch.split(calib, batch_size))
    states = _capture_block_inputs(model, batches)
    result: dict[str, torch.Tensor] = {}
    for index, layer in enumerate(layers):
        home = next(layer.parameters()).device
        layer.to(device)
        prefix = f".layers.{index}."
        block = {name: lin for name, lin in linears.items() if prefix in f".{name}"}
        sum_sq = {name: torch.zeros(lin.in_features, dtype=torch.float64, device=device)
                  for name, lin in block.items()}
        n_tokens = 0

        handles = [lin.register_forward_pre_hook(_accumulate_into(sum_sq[name]))
                   for name, lin in block.items()]
        try:
            for hidden, kwargs in states:
                layer(hidden, **kwargs)
                n_tokens += hidden.shape[0] * hidden.shape[1]
        finally:
            for h in handles:
                h.remove()

        originals = {}
        for name, lin in block.items():
            keep = keep_mask(wanda_score(lin.weight, sum_sq[name], n_tokens), sparsity, pattern)
            result[name] = bits.pack(keep)
            originals[name] = lin.weight.detach().clone()
            lin.weight.mul_(keep.to(lin.weight.dtype))
        states = [(_block_output(layer(hidden, **kwargs)), kwargs) for hidden, kwargs in states]
        for name, lin in block.items():
            lin.weight.copy_(originals[name])
        layer.to(home)
        if on_block is not None:
            on_block(index, len(layers))
    return result
