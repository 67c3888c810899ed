"""`--weights gguf`: a GGUF's Q5_0 and Q8_0 blocks as the int8 kernel's codes and scales."""

import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType, quants

from submodel.pruning.store import open_store
from submodel.server import gguf_blocks, kernels
from submodel.server.engine import Engine, choose_weights
from submodel.server.masking import make_strategy
from submodel.server.model import Linear


@pytest.mark.parametrize("kind, unpack", [(GGMLQuantizationType.Q5_0, gguf_blocks.unpack_q5_0),
                                          (GGMLQuantizationType.Q8_0, gguf_blocks.unpack_q8_0)])
def test_codes_times_scales_are_exactly_the_blocks_values(kind, unpack):
    weights = np.random.default_rng(0).normal(size=(6, 96)).astype(np.float32)
    raw = quants.quantize(weights, kind)
    codes, scales = unpack(raw)
    assert codes.dtype == torch.int8 and codes.shape == (6, 96) and scales.shape == (6, 3)
    values = (codes.float().view(6, 3, 32) * scales[..., None]).view(6, 96)
    assert np.array_equal(values.numpy(), quants.dequantize(raw, kind))


def test_state_dict_names_map_to_gguf_tensors():
    assert gguf_blocks.gguf_name("model.layers.3.mlp.up_proj.weight") == "blk.3.ffn_up.weight"
    assert gguf_blocks.gguf_name("model.layers.0.self_attn.o_proj.weight") == \
        "blk.0.attn_output.weight"
    assert gguf_blocks.gguf_name("model.embed_tokens.weight") == "token_embd.weight"
    assert gguf_blocks.gguf_name("model.layers.0.input_layernorm.weight") is None


def int8_coded(x: torch.Tensor) -> torch.Tensor:
    """x as the int8 kernel codes it before its dot products: per group of 32, round(x * 127 /
    max|x|) (to nearest even) times max|x| / 127."""
    groups = x.view(-1, 32)
    top = groups.abs().amax(1, keepdim=True)
    inv = torch.where(top > 0, torch.full_like(top, 127.0) / top, 0)  # IEEE division, as in C++
    return ((groups * inv).round() * (top / 127)).view(x.shape)


class TwoLinears(torch.nn.Module):
    def __init__(self, gen: torch.Generator) -> None:
        super().__init__()
        self.a = Linear(torch.randn(8, 64, generator=gen))
        self.b = Linear(torch.randn(8, 64, generator=gen))
        self.lm_head = Linear(torch.randn(5, 64, generator=gen))

    def prunable(self) -> dict:
        return {"a": self.a, "b": self.b}

    def siblings(self) -> dict:
        return {}

    def replace(self, name: str, module: torch.nn.Module) -> None:
        setattr(self, name, module)


def test_fused_gguf_weights_take_the_given_blocks_and_round_the_rest():
    gen = torch.Generator().manual_seed(0)
    model = TwoLinears(gen)
    b_weight = model.b.weight.clone()
    codes = torch.randint(-16, 16, (8, 64), generator=gen, dtype=torch.int8)
    scales = torch.rand(8, 2, generator=gen).half()
    masks = {"python": {n: torch.full((8, 8), 0xFF, dtype=torch.uint8) for n in ("a.weight",
                                                                               "b.weight")}}
    strategy = make_strategy("fused", model, masks, None, "gguf",
                             {"a.weight": (codes, scales)})
    assert model.a.codes is codes and model.a.scales is scales
    want_codes, _ = kernels.quantize_q8(b_weight)
    assert torch.equal(model.b.codes, want_codes)
    strategy.set_rows(["python"])
    x = torch.randn(1, 1, 64, generator=gen)
    values = (codes.float().view(8, 2, 32) * scales[..., None]).view(8, 64)
    torch.testing.assert_close(model.a(x)[0, 0], values @ int8_coded(x[0, 0]), atol=1e-4,
                               rtol=1e-5)
    with pytest.raises(ValueError, match="codes of shape"):
        make_strategy("fused", TwoLinears(gen), masks, None, "gguf",
                      {"a.weight": (codes[:4], scales[:4])})


def test_gguf_weights_need_a_store_pruned_from_a_gguf(tiny_store):
    with pytest.raises(ValueError, match="needs a store pruned from a GGUF"):
        Engine(open_store(tiny_store), strategy="fused", weights="gguf")


def test_auto_weights_stay_full_where_gguf_blocks_cannot_be_served(tiny_store):
    store = open_store(tiny_store)  # pruned from a Hugging Face directory
    weights, why = choose_weights(store, "fused")
    assert weights == "full" and "not a GGUF file" in why
    assert choose_weights(store, "swap") == (
        "full", "the swap strategy holds the weights as stored")
    engine = Engine(store, strategy="fused", weights="auto", max_batch=2)
    assert engine.weights == "full" and not engine.strategy.int8
