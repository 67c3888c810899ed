"""Our own forward pass for Llama-family decoders (Llama, Qwen2, Mistral, SmolLM) over a
slot-indexed KV cache, so that requests of different lengths share one decode step.

Every Linear goes through `linear(x, index, bias)`, a function the engine supplies: that is
where a language's mask is applied (see masking.py). Index i >= 0 names the prunable weight
`PRUNABLE[i % 7]` of layer `i // 7`; LM_HEAD (-1) is the output projection, never masked.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from submodel.vocabulary import PRUNABLE

SUPPORTED = ("llama", "qwen2", "mistral")
LM_HEAD = -1

LinearFn = Callable[[torch.Tensor, int, torch.Tensor | None], torch.Tensor]


class UnsupportedModel(ValueError):
    pass


@dataclass(frozen=True)
class ModelArgs:
    vocab_size: int
    dim: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    rms_eps: float
    rope_theta: float
    tie_embeddings: bool
    max_positions: int

    @classmethod
    def from_config(cls, cfg: dict) -> ModelArgs:
        if cfg.get("model_type") not in SUPPORTED:
            raise UnsupportedModel(f"serving supports {', '.join(SUPPORTED)} models, "
                                   f"not '{cfg.get('model_type')}'")
        rope = cfg.get("rope_parameters") or cfg.get("rope_scaling") or {}
        if rope.get("rope_type", "default") != "default":
            raise UnsupportedModel(f"rope type '{rope['rope_type']}' is not supported")
        theta = rope.get("rope_theta", cfg.get("rope_theta", 10000.0))
        heads = cfg["num_attention_heads"]
        return cls(
            vocab_size=cfg["vocab_size"], dim=cfg["hidden_size"],
            n_layers=cfg["num_hidden_layers"], n_heads=heads,
            n_kv_heads=cfg.get("num_key_value_heads") or heads,
            head_dim=cfg.get("head_dim") or cfg["hidden_size"] // heads,
            rms_eps=cfg["rms_norm_eps"], rope_theta=float(theta),
            tie_embeddings=bool(cfg.get("tie_word_embeddings")),
            max_positions=cfg.get("max_position_embeddings", 4096))


def weight_name(index: int) -> str:
    return f"model.layers.{index // 7}.{PRUNABLE[index % 7]}.weight"


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    h = x.float()
    h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)
    return weight * h.to(x.dtype)


def rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos + rotated * sin


class KVCache:
    """Keys and values per layer for `slots` sequences of up to `max_len` tokens each."""

    def __init__(self, args: ModelArgs, slots: int, max_len: int, dtype: torch.dtype,
                 device: str | torch.device) -> None:
        shape = (args.n_layers, slots, args.n_kv_heads, max_len, args.head_dim)
        self.k = torch.zeros(shape, dtype=dtype, device=device)
        self.v = torch.zeros(shape, dtype=dtype, device=device)
        self.max_len = max_len

    def copy_slot(self, src: int, dst: int, length: int) -> None:
        self.k[:, dst, :, :length] = self.k[:, src, :, :length]
        self.v[:, dst, :, :length] = self.v[:, src, :, :length]


class Transformer:
    """Weights as plain tensors; prunable Linear weights are owned by the mask strategy."""

    def __init__(self, args: ModelArgs, state: dict[str, torch.Tensor], device) -> None:
        self.args = args
        self.embed = state["model.embed_tokens.weight"]
        self.lm_head = self.embed if args.tie_embeddings else state["lm_head.weight"]
        self.norm = state["model.norm.weight"]
        self.layers = []
        for i in range(args.n_layers):
            p = f"model.layers.{i}."
            self.layers.append({
                "attn_norm": state[p + "input_layernorm.weight"],
                "mlp_norm": state[p + "post_attention_layernorm.weight"],
                "bq": state.get(p + "self_attn.q_proj.bias"),
                "bk": state.get(p + "self_attn.k_proj.bias"),
                "bv": state.get(p + "self_attn.v_proj.bias"),
            })
        inv = 1.0 / args.rope_theta ** (
            torch.arange(0, args.head_dim, 2, dtype=torch.float32, device=device) / args.head_dim)
        self.inv_freq = inv

    def rope(self, positions: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, ...]:
        freqs = positions[..., None].float() * self.inv_freq
        emb = torch.cat((freqs, freqs), dim=-1)
        return emb.cos().to(dtype), emb.sin().to(dtype)

    def forward(self, tokens: torch.Tensor, positions: torch.Tensor, cache: KVCache,
                slots: torch.Tensor, linear: LinearFn, prefill: bool) -> torch.Tensor:
        """Logits of the last position of each row.

        prefill: tokens [1, T] of one sequence starting at position 0 in `slots[0]`.
        decode:  tokens [B, 1], one per sequence, at `positions` [B, 1] in `slots` [B].
        """
        a = self.args
        bsz, seqlen = tokens.shape
        x = F.embedding(tokens, self.embed)
        cos, sin = self.rope(positions, x.dtype)
        cos, sin = cos[:, None], sin[:, None]  # [B, 1, T, D]
        if not prefill:
            length = int(positions.max()) + 1
            keys = torch.arange(length, device=tokens.device)
            visible = (keys[None, :] <= positions).view(bsz, 1, 1, length)
        for i, layer in enumerate(self.layers):
            base = 7 * i
            h = rms_norm(x, layer["attn_norm"], a.rms_eps)
            q = linear(h, base, layer["bq"]).view(bsz, seqlen, a.n_heads, a.head_dim)
            k = linear(h, base + 1, layer["bk"]).view(bsz, seqlen, a.n_kv_heads, a.head_dim)
            v = linear(h, base + 2, layer["bv"]).view(bsz, seqlen, a.n_kv_heads, a.head_dim)
            q = rotate(q.transpose(1, 2), cos, sin)
            k = rotate(k.transpose(1, 2), cos, sin)
            v = v.transpose(1, 2)
            if prefill:
                cache.k[i, slots[0], :, :seqlen] = k[0]
                cache.v[i, slots[0], :, :seqlen] = v[0]
                o = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
            else:
                pos = positions[:, 0]
                cache.k[i, slots, :, pos] = k[:, :, 0]
                cache.v[i, slots, :, pos] = v[:, :, 0]
                ks = cache.k[i, slots, :, :length]
                vs = cache.v[i, slots, :, :length]
                o = F.scaled_dot_product_attention(q, ks, vs, attn_mask=visible, enable_gqa=True)
            o = o.transpose(1, 2).reshape(bsz, seqlen, a.n_heads * a.head_dim)
            x = x + linear(o, base + 3, None)
            h = rms_norm(x, layer["mlp_norm"], a.rms_eps)
            gate = linear(h, base + 4, None)
            up = linear(h, base + 5, None)
            x = x + linear(F.silu(gate) * up, base + 6, None)
        x = rms_norm(x[:, -1], self.norm, a.rms_eps)
        return linear(x, LM_HEAD, None).float()
