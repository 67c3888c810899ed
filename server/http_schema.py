"""OpenAI's and Tabby's request bodies -> `Job`, and engine results -> their response shapes.

Fields follow OpenAI's completions and chat completions APIs; a field we cannot honour with a
non-neutral value (logprobs, echo, penalties, tools, ...) is refused with 400 rather than
ignored, other unknown fields are ignored (clients send extras such as `user`). Tabby's
schema is told apart by its `segments` object.
"""

from __future__ import annotations

import time
import uuid

from submodel.server.api import InvalidRequestError, Message, SamplingParams
from submodel.server.generation import (
    DEFAULT_MAX_TOKENS,
    MAX_FILENAME_CHARS,
    MAX_MESSAGES,
    Job,
    Route,
    check_stop,
)
from submodel.server.prompts import ROLES
from submodel.vocabulary import DENSE

AUTO = "auto"
TABBY_MAX_TOKENS = 64  # Tabby's own default for an editor completion
# Fields that change the output in ways we do not implement: value -> allowed if neutral.
NEUTRAL = {
    "logprobs": (None, False, 0), "top_logprobs": (None, 0), "echo": (None, False),
    "best_of": (None, 1), "presence_penalty": (None, 0), "frequency_penalty": (None, 0),
    "logit_bias": (None, {}), "tools": (None, []), "functions": (None, []),
    "tool_choice": (None, "none"), "response_format": (None, {"type": "text"}),
}
MISSING = object()


def bad(field: str, message: str) -> InvalidRequestError:
    return InvalidRequestError(message, field=field)


def get_field(body: dict, name: str, kinds: tuple[type, ...], what: str, default=None):
    """body[name] if of one of `kinds` (null = absent), else 400 naming the field."""
    value = body.get(name)
    if value is None:
        return default
    if isinstance(value, bool) and bool not in kinds or not isinstance(value, kinds):
        raise bad(name, f"{name} must be {what}")
    return value


def _neutral_only(body: dict) -> None:
    for name, allowed in NEUTRAL.items():
        if body.get(name, None) not in allowed:
            raise bad(name, f"{name} is not supported by this server (leave it out)")


def _stop(body: dict) -> tuple[str, ...]:
    stop = body.get("stop")
    if stop is None:
        return ()
    if isinstance(stop, str):
        stop = [stop]
    if not isinstance(stop, list) or not all(isinstance(s, str) for s in stop):
        raise bad("stop", "stop must be a string or a list of strings")
    check_stop(stop)
    return tuple(stop)


def sampling(body: dict, max_tokens_names: tuple[str, ...] = ("max_tokens",),
             default_max_tokens: int = DEFAULT_MAX_TOKENS) -> SamplingParams:
    """OpenAI's sampling fields, with OpenAI's defaults (temperature 1, top_p 1, n 1)."""
    max_tokens = default_max_tokens
    for name in max_tokens_names:
        max_tokens = get_field(body, name, (int,), "an integer", max_tokens)
    seed = get_field(body, "seed", (int,), "an integer")
    if seed is not None and seed < 0:
        raise bad("seed", "seed must be >= 0")
    return SamplingParams(
        max_tokens=max_tokens,
        temperature=float(get_field(body, "temperature", (int, float), "a number", 1.0)),
        top_p=float(get_field(body, "top_p", (int, float), "a number", 1.0)),
        top_k=get_field(body, "top_k", (int,), "an integer", 0),
        n=get_field(body, "n", (int,), "an integer", 1), stop=_stop(body), seed=seed)


def model_hint(body: dict, base_name: str) -> str | None:
    """The `model` field as a router hint: None (route by content) for auto, the base model's
    name or no model; a language or "dense" forces that sub-model."""
    model = get_field(body, "model", (str,), "a string")
    if model is None or model.strip() in (AUTO, base_name, ""):
        return None
    return model


def _filename(body: dict, name: str = "filename") -> str:
    filename = get_field(body, name, (str,), "a string", "")
    if len(filename) > MAX_FILENAME_CHARS:
        raise bad(name, f"{name} is longer than {MAX_FILENAME_CHARS} characters")
    return filename


