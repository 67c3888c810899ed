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
    for name in ("8", "32", "256", "whole"):
        assert r["admission"][name]["long_prompt_ttft_s"] > 0
    assert "error" in r["llama_cpp"] or "skipped" in r["llama_cpp"]
    assert "TTFT p50" in (tmp_path / "ide.md").read_text()


def test_bad_flags_are_one_line_errors(editor_store, tmp_path, capsys):
    for flags in (["--phases", "nope"], ["--admission-chunks", "0"],
                  ["--file", str(tmp_path / "missing.py")], ["--language", "go"]):
        assert main(["bench", "ide", str(editor_store), *flags, "--out", str(tmp_path)]) == 2
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and err
