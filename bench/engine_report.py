"""Rendering of `submodel bench engine`'s result: the targets it checks and its Markdown."""

from __future__ import annotations

from submodel.bench.timing import best, ratio


def targets(r: dict) -> list[dict]:
    """Every figure with a target. `value` is the wall-time (or memory) figure; `cpu` the same
    ratio from process CPU time where one exists. `bound`, where one is known: the value the
    figure would have if our decode step ran exactly at its bandwidth floor; a target above it
    cannot be met on this machine by any kernel that reads the dense weights."""
    rows = []

    def add(figure: str, value: float | dict, op: str, target: float,
            bound: float | None = None) -> None:
        wall, cpu = (value["wall"], value["cpu"]) if isinstance(value, dict) else (value, None)

        def met(v):
            return None if v is None else (v >= target if op == ">=" else v <= target)

        rows.append({"figure": figure, "value": wall, "cpu": cpu, "op": op, "target": target,
                     "met": met(wall), "cpu_met": met(cpu), "bound": bound})

    floors = {(st["dtype"], st["language"]): st["floor_ms"]
              for st in r["steps"] if st["strategy"] == "fused"}
    fp32 = [d["hf_tokens_per_s"] for d in r["decode"] if d["dtype"] == "float32"]
    hf_fp32 = best(fp32) if fp32 else None  # the fastest generate() seen: the hardest bar
    for d in r["decode"]:
        add(f"decode tok/s vs HF generate, {d['strategy']} {d['language']} {d['dtype']}",
            d["vs_hf"], ">=", 1.5)
        if d["strategy"] == "fused" and hf_fp32:  # issue 7: ours vs generate() in fp32
            floor = floors.get((d["dtype"], d["language"]))
            add(f"decode tok/s vs HF generate float32, fused {d['language']} {d['dtype']} "
                "(issue 7)", ratio(d["tokens_per_s"], hf_fp32), ">=", 3.0,
                1e3 / hf_fp32["wall"] / floor if floor else None)
    for st in r["steps"]:
        if st["strategy"] == "fused":
            add(f"masked step vs torch-dense step, fused {st['dtype']}",
                st["vs_torch_dense"], ">=", 1.5,
                st["parts_ms"]["torch_dense_forward"]["wall"] / st["floor_ms"])
            add(f"fraction of bandwidth floor, fused {st['dtype']}",
                st["floor_fraction"], ">=", 0.6)
        if "batch_forward_ms" in st:
            b = st["batch_forward_ms"]
            add(f"batch decode step throughput mixed 4-lang / one-lang, {st['strategy']} "
                f"{st['dtype']}", ratio(b["one_language"], b["mixed"]), ">=", 0.95)
    for sw in r["switch"]:
        add(f"mask switch / decode step, swap language->language {sw['dtype']}",
            sw["language"]["vs_step"], "<=", 1.0)
        add(f"mask switch / decode step, swap dense<->language {sw['dtype']}",
            sw["dense"]["vs_step"], "<=", 1.0)
    for ld in r["load"]:
        add(f"mixed 4-lang / dense-only throughput, {ld['strategy']}",
            ld["mixed_vs_dense"], ">=", 0.95)
        add(f"mixed 4-lang / one-lang throughput, {ld['strategy']}",
            ld["mixed_vs_one_language"], ">=", 0.95)
    for p in r["memory"]["probes"][1:]:
        add(f"RSS added by 4 masks / packed masks, {p['strategy']}",
            p["added_rss_vs_masks"], "<=", 1.25)
        add(f"PSS added by 4 masks / packed masks, {p['strategy']}",
            p["added_pss_vs_masks"], "<=", 1.25)
    return rows


def _wc(v: dict, fmt: str = ".1f") -> str:
    return f"{v['wall']:{fmt}} / {v['cpu']:{fmt}}"


