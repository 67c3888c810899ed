import json
import sys

from submodel.bench.ide import Settings, edit_session
from submodel.cli import main

TEXT = "".join(f"def function_{i}(value):\n    return value * {i} + offset_{i}\n\n"
               for i in range(200))


def test_the_session_types_the_file_forward_from_a_fixed_line():
    s = Settings(pauses=30, context_tokens=300, abandon_fraction=0.3)
    pauses = edit_session(TEXT, len, s)  # one token per character
    assert len(pauses) == 30 and 0 < sum(p.abandoned for p in pauses) < 30
    cursors = []
    for p in pauses:
        start = TEXT.index(p.prefix)
        cursor = start + len(p.prefix)
        assert TEXT.startswith(p.suffix, cursor) and p.suffix.count("\n") <= 8
        assert len(p.prefix) <= s.context_tokens and TEXT[start - 1] == "\n"  # a line start
        cursors.append(cursor)
    assert all(b > a for a, b in zip(cursors, cursors[1:], strict=False))
    starts = [TEXT.index(p.prefix) for p in pauses]
    assert len(set(starts)) < len(starts) / 2  # the context's start stays put while it fits
    assert edit_session(TEXT, len, s) == pauses  # seeded


def test_quick_run_on_the_editor_store(editor_store, tmp_path):
    source = tmp_path / "typed.py"
    source.write_text(TEXT)
    assert main(["bench", "ide", str(editor_store), "--file", str(source), "--pauses", "6",
                 "--context-tokens", "200", "--max-tokens", "4", "--prefill-chunk", "16",
                 "--llama-bench", sys.executable + "-missing", "--out", str(tmp_path)]) == 0
    r = json.loads((tmp_path / "ide.json").read_text())
    assert r["engine"] == {"strategy": "fused", "weights": "full"}  # auto, resolved: no GGUF
    no_cache, cache = r["session"]["no_cache"]["summary"], r["session"]["cache"]["summary"]
    assert no_cache["requests"] == cache["requests"] == 6
    assert no_cache["cache_hit_rate"] == 0 < cache["cache_hit_rate"]
    assert r["session"]["extension"]["ttft_in_steps"] > 0
    for name in ("no_cache", "cache"):  # the same session; an abandoned one may finish first
        requests = r["session"][name]["requests"]
        assert [q["abandoned"] for q in requests] == [
            q["abandoned"] for q in r["session"]["cache"]["requests"]]
        assert all(q["reason"] in (("cancelled", "length", "stop") if q["abandoned"]
                                   else ("length", "stop")) for q in requests)
    for name in ("auto", "8", "32", "256", "whole"):
        assert r["admission"][name]["long_prompt_ttft_s"] > 0
    assert "error" in r["llama_cpp"] or "skipped" in r["llama_cpp"]
    assert "TTFT p50" in (tmp_path / "ide.md").read_text()


def test_bad_flags_are_one_line_errors(editor_store, tmp_path, capsys):
    for flags in (["--phases", "nope"], ["--admission-chunks", "0"], ["--prefill-chunk", "x"],
                  ["--file", str(tmp_path / "missing.py")], ["--language", "go"]):
        assert main(["bench", "ide", str(editor_store), *flags, "--out", str(tmp_path)]) == 2
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and err


def test_llama_cpp_rounds_interleave_and_each_side_keeps_its_best(editor_store, tmp_path):
    from submodel.bench import ide
    from submodel.pruning.store import open_store
    from submodel.server.engine import Engine

    calls = tmp_path / "calls"
    fake = tmp_path / "llama-bench"  # one repetition per call; its speed rises each time
    fake.write_text(
        f"#!{sys.executable}\nimport json, pathlib\n"
        f"p = pathlib.Path({str(calls)!r})\nn = len(p.read_text()) if p.exists() else 0\n"
        "p.write_text('x' * (n + 1))\n"
        "print(json.dumps([{'n_prompt': 512, 'n_gen': 0, 'avg_ts': 100.0 + n,"
        " 'build_commit': 'fake', 'model_type': 'tiny'},"
        " {'n_prompt': 0, 'n_gen': 64, 'avg_ts': 10.0 + n}]))\n")
    fake.chmod(0o755)
    engine = Engine(open_store(editor_store), strategy="fused", prefill_chunk=0)
    engine.start()
    try:
        r = ide.llama_cpp_phase(str(fake), tmp_path / "model.gguf", 2, engine, "python", TEXT[:400],
                                rounds=3)
    finally:
        engine.stop()
    assert calls.read_text() == "xxx"
    assert r["rounds"]["llama_cpp"] == {"decode": [10.0, 11.0, 12.0],
                                        "prefill": [100.0, 101.0, 102.0]}
    assert r["llama_cpp"] == {"decode": 12.0, "prefill": 102.0}
    assert len(r["read_gb_s"]) == 3 and all(gb > 0 for gb in r["read_gb_s"])
    assert "Host read bandwidth before each round" in "\n".join(ide._llama_cpp_lines(r))
    for lang in ("dense", "python"):
        runs = r["rounds"]["ours"][lang]
        assert len(runs["decode"]) == len(runs["prefill"]) == 3
        assert r["ours"][lang]["decode_tokens_per_s"] == max(runs["decode"])
        assert r["decode_vs_llama_cpp"][lang] == max(runs["decode"]) / 12.0
