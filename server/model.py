"""Our own forward pass for Llama-family decoders (Llama, Qwen2, Mistral, SmolLM) over a
slot-indexed KV cache, so that requests of different lengths share one decode step.

The model is a tree of named modules whose names are the checkpoint's state-dict names
(`model.layers.3.mlp.up_proj` holds `model.layers.3.mlp.up_proj.weight`). It is built with
plain `Linear`s; a mask strategy (masking.py) replaces each prunable one, and the LM head, with
its own kind, and says before each forward which language each batch row uses.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from submodel.server import kernels
from submodel.vocabulary import PRUNABLE

SUPPORTED = ("llama", "qwen2", "mistral")

# A prefill of up to this many tokens attends through the decode op, one query row per token
# (each sees its keys 0..position, the cache written first), not SDPA with a mask: an editor's
# few new tokens after a cached 1.5k-token prefix, or a small chunk riding a decode step. SDPA's
# fixed cost there is most of a decode step (AMD EPYC, int8, the whole forward after 1,500
# cached tokens: 1 token 37-43 vs 18-22 ms, 5 tokens 31 vs 29, 6: 33 vs 31); from ~8 tokens
# its blocking over the keys wins. A chunk that small riding a decode step is just more decode
# rows.
DECODE_OP_MAX_TOKENS = 6


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


def decode_op_max_tokens(dtype: torch.dtype, args: ModelArgs) -> int:
    """DECODE_OP_MAX_TOKENS, or every prefill where the decode op takes this model's caches
    through VDPBF16PS (kernels.bf16_dot_attention): that beats SDPA at every size measured (AMD
    EPYC, gguf, a prefill of 7-1,024 tokens: 0.9-1.0x SDPA's time after 0 cached tokens,
    0.8-0.9x after 500-1,500; a decode step carrying a 7-48-token chunk at 1,000: 0.7-0.9x)."""
    if kernels.bf16_dot_attention(dtype, args.n_heads // args.n_kv_heads, args.head_dim):
        return sys.maxsize
    return DECODE_OP_MAX_TOKENS


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


class Linear(nn.Module):
    """x @ weight.T + bias with the checkpoint's weight [out, in]."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None = None) -> None:
        super().__init__()
        self.weight = weight
        self.bias = bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight, self.bias)


class Embedding(nn.Module):
    """Token ids -> rows of the checkpoint's table [vocab, hidden]."""

    def __init__(self, weight: torch.Tensor) -> None:
        super().__init__()
        self.weight = weight

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return F.embedding(tokens, self.weight)


def _linear(state: dict[str, torch.Tensor], name: str) -> Linear:
    return Linear(state[f"{name}.weight"], state.get(f"{name}.bias"))


@dataclass
class Step:
    """What one forward computes: a prefill of one sequence (tokens [1, T] at positions
    start..start+T-1 in slots[0], the first `start` already in the cache) or a decode step
    (tokens [B, 1], one per sequence, at positions [B, 1] in slots [B])."""

    positions: torch.Tensor
    cache: KVCache
    slots: torch.Tensor
    prefill: bool
    cos: torch.Tensor | None = None
    sin: torch.Tensor | None = None
    visible: torch.Tensor | None = None  # prefill after a prefix: [1, 1, T, length]


@dataclass
class MixedStep:
    """A decode step and one prompt chunk in one pass over the weights: the rows of x are the
    decode step's B tokens, then the chunk's T tokens; attention runs per part."""

    decode: Step
    chunk: Step
    rows: int  # B