def markdown(r: dict) -> str:
    mib = 2**20
    la0, la1 = r["load_average_start"], r["load_average_end"]
    yes = {True: "yes", False: "NO", None: "-"}
    lines = [
        f"Engine benchmark: {r['model']} ({r['store']}), {r['settings']['threads']} threads, "
        f"kernel path {r['kernel_path']}, read bandwidth at start {r['bandwidth_gbs']:.1f} GB/s, "
        f"load average {la0[0]:.2f} at start, {la1[0]:.2f} at end. Timed figures: wall / CPU "
        "(process CPU time: robust to other processes; compare at equal threads).",
        "", "| figure | measured (wall) | measured (CPU) | target | wall/target | met (wall) "
        "| met (CPU) | bound |", "|---|---:|---:|---:|---:|---|---|---:|"]
    for t in r["targets"]:
        cpu = "-" if t["cpu"] is None else f"{t['cpu']:.2f}"
        bound = "-" if t["bound"] is None else f"{t['bound']:.2f}"
        lines.append(f"| {t['figure']} | {t['value']:.2f} | {cpu} | {t['op']} {t['target']:g} | "
                     f"{t['value'] / t['target']:.2f} | {yes[t['met']]} | {yes[t['cpu_met']]} | "
                     f"{bound} |")
    lines += ["", "bound: the figure if our decode step ran at its bandwidth floor (weight bytes "
              "per step / read bandwidth); a target above it cannot be met on this machine by a "
              "kernel that reads the dense weights."]
    lines += ["", "| decode (batch 1), wall / CPU | dtype | language | tok/s | ms/step | HF tok/s "
              "| vs HF | prefill ms (wall) |", "|---|---|---|---:|---:|---:|---:|---:|"]
    for d in r["decode"]:
        lines.append(f"| {d['strategy']} | {d['dtype']} | {d['language']} | "
                     f"{_wc(d['tokens_per_s'])} | {_wc(d['step_ms'])} | "
                     f"{_wc(d['hf_tokens_per_s'])} | {_wc(d['vs_hf'], '.2f')} | "
                     f"{d['prefill_ms']:.0f} |")
    parts = ("engine_step", "forward", "linears", "lm_head", "rest_of_forward", "sampling",
             "text_per_token", "engine_overhead", "torch_dense_forward")
    for clk in ("wall", "cpu"):
        lines += ["", f"Decode step profile, {clk} ms (batch 1, masked): engine step = forward + "
                  "sampling + engine overhead (scheduler, text, events); forward = linears + "
                  "lm_head + rest (attention, norms, rope, Python)", "",
                  "| strategy | dtype | " + " | ".join(parts) + " | floor | floor fraction |",
                  "|---|---|" + "---:|" * (len(parts) + 2)]
        for st in r["steps"]:
            cells = " | ".join(f"{st['parts_ms'][p][clk]:.2f}" for p in parts)
            lines.append(f"| {st['strategy']} | {st['dtype']} | {cells} | {st['floor_ms']:.1f} | "
                         f"{st['floor_fraction']:.0%} |")
    lines.append("\nfloor = weight bytes per step / read bandwidth measured just before each "
                 "profile: " + ", ".join(f"{st['strategy']} {st['dtype']} "
                                         f"{st['bandwidth_gbs']:.1f} GB/s" for st in r["steps"]))
    for st in r["steps"]:
        if "batch_forward_ms" in st:
            b = st["batch_forward_ms"]
            lines.append(f"\n{st['strategy']} {st['dtype']}, forward of a decode step of "
                         f"{r['settings']['concurrency']} rows, wall / CPU ms: dense "
                         f"{_wc(b['dense'])}, one language {_wc(b['one_language'])}, 4 languages "
                         f"mixed {_wc(b['mixed'])} (mixed/one step time "
                         f"{_wc(ratio(b['mixed'], b['one_language']), '.2f')})")
    for sw in r["switch"]:
        for kind, label in (("language", "language -> language"), ("dense", "dense <-> language")):
            k = sw[kind]
            lines.append(f"\nMask switch (swap, {sw['dtype']}), {label}: median "
                         f"{_wc(k['median_ms'])} ms wall / CPU over {k['count']} switches, "
                         f"{k['changed']:.1%} of prunable weights change; a decode step is "
                         f"{_wc(sw['step_ms'])}")
    lines += ["", f"| load ({r['settings']['concurrency']} concurrent, "
              f"{r['settings']['load_tokens']} tokens each), tok/s wall / CPU | dense | "
              "one language | mixed 4 languages | mixed/dense | mixed/one |",
              "|---|---:|---:|---:|---:|---:|"]
    for ld in r["load"]:
        lines.append(f"| {ld['strategy']} | {_wc(ld['dense']['tokens_per_s'])} | "
                     f"{_wc(ld['one_language']['tokens_per_s'])} | "
                     f"{_wc(ld['mixed']['tokens_per_s'])} | {_wc(ld['mixed_vs_dense'], '.2f')} | "
                     f"{_wc(ld['mixed_vs_one_language'], '.2f')} |")
    m = r["memory"]
    lines += ["", f"Memory after serving (fresh process each; packed masks "
              f"{m['packed_mask_bytes'] / mib:.1f} MiB)", "",
              "| serving | RSS MiB | PSS MiB | PSS anon | PSS file | added RSS | added PSS | "
              "added RSS / masks | added PSS / masks |", "|---|" + "---:|" * 8]
    for p in m["probes"]:
        added = (f"{p['added_rss'] / mib:.0f} | {p['added_pss'] / mib:.0f} | "
                 f"{p['added_rss_vs_masks']:.2f} | {p['added_pss_vs_masks']:.2f}"
                 if "added_rss" in p else "- | - | - | -")
        lines.append(f"| {p['strategy']} | {p['rss'] / mib:.0f} | {p['pss'] / mib:.0f} | "
                     f"{p['pss_anon'] / mib:.0f} | {p['pss_file'] / mib:.0f} | {added} |")
    lines += [f"\nskipped: {s}" for s in r["skipped"]]
    return "\n".join(lines)
