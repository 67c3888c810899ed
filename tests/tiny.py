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
# With `editor=True`: fill-in-the-middle tokens and a chat template, as a code-instruct model's
# tokenizer has them (ids 258..261).
EDITOR_SPECIALS = ["<|fim_prefix|>", "<|fim_suffix|>", "<|fim_middle|>", "<|im_start|>"]
EDITOR_VOCAB = 256 + len(SPECIALS) + len(EDITOR_SPECIALS)
CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def tiny_tokenizer(editor: bool = False) -> PreTrainedTokenizerFast:
    """Byte-level BPE without merges: every byte is a token, plus Qwen's two end tokens (and
    with `editor`, FIM tokens and a chat template)."""
    vocab = {ch: i for i, ch in enumerate(sorted(pre_tokenizers.ByteLevel.alphabet()))}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(SPECIALS + (EDITOR_SPECIALS if editor else []))
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>",
                                   pad_token="<|endoftext|>", bos_token="<|endoftext|>")
    if editor:
        fast.chat_template = CHAT_TEMPLATE
    return fast


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


def save_tiny(path, arch: str = "qwen2", seed: int = 0, editor: bool = False, **overrides):
    """An HF directory `submodel prune --model PATH` accepts (`editor`: see EDITOR_SPECIALS)."""
    if editor:
        overrides.setdefault("vocab_size", EDITOR_VOCAB)
    model = tiny_model(arch, seed, **overrides)
    model.save_pretrained(str(path))
    tiny_tokenizer(editor).save_pretrained(str(path))
    return path
