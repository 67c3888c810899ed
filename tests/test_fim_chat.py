"""Fill-in-the-middle and chat over gRPC: the prompt is built from the tokenizer's own FIM
tokens and chat template; a model without them is refused with a reason programs can read."""

from __future__ import annotations

import grpc
import pytest
from serving import serve_store

from submodel.server.api import GenerationRequest, Reason
from submodel.server.errors import reason_of
from submodel.v1 import submodel_pb2 as pb

PREFIX = "def add(a, b):\n    "
SUFFIX = "\n\nprint(add(1, 2))\n"
JAVA_PREFIX = "public class Main {\n    public static int gcd(int a, int b) {\n        "
JAVA_SUFFIX = "\n    }\n    public static void main(String[] args) {\n" \
              "        System.out.println(gcd(4, 6));\n    }\n}\n"
FIM_MARKERS = 3  # prefix, suffix and middle tokens


@pytest.fixture(scope="module")
def editor(editor_store):
    s = serve_store(editor_store)
    yield s
    s.stop()


@pytest.fixture(scope="module")
def plain(tiny_store):
    s = serve_store(tiny_store)
    yield s
    s.stop()


def chat_prompt_tokens(messages: list[tuple[str, str]]) -> int:
    """Tokens of CHAT_TEMPLATE rendered by hand: <|im_start|> and <|im_end|> are one token
    each, the rest one per byte."""
    turns = sum(1 + len(f"{role}\n{content}".encode()) + 1 + len(b"\n")
                for role, content in messages)
    return turns + 1 + len(b"assistant\n")


def test_fim_prompt_is_prefix_suffix_middle(editor):
    request = pb.GenerateRequest(prompt=PREFIX, suffix=SUFFIX, language="python", max_tokens=6)
    with editor.client() as c:
        r = c.generate(request)
        plain_completion = c.generate(pb.GenerateRequest(prompt=PREFIX, language="python",
                                                         max_tokens=6))
    assert r.usage.prompt_tokens == len(PREFIX.encode()) + len(SUFFIX.encode()) + FIM_MARKERS
    assert r.completions[0].tokens >= 1
    # the suffix changes what the model sees, so the greedy completion's prompt differs
    assert plain_completion.usage.prompt_tokens == len(PREFIX.encode())
    ids = editor.engine.prompts.ids(GenerationRequest(PREFIX, "python", suffix=SUFFIX))
    vocab = editor.engine.tokenizer.get_vocab()
    assert ids[0] == vocab["<|fim_prefix|>"] and ids[-1] == vocab["<|fim_middle|>"]
    assert ids[1 + len(PREFIX.encode())] == vocab["<|fim_suffix|>"]


def test_fim_routes_by_prefix_and_suffix(editor):
    with editor.client() as c:
        by_content = c.generate(pb.GenerateRequest(prompt=JAVA_PREFIX, suffix=JAVA_SUFFIX,
                                                   max_tokens=2))
        by_name = c.generate(pb.GenerateRequest(prompt="x = ", suffix="", filename="a.py",
                                                max_tokens=2))
        # an empty prefix is fine when the suffix has the code (cursor at the file's start)
        at_start = c.generate(pb.GenerateRequest(prompt="", suffix=JAVA_SUFFIX, max_tokens=2))
    assert (by_content.routing.language, by_content.routing.source) == ("java", "content")
    assert (by_name.routing.language, by_name.routing.source) == ("python", "filename")
    assert at_start.usage.prompt_tokens == len(JAVA_SUFFIX.encode()) + FIM_MARKERS


def test_chat_uses_the_template(editor):
    messages = [("system", "You write Python."), ("user", "Write add(a, b).")]
    request = pb.GenerateRequest(messages=[pb.Message(role=r, content=c) for r, c in messages],
                                 max_tokens=5, language="dense")
    with editor.client() as c:
        r = c.generate(request)
        again = c.generate(request)
    assert r.usage.prompt_tokens == chat_prompt_tokens(messages)
    assert r.completions[0].text == again.completions[0].text


@pytest.mark.parametrize("fields, field, fix", [
    ({"prompt": "x", "messages": [pb.Message(role="user", content="hi")]}, "messages",
     "either messages"),
    ({"messages": [pb.Message(role="robot", content="hi")]}, "messages", "role must be"),
    ({"messages": [pb.Message(role="assistant", content="hi")]}, "messages", "last message"),
    ({"prompt": "", "suffix": ""}, "prompt", "both empty"),
])
def test_bad_prompt_forms(editor, fields, field, fix):
    with editor.client() as c, pytest.raises(grpc.RpcError) as e:
        c.generate(pb.GenerateRequest(max_tokens=2, **fields))
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert fix in e.value.details()
    assert reason_of(e.value) == (Reason.INVALID_FIELD, field)


@pytest.mark.parametrize("fields, reason, says", [
    ({"prompt": PREFIX, "suffix": SUFFIX}, Reason.FIM_UNSUPPORTED, "no fill-in-the-middle"),
    ({"messages": [pb.Message(role="user", content="hi")]}, Reason.CHAT_UNSUPPORTED,
     "no chat template"),
])
def test_model_without_fim_or_template(plain, fields, reason, says):
    with plain.client() as c, pytest.raises(grpc.RpcError) as e:
        c.generate(pb.GenerateRequest(max_tokens=2, **fields))
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert says in e.value.details()
    assert reason_of(e.value)[0] == reason


def test_reasons_of_other_failures(plain):
    with plain.client() as c:
        with pytest.raises(grpc.RpcError) as e:
            c.generate(pb.GenerateRequest(prompt="x" * 600, max_tokens=2))
        assert reason_of(e.value) == (Reason.PROMPT_TOO_LONG, "prompt")
        with pytest.raises(grpc.RpcError) as e:
            c.generate(pb.GenerateRequest(prompt="x", n=99))
        assert reason_of(e.value) == (Reason.INVALID_FIELD, "n")
        with pytest.raises(grpc.RpcError) as e:
            c.generate(pb.GenerateRequest(prompt="x", language="cobol"))
        assert e.value.code() == grpc.StatusCode.NOT_FOUND
        assert reason_of(e.value) == (Reason.UNKNOWN_LANGUAGE, "language")


def test_unauthenticated_reason(tiny_store):
    s = serve_store(tiny_store, token="right")
    try:
        with s.client(token="wrong") as c, pytest.raises(grpc.RpcError) as e:
            c.generate(pb.GenerateRequest(prompt="x", max_tokens=1))
        assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert reason_of(e.value)[0] == Reason.UNAUTHENTICATED
    finally:
        s.stop()