class Attention(nn.Module):
    def __init__(self, args: ModelArgs, state: dict[str, torch.Tensor], prefix: str,
                 layer: int) -> None:
        super().__init__()
        self.args = args
        self.layer = layer  # its place in the KV cache
        self.q_proj = _linear(state, prefix + "q_proj")
        self.k_proj = _linear(state, prefix + "k_proj")
        self.v_proj = _linear(state, prefix + "v_proj")
        self.o_proj = _linear(state, prefix + "o_proj")
        self.qkv_proj: nn.Module | None = None  # q|k|v's rows in one Linear, once joined

    def project(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        if self.qkv_proj is None:
            return self.q_proj(x), self.k_proj(x), self.v_proj(x)
        kv = self.args.n_kv_heads * self.args.head_dim
        return self.qkv_proj(x).split((self.args.n_heads * self.args.head_dim, kv, kv), dim=-1)

    def forward(self, x: torch.Tensor, step: Step | MixedStep) -> torch.Tensor:
        a = self.args
        bsz, seqlen, _ = x.shape
        q, k, v = self.project(x)
        q = q.view(bsz, seqlen, a.n_heads, a.head_dim)
        k = k.view(bsz, seqlen, a.n_kv_heads, a.head_dim)
        v = v.view(bsz, seqlen, a.n_kv_heads, a.head_dim)
        if isinstance(step, MixedStep):  # x [1, B + T]: B decode rows, then the chunk
            b = step.rows
            o = torch.cat((self.attend(q[0, :b, None], k[0, :b, None], v[0, :b, None],
                                       step.decode).view(1, b, -1),
                           self.attend(q[:, b:], k[:, b:], v[:, b:], step.chunk)), dim=1)
        else:
            o = self.attend(q, k, v, step)
        return self.o_proj(o)

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
               step: Step) -> torch.Tensor:
        """q [B, T, H, D], k and v [B, T, G, D] of one Step's rows (rotary embedding not yet
        applied): writes the keys and values into the cache, returns [B, T, H * D]."""
        a, cache, i = self.args, step.cache, self.layer
        bsz, seqlen = q.shape[:2]
        if not step.prefill or seqlen <= decode_op_max_tokens(q.dtype, a):
            # one op: rotary, cache write and attention of every row (a row per token)
            rows = bsz * seqlen
            slots = step.slots if seqlen == 1 else step.slots[:1].expand(seqlen).contiguous()
            o = kernels.decode_attention(q.reshape(rows, -1), k.reshape(rows, -1),
                                         v.reshape(rows, -1), cache.k[i], cache.v[i], slots,
                                         step.positions.reshape(-1), step.cos.reshape(rows, -1),
                                         step.sin.reshape(rows, -1))
            return o.view(bsz, seqlen, -1)
        q = rotate(q.transpose(1, 2), step.cos, step.sin)
        k = rotate(k.transpose(1, 2), step.cos, step.sin)
        v = v.transpose(1, 2)
        if step.visible is None:  # from position 0
            cache.k[i, step.slots[0], :, :seqlen] = k[0]
            cache.v[i, step.slots[0], :, :seqlen] = v[0]
            o = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
        else:  # after a cached prefix
            start = int(step.positions[0, 0])
            end = start + seqlen
            cache.k[i, step.slots[0], :, start:end] = k[0]
            cache.v[i, step.slots[0], :, start:end] = v[0]
            slot = int(step.slots[0])  # a view of the slot, not a gathered copy
            ks = cache.k[i, slot:slot + 1, :, :end]
            vs = cache.v[i, slot:slot + 1, :, :end]
            o = F.scaled_dot_product_attention(q, ks, vs, attn_mask=step.visible,
                                               enable_gqa=True)
        return o.transpose(1, 2).reshape(bsz, seqlen, a.n_heads * a.head_dim)


class MLP(nn.Module):
    def __init__(self, state: dict[str, torch.Tensor], prefix: str) -> None:
        super().__init__()
        self.gate_proj = _linear(state, prefix + "gate_proj")
        self.up_proj = _linear(state, prefix + "up_proj")
        self.down_proj = _linear(state, prefix + "down_proj")
        self.gate_up_proj: nn.Module | None = None  # gate|up's rows in one Linear, once joined

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.gate_up_proj is None:
            return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))
        gate, up = self.gate_up_proj(x).chunk(2, dim=-1)
        return self.down_proj(F.silu(gate) * up)


class Block(nn.Module):
    def __init__(self, args: ModelArgs, state: dict[str, torch.Tensor], layer: int) -> None:
        super().__init__()
        p = f"model.layers.{layer}."
        self.eps = args.rms_eps
        self.input_layernorm = state[p + "input_layernorm.weight"]
        self.self_attn = Attention(args, state, p + "self_attn.", layer)
        self.post_attention_layernorm = state[p + "post_attention_layernorm.weight"]
        self.mlp = MLP(state, p + "mlp.")

    def forward(self, x: torch.Tensor, step: Step | MixedStep) -> torch.Tensor:
        x = x + self.self_attn(kernels.rms_norm(x, self.input_layernorm, self.eps), step)
        return x + self.mlp(kernels.rms_norm(x, self.post_attention_layernorm, self.eps))


class Decoder(nn.Module):
    def __init__(self, args: ModelArgs, state: dict[str, torch.Tensor]) -> None:
        super().__init__()
        self.embed_tokens = Embedding(state["model.embed_tokens.weight"])
        self.layers = nn.ModuleList(Block(args, state, i) for i in range(args.n_layers))
        self.norm = state["model.norm.weight"]


