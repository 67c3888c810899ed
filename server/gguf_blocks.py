"""A GGUF's own quantized blocks as the int8 kernel's codes and scales (`serve --weights gguf`).

Q5_0 and Q8_0 blocks are one fp16 scale per 32 weights times a small integer (q - 16 with
q in 0..31, or an int8), so the int8 layout (int8 codes, one fp16 scale per 32 columns of a
row) holds them exactly: a decode step computes with the very values llama.cpp computes with
on the same file, not with a rounding of them. K-quants (Q4_K with a per-32 offset, Q6_K with
a scale per 16) do not fit that layout; their Linears get the int8 rounding of the store's
weights, as `--weights int8` gives every Linear.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

EXACT_TYPES = ("Q5_0", "Q8_0")
_LAYER_PARTS = {"self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k",
                "self_attn.v_proj": "attn_v", "self_attn.o_proj": "attn_output",
                "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down"}


def gguf_name(name: str) -> str | None:
    """The GGUF tensor of a state-dict weight name ("model.layers.3.mlp.up_proj.weight" ->
    "blk.3.ffn_up.weight"), or None for one it has no counterpart of."""
    if name == "model.embed_tokens.weight":
        return "token_embd.weight"
    parts = name.split(".")
    if len(parts) == 6 and parts[:2] == ["model", "layers"] and parts[-1] == "weight":
        part = _LAYER_PARTS.get(".".join(parts[3:5]))
        if part is not None:
            return f"blk.{parts[2]}.{part}.weight"
    return None


def unpack_q5_0(raw: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows of Q5_0 blocks (uint8 [rows, 22 * blocks]: fp16 d, 32 high bits, 16 bytes of low
    nibbles for weights 0-15 and 16-31) -> int8 codes [rows, 32 * blocks] = q - 16, fp16
    scales [rows, blocks] = d."""
    blocks = raw.reshape(raw.shape[0], -1, 22)
    scales = np.ascontiguousarray(blocks[..., :2]).view(np.float16)[..., 0].copy()
    high = np.ascontiguousarray(blocks[..., 2:6]).view("<u4")[..., 0]
    low = blocks[..., 6:]
    q = np.concatenate((low & 0x0F, low >> 4), axis=-1)
    q |= (((high[..., None] >> np.arange(32, dtype=np.uint32)) & 1) << 4).astype(np.uint8)
    codes = q.astype(np.int16) - 16
    return (torch.from_numpy(codes.astype(np.int8).reshape(raw.shape[0], -1)),
            torch.from_numpy(scales))


def unpack_q8_0(raw: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows of Q8_0 blocks (uint8 [rows, 34 * blocks]: fp16 d, 32 int8) -> int8 codes, fp16
    scales [rows, blocks] = d."""
    blocks = raw.reshape(raw.shape[0], -1, 34)
    scales = np.ascontiguousarray(blocks[..., :2]).view(np.float16)[..., 0].copy()
    codes = np.ascontiguousarray(blocks[..., 2:]).view(np.int8)
    return torch.from_numpy(codes.reshape(raw.shape[0], -1).copy()), torch.from_numpy(scales)


def exact_codes(path: Path, names: list[str]) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Int8 codes and fp16 scales of those of `names` (state-dict weight names) whose GGUF
    tensor is stored in one of EXACT_TYPES."""
    import gguf

    unpack = {"Q5_0": unpack_q5_0, "Q8_0": unpack_q8_0}
    wanted = {gguf_name(n): n for n in names if gguf_name(n) is not None}
    out = {}
    for tensor in gguf.GGUFReader(str(path)).tensors:
        name = wanted.get(tensor.name)
        if name is not None and tensor.tensor_type.name in EXACT_TYPES:
            out[name] = unpack[tensor.tensor_type.name](np.asarray(tensor.data))
    return out
