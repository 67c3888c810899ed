"""Tiny random models and a byte-level tokenizer, built in-process (no files, no network)."""

from __future__ import annotations

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import (
    AutoModelForCausalLM,
    LlamaConfig,
    PreTrainedTokenizerFast,
    Qwen2Config,
)

SPECIALS = ["<|endoftext|>", "<|im_end|>"]


def tiny_tokenizer() -> PreTrainedTokenizerFast:
    """Byte-level BPE without merges: every byte is a token, plus Qwen's two end tokens."""
    vocab = {ch: i for i, ch in enumerate(sorted(pre_tokenizers.ByteLevel.alphabet()))}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(SPECIALS)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>",
                                   pad_token="<|endoftext|>", bos_token="<|endoftext|>")


def tiny_config(arch: str = "qwen2", vocab_size: int = 258, **overrides):
    common = dict(vocab_size=vocab_size, hidden_size=64, intermediate_size=96,
                  num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2,
                  max_position_embeddings=512, rms_norm_eps=1e-6, tie_word_embeddings=False,
                  bos_token_id=256, eos_token_id=257, pad_token_id=256)
    common.update(overrides)
    if arch == "qwen2":
        return Qwen2Config(**common)
    if arch == "llama":
        return LlamaConfig(**common)
    raise ValueError(arch)


def tiny_model(arch: str = "qwen2", seed: int = 0, **overrides):
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(tiny_config(arch, **overrides), dtype=torch.float32)
    with torch.no_grad():  # random init has near-zero biases; make them matter in tests
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.normal_(0, 0.1)
    return model.eval()


def save_tiny(path, arch: str = "qwen2", seed: int = 0, **overrides):
    """An HF directory `submodel prune --model PATH` accepts."""
    model = tiny_model(arch, seed, **overrides)
    model.save_pretrained(str(path))
    tiny_tokenizer().save_pretrained(str(path))
    return path
