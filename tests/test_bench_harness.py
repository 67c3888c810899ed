"""`submodel bench passk` and `submodel bench load` end to end on a tiny model through a real
gRPC server: the tiny model fails every problem, so these check structure, counts, routing
records, files, resuming and the load report's fields, not scores."""

from __future__ import annotations

import json
import threading
import time

import grpc
import pytest
from serving import serve_store
from tiny import save_tiny

from submodel.bench import load, passk_run, soak
from submodel.bench.passk_run import _runs
from submodel.bench.store_record import passk_title
from submodel.cli import main
from submodel.pruning.prune import PruneConfig, prune

LANGS = ("python", "java", "cpp", "javascript")
ROWS = ["routed", "dense", *LANGS]


@pytest.fixture(scope="module")
def long_store(tmp_path_factory):
    """A tiny store whose context (4096 byte tokens) holds HumanEval's prompts."""
    root = tmp_path_factory.mktemp("bench")
    model = save_tiny(root / "model", max_position_embeddings=4096)
    cfg = PruneConfig(model=str(model), out=root / "store", languages=LANGS, nsamples=8,
                      seqlen=64, progress=False, dtype="float32")
    return prune(cfg).path


@pytest.fixture(scope="module")
def served(long_store):
    s = serve_store(long_store, max_batch=4)
    yield s
    s.stop()


def passk(*args: str) -> int:
    return main(["bench", "passk", "--no-progress", "--max-tokens", "12", *args])


def read_samples(cache_dir) -> list[dict]:
    return [json.loads(line) for line in (cache_dir / "samples.jsonl").read_text().splitlines()]


def test_runs_split_missing_indexes():
    assert _runs([0, 1, 2, 3, 4], 2) == [(0, 2), (2, 2), (4, 1)]
    assert _runs([2, 3, 4, 7], 8) == [(2, 3), (7, 1)]
    assert _runs([], 8) == []