def completion_job(body: dict, base_name: str) -> Job:
    """POST /v1/completions (OpenAI). Extension: `filename` routes like the gRPC field."""
    _neutral_only(body)
    prompt = body.get("prompt", MISSING)
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
        prompt = prompt[0]
    if not isinstance(prompt, str):
        raise bad("prompt", "prompt must be a string (one prompt per request)")
    suffix = get_field(body, "suffix", (str,), "a string")
    if not prompt and suffix is None:
        raise bad("prompt", "prompt is empty: send the code to complete")
    return Job(params=sampling(body), prompt=prompt, suffix=suffix,
               filename=_filename(body), hint=model_hint(body, base_name))


def _content(i: int, content) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # content parts: text only
        texts = [p.get("text") for p in content if isinstance(p, dict)]
        if all(isinstance(p, dict) and p.get("type") == "text" for p in content) and all(
                isinstance(t, str) for t in texts):
            return "".join(texts)
    raise bad("messages", f"messages[{i}].content must be a string or a list of text parts")


def chat_job(body: dict, base_name: str) -> Job:
    """POST /v1/chat/completions (OpenAI)."""
    _neutral_only(body)
    raw = body.get("messages")
    if not isinstance(raw, list) or not raw:
        raise bad("messages", "messages must be a non-empty list of {role, content}")
    if len(raw) > MAX_MESSAGES:
        raise bad("messages", f"at most {MAX_MESSAGES} messages")
    messages = []
    for i, m in enumerate(raw):
        if not isinstance(m, dict) or m.get("role") not in (*ROLES, "developer"):
            raise bad("messages", f"messages[{i}] must be an object whose role is one of "
                                  f"{', '.join(ROLES)}")
        role = "system" if m["role"] == "developer" else m["role"]  # OpenAI's newer name
        messages.append(Message(role, _content(i, m.get("content"))))
    params = sampling(body, ("max_tokens", "max_completion_tokens"))
    return Job(params=params, messages=tuple(messages), filename=_filename(body),
               hint=model_hint(body, base_name))


def is_tabby(body: dict) -> bool:
    return "segments" in body


def tabby_job(body: dict, known_language) -> Job:
    """Tabby's POST /v1/completions: `segments.prefix/suffix` fill the middle,
    `segments.filepath` is the file name, `language` the hint when it names a language we
    route to (Tabby sends VS Code's language ids; others route by file name and content).
    Greedy unless `temperature` says otherwise; at most TABBY_MAX_TOKENS tokens."""
    segments = body.get("segments")
    if not isinstance(segments, dict):
        raise bad("segments", "segments must be an object with prefix and suffix")
    prefix = get_field(segments, "prefix", (str,), "a string", "")
    suffix = get_field(segments, "suffix", (str,), "a string", "")
    if not prefix and not suffix:
        raise bad("segments", "segments.prefix and segments.suffix are both empty")
    language = get_field(body, "language", (str,), "a string")
    seed = get_field(body, "seed", (int,), "an integer")
    params = SamplingParams(
        max_tokens=TABBY_MAX_TOKENS, seed=seed,
        temperature=float(get_field(body, "temperature", (int, float), "a number", 0.0)))
    hint = known_language(language) if language else None
    return Job(params=params, prompt=prefix, suffix=suffix,
               filename=_filename(segments, "filepath"), hint=hint)


# ---- responses -------------------------------------------------------------------------

def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex}"


def now() -> int:
    return int(time.time())


def routing(route: Route) -> dict:
    """The extension field every response carries: where the request went."""
    return {"language": route.language, "confidence": round(route.confidence, 4),
            "source": route.source, "sub_model": route.sub_model}


def route_headers(route: Route) -> dict[str, str]:
    return {"x-submodel-language": route.language, "x-submodel-route-source": route.source,
            "x-submodel-confidence": f"{route.confidence:.4f}"}


def usage(prompt_tokens: int, completion_tokens: int) -> dict:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def model_list(base_name: str, languages: tuple[str, ...], created: int) -> dict:
    """/v1/models: auto (route by content), the base name (same), dense and each language."""
    names = [AUTO, base_name, DENSE, *languages]
    return {"object": "list", "data": [
        {"id": name, "object": "model", "created": created, "owned_by": "submodel"}
        for name in dict.fromkeys(names)]}
