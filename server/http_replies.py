"""OpenAI's response shapes, whole or as server-sent-event chunks, built from the engine's
events (the HTTP API's output side; http_schema.py is its input side)."""

from __future__ import annotations

import json
from abc import ABC, abstractmethod

from submodel.server import http_schema as schema
from submodel.server.api import DoneEvent, FinishEvent, TokenEvent
from submodel.server.generation import Route

DONE = "data: [DONE]\n\n"


def sse(obj: dict) -> str:
    return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"


class Reply(ABC):
    """One OpenAI response shape: whole, or as stream chunks."""

    object_name = chunk_name = id_prefix = ""

    def __init__(self, model: str) -> None:
        self.model = model
        self.id = schema.new_id(self.id_prefix)
        self.created = schema.now()

    def _envelope(self, name: str, route: Route, choices: list[dict]) -> dict:
        return {"id": self.id, "object": name, "created": self.created, "model": self.model,
                "choices": choices, "submodel": schema.routing(route)}

    def whole(self, route: Route, events: list[object]) -> dict:
        finishes = sorted((e for e in events if isinstance(e, FinishEvent)),
                          key=lambda e: e.sample)
        done = next(e for e in events if isinstance(e, DoneEvent))
        body = self._envelope(self.object_name, route, [self.choice(f) for f in finishes])
        body["usage"] = schema.usage(done.prompt_tokens, done.generated_tokens)
        return body

    def opening(self, route: Route, n: int) -> list[dict]:
        return []

    def chunk(self, route: Route, event: object, include_usage: bool) -> dict | None:
        if isinstance(event, TokenEvent) and event.text:
            return self._envelope(self.chunk_name, route, [self.delta(event.sample, event.text)])
        if isinstance(event, FinishEvent):
            return self._envelope(self.chunk_name, route,
                                  [self.finish(event.sample, event.finish_reason)])
        if isinstance(event, DoneEvent) and include_usage:
            body = self._envelope(self.chunk_name, route, [])
            body["usage"] = schema.usage(event.prompt_tokens, event.generated_tokens)
            return body
        return None

    @abstractmethod
    def choice(self, f: FinishEvent) -> dict:
        """One choice of the whole response."""

    @abstractmethod
    def delta(self, index: int, text: str) -> dict:
        """A stream chunk's choice carrying new text."""

    @abstractmethod
    def finish(self, index: int, reason: str) -> dict:
        """A stream chunk's choice closing sample `index`."""


class CompletionReply(Reply):
    object_name, chunk_name, id_prefix = "text_completion", "text_completion", "cmpl"

    def choice(self, f: FinishEvent) -> dict:
        return {"index": f.sample, "text": f.text, "finish_reason": f.finish_reason,
                "logprobs": None}

    def delta(self, index: int, text: str) -> dict:
        return {"index": index, "text": text, "finish_reason": None, "logprobs": None}

    def finish(self, index: int, reason: str) -> dict:
        return {"index": index, "text": "", "finish_reason": reason, "logprobs": None}


class ChatReply(Reply):
    object_name, chunk_name, id_prefix = "chat.completion", "chat.completion.chunk", "chatcmpl"

    def choice(self, f: FinishEvent) -> dict:
        return {"index": f.sample, "message": {"role": "assistant", "content": f.text},
                "finish_reason": f.finish_reason, "logprobs": None}

    def opening(self, route: Route, n: int) -> list[dict]:
        return [self._envelope(self.chunk_name, route, [
            {"index": i, "delta": {"role": "assistant", "content": ""}, "finish_reason": None,
             "logprobs": None}]) for i in range(n)]

    def delta(self, index: int, text: str) -> dict:
        return {"index": index, "delta": {"content": text}, "finish_reason": None,
                "logprobs": None}

    def finish(self, index: int, reason: str) -> dict:
        return {"index": index, "delta": {}, "finish_reason": reason, "logprobs": None}