def test_passk_end_to_end_with_store(long_store, tmp_path, capsys):
    out = tmp_path / "out"
    assert passk("--store", str(long_store), "--limit", "2", "--n", "2",
                 "--languages", "python,javascript", "--out", str(out)) == 0
    for name in ("passk.json", "passk.md", "matrix.png", "retention.png", "server.log"):
        assert (out / name).stat().st_size > 0, name
    assert (out / "matrix.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "pass@1: routed: python" in capsys.readouterr().out

    r = json.loads((out / "passk.json").read_text())
    assert r["rows"] == ROWS and r["columns"] == ["python", "javascript"]
    assert r["model"]["identity"].startswith("store:")
    for row in ROWS:
        for lang in ("python", "javascript"):
            c = r["cells"][row][lang]
            assert (c["problems"], c["samples"], c["n"]) == (2, 4, 2)
            assert 0.0 <= c["pass@1"] <= 1.0 and c["pass@10"] is None  # n=2 < 10
            assert sum(c["statuses"].values()) == 4
            assert len(c["per_problem"]) == 2
    assert r["retention_k"] == 1 and set(r["retention"]) == {"python", "javascript"}
    routed = r["routed"]
    assert routed["requests"] == 4
    assert sum(routed["confusion"]["python"].values()) == 2
    assert routed["misroutes"] == sum(
        v for lang, c in routed["confusion"].items() for t, v in c.items() if t != lang)
    cov = r["coverage"]
    assert cov["python"]["available"] == 164 and cov["python"]["evaluated"] == 2
    assert cov["javascript"]["available"] + len(cov["javascript"]["skipped"]) == 164
    assert r["run"]["requests"] == 2 * 2 * len(ROWS) and r["run"]["samples_cached"] == 0

    samples = read_samples(out / "cache")
    assert len(samples) == 2 * 2 * 2 * len(ROWS)
    by_row = {}
    for s in samples:
        by_row.setdefault(s["row"], []).append(s)
        assert set(s["routing"]) == {"language", "confidence", "source", "sub_model"}
    assert all(s["routing"]["source"] != "hint" for s in by_row["routed"])
    assert all(s["routing"]["source"] == "hint" and s["routing"]["language"] == row
               for row in ROWS[1:] for s in by_row[row])
    # rows share their sampling seeds: the sub-model is the only difference between them
    seeds = {(s["row"], s["task_id"], s["language"]): s["seed"] for s in samples}
    assert len({seed for (_, task, lang), seed in seeds.items()
                if (task, lang) == (samples[0]["task_id"], samples[0]["language"])}) == 1

    report = (out / "passk.md").read_text()
    for heading in ("## Pass@1", "## Retention", "## Routing of the unhinted requests",
                    "## Problems per language"):
        assert heading in report

    # the store's own report keeps the run's cells, and `submodel info` shows them
    recorded = json.loads((long_store / "report" / "evaluations.json").read_text())
    table = recorded[passk_title(r)]
    assert "n=2, T=0.8" in passk_title(r) and "2 problems per language" in passk_title(r)
    assert set(table["cells"]) == set(ROWS)
    assert all(table["cells"][row][lang]["value"] == r["cells"][row][lang]["pass@1"]
               for row in ROWS for lang in ("python", "javascript"))
    capsys.readouterr()
    assert main(["info", str(long_store)]) == 0
    assert passk_title(r) in capsys.readouterr().out


def test_interrupted_run_resumes_with_the_same_numbers(served, tmp_path, monkeypatch):
    common = ["--server", served.target, "--limit", "2", "--n", "3", "--max-batch", "2",
              "--languages", "python,javascript", "--submodels", "routed,dense,python",
              "--concurrency", "1"]
    assert passk(*common, "--out", str(tmp_path / "full")) == 0
    full = json.loads((tmp_path / "full" / "passk.json").read_text())
    requests_needed = full["run"]["requests"]
    assert requests_needed == 3 * 2 * 2 * 2  # rows x languages x problems x (2 + 1 samples)

    real_send, sent = passk_run.send, []

    def interrupting(client, request):
        if len(sent) == 5:
            raise KeyboardInterrupt
        sent.append(request)
        return real_send(client, request)

    monkeypatch.setattr(passk_run, "send", interrupting)
    out = tmp_path / "resumed"
    assert passk(*common, "--out", str(out)) == 130  # what Ctrl-C gives
    cached = len(read_samples(out / "cache"))
    assert 0 < cached < 3 * 2 * 2 * 3

    monkeypatch.setattr(passk_run, "send", lambda c, r: sent.append(r) or real_send(c, r))
    sent.clear()
    assert passk(*common, "--out", str(out)) == 0
    resumed = json.loads((out / "passk.json").read_text())
    assert resumed["run"]["samples_cached"] == cached
    assert len(sent) == resumed["run"]["requests"] < requests_needed
    assert resumed["cells"] == full["cells"] and resumed["routed"] == full["routed"]

    def texts(path):
        return {s["key"]: s["completion"] for s in read_samples(path / "cache")}

    assert texts(out) == texts(tmp_path / "full")

    sent.clear()  # a larger run reuses every sample of the smaller one
    assert passk(*[a if a != "3" else "4" for a in common], "--out", str(out)) == 0
    bigger = json.loads((out / "passk.json").read_text())
    assert bigger["run"]["samples_cached"] == 3 * 2 * 2 * 3
    assert bigger["run"]["samples_generated"] == 3 * 2 * 2 * 1 == len(sent)


def test_prompts_longer_than_the_context_are_skipped_and_counted(tiny_store, tmp_path):
    s = serve_store(tiny_store)  # context 512 byte tokens: some HumanEval prompts do not fit
    try:
        assert passk("--server", s.target, "--limit", "3", "--n", "1", "--languages", "python",
                     "--submodels", "dense", "--out", str(tmp_path)) == 0
    finally:
        s.stop()
    r = json.loads((tmp_path / "passk.json").read_text())
    cov = r["coverage"]["python"]
    assert cov["too_long_for_context"] and cov["selected"] == 3
    assert r["cells"]["dense"]["python"]["problems"] == cov["evaluated"] == 3 - len(
        cov["too_long_for_context"])
    assert "prompt too long" in (tmp_path / "passk.md").read_text()


def test_passk_user_errors_are_one_line(tmp_path, capsys):
    assert passk("--server", "127.0.0.1:1", "--dataset", "x.jsonl", "--out",
                 str(tmp_path)) == 2
    assert "one --dataset-language for each --dataset" in capsys.readouterr().err
    assert passk("--server", "127.0.0.1:1", "--languages", "python", "--limit", "1",
                 "--out", str(tmp_path)) == 2
    err = capsys.readouterr().err
    assert "cannot reach the server at 127.0.0.1:1" in err and len(err.splitlines()) == 1
    assert passk("--store", str(tmp_path / "nope"), "--out", str(tmp_path)) == 2
    assert "no such store directory" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        passk("--store", "a", "--server", "b")
    with pytest.raises(SystemExit):
        passk("--server", "b", "--submodels", "perl")


def test_load_bench_reports_sane_fields(long_store, tmp_path):
    out = tmp_path / "load"
    assert main(["bench", "load", "--store", str(long_store), "--strategies", "swap",
                 "--concurrency", "2", "--requests", "4", "--max-tokens", "4", "--http",
                 "--out", str(out)]) == 0
    r = json.loads((out / "load.json").read_text())
    (run,) = r["runs"]
    assert run["strategy"] == run["server_strategy"] == "swap"
    assert run["errors"] == 0 and run["requests"] == 4
    assert 0 < run["tokens"] <= 4 * 4 and run["tokens_per_s"] > 0 and run["requests_per_s"] > 0
    assert 0 < run["ttft_p50"] <= run["latency_p99"] and run["latency_p50"] <= run["latency_p99"]
    assert run["rss_peak"] >= run["pss_peak"] > 0 and run["rss_idle"] > 0
    assert run["memory_samples"] >= 1 and run["mask_bytes"] > 0
    # mixed traffic, one prompt per language in turn, routed by content
    assert {lang: sum(v.values()) for lang, v in run["routing"].items()} == dict.fromkeys(LANGS, 1)
    assert run["vs_dense"] is None  # no dense run to compare with
    # the same requests through HTTP: two passes, the same seeded samples as through gRPC
    http = run["http"]
    assert http["errors"] == 0 and http["requests"] == 8 and http["same_tokens"]
    assert 0 < http["ttft_p50"] <= http["latency_p99"]
    assert all(ratio > 0 for ratio in http["vs_grpc"].values())
    assert (out / "load.png").read_bytes()[:4] == b"\x89PNG"
    assert "| swap | mixed, unhinted |" in (out / "load.md").read_text()
    assert "## HTTP against gRPC" in (out / "load.md").read_text()


def test_dense_traffic_names_dense_and_ratios_use_it():
    cfg = load.LoadConfig(store=None, max_tokens=5)
    mixed = load.traffic(["python", "java"], 4, cfg, dense=False)
    dense = load.traffic(["python", "java"], 4, cfg, dense=True)
    assert [lang for lang, _ in mixed] == ["python", "java", "python", "java"]
    assert not any(r.HasField("language") for _, r in mixed)
    assert all(r.language == "dense" for _, r in dense)
    assert [r.prompt for _, r in mixed] == [r.prompt for _, r in dense]
    assert mixed[0][1].prompt != mixed[2][1].prompt  # the next problem of the language

    def run(strategy, tps, rss):
        return {"strategy": strategy, "tokens_per_s": tps, "latency_p50": 1.0, "rss_peak": rss,
                "pss_peak": rss, "mask_bytes": 100}

    runs = [run("fused", 95.0, 1150), run("dense", 100.0, 1000)]
    load.ratios(runs)
    assert runs[0]["vs_dense"]["tokens_per_s"] == pytest.approx(0.95)
    assert runs[0]["vs_dense"]["extra_rss_bytes"] == 150
    assert runs[0]["vs_dense"]["extra_rss_over_mask_bytes"] == pytest.approx(1.5)
    assert runs[1]["vs_dense"]["rss_peak"] == 1.0


def test_paired_bootstrap_brackets_the_difference_and_pairs_problems():
    from submodel.bench.matrix import paired_bootstrap

    own = {f"t{i}": float(i % 2) for i in range(40)}  # passes half
    dense = {f"t{i}": 1.0 for i in range(40)}  # passes all
    b = paired_bootstrap(own, dense, seed=1)
    assert b["problems"] == 40 and b["difference"] == pytest.approx(-0.5)
    lo, hi = b["difference_95"]
    assert lo <= -0.5 <= hi and hi < 0  # clearly worse than dense
    assert b["ratio_95"][0] <= 0.5 <= b["ratio_95"][1]
    # identical rows: every resample has difference 0, so the interval collapses
    same = paired_bootstrap(dense, dense)
    assert same["difference_95"] == [0.0, 0.0] and same["ratio_95"] == [1.0, 1.0]
    # only problems both have count; deterministic under a seed
    assert paired_bootstrap(own, {"t1": 1.0, "zz": 0.0})["problems"] == 1
    assert paired_bootstrap(own, dense, seed=3) == paired_bootstrap(own, dense, seed=3)
    assert paired_bootstrap({}, dense) is None


def test_greedy_run_is_one_temperature_zero_sample_with_intervals(long_store, tmp_path):
    out = tmp_path / "greedy"
    assert passk("--store", str(long_store), "--greedy", "--limit", "2", "--concurrency", "2",
                 "--languages", "python", "--submodels", "dense,python,java",
                 "--out", str(out)) == 0
    r = json.loads((out / "passk.json").read_text())
    assert r["n"] == 1 and r["ks"] == [1]
    assert r["sampling"]["temperature"] == 0.0 and r["sampling"]["per_request"] == 1
    ret = r["retention"]["python"]
    assert ret["vs_dense"]["problems"] == 2 and ret["best_other_mask"] == "java"
    assert ret["vs_best_other"]["problems"] == 2
    assert "retention 95%" in (out / "passk.md").read_text()


def test_soak_accounts_for_every_request(long_store, tmp_path):
    """A short soak: every request sent is counted once by outcome, the server's metrics agree,
    and the report's windows cover them all."""
    out = tmp_path / "soak"
    assert main(["bench", "soak", "--store", str(long_store), "--requests", "40",
                 "--concurrency", "3", "--max-queue", "1", "--max-tokens", "6",
                 "--windows", "4", "--out", str(out)]) == 0
    r = json.loads((out / "soak.json").read_text())
    assert r["sent"] == 40 == sum(r["by_outcome"].values())
    assert set(r["by_outcome"]) <= {"ok", "cancelled", "deadline_exceeded",
                                    "resource_exhausted", "vanished"}
    assert r["by_outcome"]["ok"] > 0
    assert sum(r["server_by_status"].values()) == 40 and r["metrics"]["agrees"]
    assert sum(w["sent"] for w in r["windows"]) == 40 and len(r["windows"]) == 4
    assert sum(sum(v.values()) for v in r["by_kind"].values()) == 40
    assert any(w["rss_max"] for w in r["windows"])
    assert "Agrees with the client: **yes**" in (out / "soak.md").read_text()


class _QueueFull(grpc.RpcError):
    def code(self):
        return grpc.StatusCode.RESOURCE_EXHAUSTED


class _StalledServer:
    """Holds the first request until released and refuses every other one meanwhile (a full
    queue behind a slow step); then answers everything."""

    def __init__(self, refusals_before_release: int) -> None:
        self.lock = threading.Lock()
        self.first_taken = False
        self.released = threading.Event()
        self.refused = 0
        self.enough_refused = threading.Event()
        self.refusals_before_release = refusals_before_release

    def generate(self, request, timeout):
        with self.lock:
            first = not self.first_taken
            self.first_taken = True
            if not first and not self.released.is_set():
                self.refused += 1
                if self.refused == self.refusals_before_release:
                    self.enough_refused.set()
                raise _QueueFull()
        if first:
            self.released.wait(timeout)
        return None


def test_soak_workers_refused_for_a_full_queue_wait_for_a_request_to_end(monkeypatch):
    """A refused soak worker does not send again until a request ends: a slow step no longer
    burns the whole request budget on refusals (it did: 38 of 40 refused, none served)."""
    monkeypatch.setattr(soak, "KINDS", {"unary": 1})
    monkeypatch.setattr(soak, "BACKOFF_FIRST", 600.0)  # only a request's end wakes a worker
    concurrency = 3
    server = _StalledServer(refusals_before_release=concurrency - 1)
    cfg = soak.SoakConfig(store=None, seconds=None, requests=12, concurrency=concurrency)
    traffic = soak.Traffic(cfg, server=None, client=server, prompts=[("python", "def f():")])
    workers = [threading.Thread(target=traffic.worker, args=(seed,)) for seed in range(3)]
    for w in workers:
        w.start()
    assert server.enough_refused.wait(60)
    time.sleep(0.2)  # room for a worker that would send again at once (none may)
    server.released.set()
    for w in workers:
        w.join(60)
    outcomes = [o.outcome for o in traffic.outcomes]
    assert outcomes.count("resource_exhausted") == concurrency - 1
    assert outcomes.count("ok") == 12 - (concurrency - 1)


def test_stores_sharing_the_base_and_a_mask_share_their_cached_samples(long_store, tmp_path):
    """A store that lost a language has another manifest but the same base and python mask:
    its dense and python rows come from the cache, nothing is generated again."""
    import shutil

    cache = tmp_path / "cache"
    args = ("--greedy", "--limit", "2", "--languages", "python", "--submodels", "dense,python",
            "--cache", str(cache))
    assert passk("--store", str(long_store), "--out", str(tmp_path / "a"), *args) == 0
    smaller = tmp_path / "smaller"
    shutil.copytree(long_store, smaller)
    assert main(["remove-language", str(smaller), "java"]) == 0
    assert passk("--store", str(smaller), "--out", str(tmp_path / "b"), *args) == 0
    first, second = (json.loads((tmp_path / d / "passk.json").read_text()) for d in "ab")
    assert first["model"]["identity"] != second["model"]["identity"]
    assert second["run"]["samples_cached"] == 2 * 2 and second["run"]["requests"] == 0
    assert first["cells"] == second["cells"]


def test_the_served_weight_format_reaches_the_server(tmp_path):
    from submodel.bench.server_proc import ServerProcess

    argv = ServerProcess("store", tmp_path / "log").argv  # full unless told: serve's is auto
    assert argv[argv.index("--weights") + 1] == "full"
    assert argv[argv.index("--prefix-cache-mb") + 1] == "0"  # serve's is 256
    argv = ServerProcess("store", tmp_path / "log", weights="int8").argv
    assert argv[argv.index("--weights") + 1] == "int8"
