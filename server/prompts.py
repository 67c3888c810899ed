"""Request -> prompt token ids, in the model's own formats: plain text, fill-in-the-middle from
the tokenizer's FIM tokens, chat from the tokenizer's chat template.

Nothing here names a model: the FIM tokens are looked up in the tokenizer's vocabulary under
the spellings code-model families use, and a tokenizer without them cannot do FIM.
"""

from __future__ import annotations

from dataclasses import dataclass

from submodel.server.api import GenerationRequest, InvalidRequestError, Reason

# (prefix, suffix, middle) spellings, prompt order prefix-suffix-middle (PSM).
FIM_SPELLINGS = (
    ("<|fim_prefix|>", "<|fim_suffix|>", "<|fim_middle|>"),
    ("<fim_prefix>", "<fim_suffix>", "<fim_middle>"),
    ("<fim-prefix>", "<fim-suffix>", "<fim-middle>"),
    ("<｜fim▁begin｜>", "<｜fim▁hole｜>", "<｜fim▁end｜>"),
    ("▁<PRE>", "▁<SUF>", "▁<MID>"),
)
ROLES = ("system", "user", "assistant")


@dataclass(frozen=True)
class FimTokens:
    prefix: int
    suffix: int
    middle: int


def find_fim_tokens(tokenizer) -> FimTokens | None:
    """The tokenizer's FIM token ids, or None if it has no complete set."""
    vocab = tokenizer.get_vocab()
    for spelling in FIM_SPELLINGS:
        if all(t in vocab for t in spelling):
            return FimTokens(*(vocab[t] for t in spelling))
    return None


class PromptBuilder:
    """Turns a GenerationRequest into the token ids the model is prompted with."""

    def __init__(self, tokenizer) -> None:
        self.tokenizer = tokenizer
        self.fim = find_fim_tokens(tokenizer)
        self.chat_template = getattr(tokenizer, "chat_template", None)

    @property
    def supports_fim(self) -> bool:
        return self.fim is not None

    @property
    def supports_chat(self) -> bool:
        return bool(self.chat_template)

    def ids(self, request: GenerationRequest) -> list[int]:
        if request.messages:
            return self._chat(request)
        if request.suffix is not None:
            return self._fill_in_the_middle(request.prompt, request.suffix)
        return self.tokenizer.encode(request.prompt)

    def _fill_in_the_middle(self, prefix: str, suffix: str) -> list[int]:
        if self.fim is None:
            raise InvalidRequestError(
                "this model's tokenizer has no fill-in-the-middle tokens: send the text before "
                "the cursor as `prompt` without `suffix`", Reason.FIM_UNSUPPORTED, "suffix")
        encode = self._encode_plain
        return ([self.fim.prefix, *encode(prefix), self.fim.suffix, *encode(suffix),
                 self.fim.middle])

    def _chat(self, request: GenerationRequest) -> list[int]:
        if not self.supports_chat:
            raise InvalidRequestError(
                "this model's tokenizer has no chat template: send a `prompt` instead of "
                "`messages`", Reason.CHAT_UNSUPPORTED, "messages")
        from jinja2 import TemplateError

        turns = [{"role": m.role, "content": m.content} for m in request.messages]
        try:
            text = self.tokenizer.apply_chat_template(turns, tokenize=False,
                                                      add_generation_prompt=True)
        except TemplateError as e:  # templates reject e.g. a bad order of roles
            raise InvalidRequestError(f"the chat template refused these messages: {e}",
                                      field="messages") from None
        # The rendered template spells its special tokens as text: parse them as such.
        return self.tokenizer.encode(text, add_special_tokens=False)

    def _encode_plain(self, text: str) -> list[int]:
        """User text, where a special token's spelling is just text (cannot inject FIM or
        chat markers)."""
        if not text:
            return []
        return self.tokenizer(text, add_special_tokens=False,
                              split_special_tokens=True)["input_ids"]


def validate_messages(messages) -> None:
    """Roles and contents a chat template can render; raises InvalidRequestError."""
    for i, m in enumerate(messages):
        if m.role not in ROLES:
            raise InvalidRequestError(f"messages[{i}].role must be one of {', '.join(ROLES)} "
                                      f"(got {m.role!r})", field="messages")
    if messages and messages[-1].role == "assistant":
        raise InvalidRequestError("the last message must not be the assistant's: the model "
                                  "writes the next assistant turn", field="messages")
