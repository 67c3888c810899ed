"""The soak's report: soak.json and soak.md (outcomes, agreement with the server's metrics,
latency and RSS per time window)."""

from __future__ import annotations

from pathlib import Path

from submodel.bench.report import _fmt, _mib, _pct, _table, write_report


def write_soak(results: dict, out: Path) -> list[Path]:
    return write_report(out, "soak", results, soak_markdown(results))


def soak_markdown(r: dict) -> str:
    m = r["metrics"]
    outcomes = " + ".join(f"{n} {k}" for k, n in r["by_outcome"].items())
    lines = [
        "# Soak", "",
        f"{r['sent']} requests in {r['seconds']:.1f} s at concurrency {r['concurrency']} "
        f"(languages {', '.join(r['languages'])}; max_tokens {r['max_tokens']}; server queue "
        f"{r['max_queue']}; seed {r['seed']}).", "",
        f"Sent {r['sent']} = {outcomes}.", "",
        "Server's `submodel_requests_total` for the same time: "
        + ", ".join(f"{k} {n}" for k, n in r["server_by_status"].items())
        + f". Agrees with the client: **{'yes' if m['agrees'] else 'NO'}** "
        f"({m['finished_as_client_gave_up']} finished just as their client gave up).", "",
        f"Latency of ok requests: p50 {_fmt(r['latency_p50'])} s, p99 {_fmt(r['latency_p99'])} "
        f"s. RSS growth after the first window: {_pct(r['rss_growth_after_warmup'])}.", "",
        "## By kind of request", "",
        *_table(["kind", "outcomes"], [[k, ", ".join(f"{o} {n}" for o, n in v.items())]
                                       for k, v in r["by_kind"].items()]),
        "", "## Over time", "",
        *_table(["window (s)", "sent", "ok", "p50 (s)", "p99 (s)", "RSS max (MiB)"], [
            [f"{w['start']:.1f}–{w['end']:.1f}", str(w["sent"]), str(w["ok"]),
             _fmt(w["latency_p50"]), _fmt(w["latency_p99"]), _mib(w["rss_max"])]
            for w in r["windows"]]),
    ]
    return "\n".join(lines) + "\n"
