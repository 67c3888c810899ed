import json
import math

from submodel.bench import engine as bench
from submodel.cli import main
from submodel.pruning.store import open_store

STRATEGIES = {"swap", "fused", "replicas"}
CLOCKS = {"wall", "cpu"}


def positive(value: dict) -> bool:
    return set(value) == CLOCKS and all(v > 0 and math.isfinite(v) for v in value.values())


def test_quick_run_reports_every_figure(tiny_store, tmp_path, capsys):
    assert main(["bench", "engine", str(tiny_store), "--quick", "--out", str(tmp_path)]) == 0
    r = json.loads((tmp_path / "engine.json").read_text())
    assert (tmp_path / "engine.md").read_text().count("\n|") >= len(r["targets"])
    assert r["settings"]["new_tokens"] == bench.QUICK.new_tokens
    assert not r["skipped"]

    decode = {(d["dtype"], d["strategy"], d["language"]): d for d in r["decode"]}
    assert set(decode) == {(dt, st, lang) for dt in bench.DTYPES for st in STRATEGIES
                           for lang in ("dense", "python")}
    for d in decode.values():
        assert positive(d["tokens_per_s"]) and positive(d["hf_tokens_per_s"])
        assert d["prefill_ms"] > 0
        assert math.isclose(d["vs_hf"]["wall"],
                            d["tokens_per_s"]["wall"] / d["hf_tokens_per_s"]["wall"])

    assert {(s["dtype"], s["strategy"]) for s in r["steps"]} == {
        (dt, st) for dt in bench.DTYPES for st in STRATEGIES}
    for s in r["steps"]:
        parts = s["parts_ms"]
        assert all(positive(parts[p]) for p in ("forward", "linears", "lm_head",
                                                 "torch_dense_forward", "engine_step"))
        # the timed Linears nest inside the forward they were timed in
        assert parts["rest_of_forward"]["wall"] >= 0 and parts["rest_of_forward"]["cpu"] >= 0
        assert s["floor_ms"] > 0 and s["weight_bytes"] > 0 and positive(s["vs_torch_dense"])
        batch = s.get("batch_forward_ms")  # only a strategy that mixes languages in one step
        assert (batch is not None) == (s["strategy"] == "fused")
        assert batch is None or all(positive(batch[k]) for k in ("dense", "one_language", "mixed"))

    assert [s["dtype"] for s in r["switch"]] == list(bench.DTYPES)
    for s in r["switch"]:
        assert len(s["switches"]) == bench.QUICK.switches
        assert s["language"]["count"] == 3 and s["dense"]["count"] == 2
        assert positive(s["language"]["vs_step"]) and positive(s["dense"]["vs_step"])
        assert 0 <= s["language"]["changed"] < s["dense"]["changed"] <= 1

    assert {ld["strategy"] for ld in r["load"]} == STRATEGIES
    for ld in r["load"]:
        n = bench.QUICK.concurrency * bench.QUICK.load_tokens
        assert 0 < ld["mixed"]["runs"][0]["tokens"] <= n
        assert positive(ld["mixed_vs_dense"]) and positive(ld["mixed_vs_one_language"])

    m = r["memory"]
    store = open_store(tiny_store)
    assert m["packed_mask_bytes"] == sum(
        t.numel() for lang in store.languages for t in store.load_mask(lang).values())
    assert [p["strategy"] for p in m["probes"]] == ["dense", "swap", "fused", "replicas"]
    assert all(p["rss"] >= p["pss_anon"] > 0 for p in m["probes"])
    assert all("added_rss_vs_masks" in p for p in m["probes"][1:])

    kinds = {t["figure"].split(",")[0] for t in r["targets"]}
    assert kinds == {"decode tok/s vs HF generate", "decode tok/s vs HF generate float32",
                     "masked step vs torch-dense step",
                     "fraction of bandwidth floor", "mask switch / decode step",
                     "batch decode step throughput mixed 4-lang / one-lang",
                     "mixed 4-lang / dense-only throughput", "mixed 4-lang / one-lang throughput",
                     "RSS added by 4 masks / packed masks", "PSS added by 4 masks / packed masks"}
    assert all(isinstance(t["met"], bool) for t in r["targets"])
    for t in r["targets"]:  # the floor bounds the ratios that compare our step with a baseline
        has_bound = t["figure"].startswith(("masked step vs torch-dense", "decode tok/s vs HF "
                                            "generate float32, fused python"))
        assert (t["bound"] is not None) == has_bound, t["figure"]
        assert t["bound"] is None or t["bound"] > 0
    table = capsys.readouterr().out
    assert table.count("\n|") >= len(r["targets"])


def test_bad_store_is_one_line_error(tmp_path, capsys):
    assert main(["bench", "engine", str(tmp_path / "missing"), "--quick", "--out",
                 str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("submodel bench: error: ") and err.count("\n") == 1
    assert not (tmp_path / "x").exists()


def test_kernel_bench_is_a_bench_subcommand(tmp_path, capsys):
    assert main(["bench", "kernels", "--layers", "1", "--repeats", "1", "--prefill-layers", "1",
                 "--out", str(tmp_path)]) == 0
    r = json.loads((tmp_path / "kernels.json").read_text())
    assert set(r["dtypes"]) == {"bfloat16", "float32"}
    assert r["cpu"]
    for dtype, figures in r["dtypes"].items():
        assert all(row["ms"] > 0 and row["floor_fraction"] > 0 for row in figures["decode"])
        read = {(row["case"], row["batch"]): row["weight_bytes"] for row in figures["decode"]}
        assert read["int8 kernel, dense rows", 1] < read["kernel, dense rows", 1] / 1.7
        one_mask = read["masked, 1 language", 1] - read["kernel, dense rows", 1]
        assert one_mask == read["int8 masked, 1 language", 1] - read["int8 kernel, dense rows", 1]
        width = {"bfloat16": 2, "float32": 4}[dtype]  # bytes a weight; its mask bit is 1/8
        assert read["kernel, dense rows", 1] == 8 * width * one_mask
        assert read["masked, 4 languages", 8] == read["kernel, dense rows", 1] + 4 * one_mask
    assert (tmp_path / "kernels.md").read_text().strip() == capsys.readouterr().out.strip()