class Transformer(nn.Module):
    """The decoder and its LM head (the embeddings when they are tied)."""

    def __init__(self, args: ModelArgs, state: dict[str, torch.Tensor]) -> None:
        super().__init__()
        self.args = args
        self.model = Decoder(args, state)
        head = self.model.embed_tokens.weight if args.tie_embeddings else state["lm_head.weight"]
        self.lm_head = Linear(head)
        self.inv_freq = 1.0 / args.rope_theta ** (
            torch.arange(0, args.head_dim, 2, dtype=torch.float32) / args.head_dim)

    def prunable(self) -> dict[str, nn.Module]:
        """The Linears a mask prunes, by state-dict name (without `.weight`), in layer order."""
        return {name: m for name, m in self.named_modules()
                if name.startswith("model.layers.") and name.split(".", 3)[-1] in PRUNABLE}

    def siblings(self) -> dict[str, list[str]]:
        """Prunable Linears that read the same input, by the name of the one Linear that may
        hold their rows side by side (in this order): q|k|v and gate|up of each layer."""
        groups = {}
        for i in range(self.args.n_layers):
            p = f"model.layers.{i}."
            groups[p + "self_attn.qkv_proj"] = [p + f"self_attn.{n}_proj" for n in "qkv"]
            groups[p + "mlp.gate_up_proj"] = [p + "mlp.gate_proj", p + "mlp.up_proj"]
        return groups

    def called_linears(self) -> dict[str, nn.Module]:
        """The decoder Linears a forward calls, by module name: the prunable ones, with a
        joined group's Linear in place of its members."""
        called = dict(self.prunable())
        for joint, members in self.siblings().items():
            parent, _, attr = joint.rpartition(".")
            module = getattr(self.get_submodule(parent), attr)
            if module is not None:
                for name in members:
                    del called[name]
                called[joint] = module
        return called

    def replace(self, name: str, module: nn.Module) -> None:
        parent, _, child = name.rpartition(".")
        setattr(self.get_submodule(parent) if parent else self, child, module)

    def rope(self, positions: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, ...]:
        freqs = positions[..., None].float() * self.inv_freq
        emb = torch.cat((freqs, freqs), dim=-1)
        return emb.cos().to(dtype), emb.sin().to(dtype)

    def step(self, positions: torch.Tensor, cache: KVCache, slots: torch.Tensor, prefill: bool,
             dtype: torch.dtype) -> Step:
        """The Step of a prefill ([1, T] positions) or a decode step ([B, 1])."""
        cos, sin = self.rope(positions, dtype)
        step = Step(positions, cache, slots, prefill, cos[:, None], sin[:, None])  # [B,1,T,D]
        if (prefill and int(positions[0, 0]) > 0
                and positions.shape[1] > decode_op_max_tokens(dtype, self.args)):
            length = int(positions[0, -1]) + 1
            keys = torch.arange(length, device=positions.device)
            step.visible = (keys[None, :] <= positions[0, :, None]).view(1, 1, -1, length)
        return step

    def forward(self, tokens: torch.Tensor, positions: torch.Tensor, cache: KVCache,
                slots: torch.Tensor, prefill: bool) -> torch.Tensor:
        """Logits of the last position of each row (see Step for the two shapes)."""
        x = self.model.embed_tokens(tokens)
        step = self.step(positions, cache, slots, prefill, x.dtype)
        for block in self.model.layers:
            x = block(x, step)
        x = kernels.rms_norm(x[:, -1], self.model.norm, self.args.rms_eps)
        return self.lm_head(x).float()

    def forward_mixed(self, tokens: torch.Tensor, positions: torch.Tensor, slots: torch.Tensor,
                      chunk_tokens: torch.Tensor, chunk_positions: torch.Tensor,
                      chunk_slot: torch.Tensor, cache: KVCache) -> torch.Tensor:
        """A decode step (tokens [B, 1]) and a prompt chunk (chunk_tokens [1, T]) in one pass:
        every Linear reads its weights once for both, so the decode rows wait for the chunk's
        share of the work only, not for a forward of its own. Logits [B + 1, vocab]: the
        decode rows', then the chunk's last position's."""
        b, t = tokens.shape[0], chunk_tokens.shape[1]
        x = self.model.embed_tokens(torch.cat((tokens.view(1, b), chunk_tokens), dim=1))
        if t <= decode_op_max_tokens(x.dtype, self.args):  # the chunk's tokens: decode rows
            step = self.step(torch.cat((positions.view(-1), chunk_positions.view(-1)))[:, None],
                             cache, torch.cat((slots, chunk_slot.expand(t))), False, x.dtype)
            x = x.view(b + t, 1, -1)
        else:
            step = MixedStep(self.step(positions, cache, slots, False, x.dtype),
                             self.step(chunk_positions, cache, chunk_slot, True, x.dtype), b)
        for block in self.model.layers:
            x = block(x, step)
        x = x.reshape(b + t, -1)
        x = kernels.rms_norm(torch.cat((x[:b], x[-1:])), self.model.norm, self.args.rms_eps)
        return self.lm_head(x).float()
