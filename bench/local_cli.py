"""`submodel bench engine|kernels|perplexity|router|sandbox`: the benches that run in this process
(no server). Each writes OUT/NAME.json and OUT/NAME.md (report.write_report) and prints the
Markdown."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from submodel.cli import CLIError
from submodel.server.chunking import parse_prefill_chunk
from submodel.vocabulary import LANGUAGES, STRATEGIES, WEIGHT_CHOICES


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be >= 1")
    return value


def _fraction(text: str) -> float:
    value = float(text)
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError("must be in [0, 1]")
    return value


def add_out(parser: argparse.ArgumentParser, name: str) -> None:
    """Every bench's output directory: results/NAME unless --out says otherwise."""
    parser.add_argument("--out", default=f"results/{name}",
                        help=f"output directory (default results/{name})")


def register(kinds: argparse._SubParsersAction) -> None:
    e = kinds.add_parser("engine", help="the engine end to end: decode vs transformers, mask "
                         "switches, mixed loads, memory, bandwidth floor, step profile",
                         description="The engine end to end, as ratios measured side by side "
                         "in one run (~15 min; --quick: a few).")
    e.add_argument("store", help="sub-model store directory (from `submodel prune`)")
    e.add_argument("--quick", action="store_true",
                   help="fewer tokens and repeats: a few minutes instead of ~15")
    e.add_argument("--threads", type=_positive, default=2, help="torch threads (default 2)")
    add_out(e, "engine")
    e.set_defaults(func=run_engine)

    k = kinds.add_parser("kernels", help="masked kernels vs torch dense over the default "
                         "model's Linear shapes (random weights)",
                         description="Masked kernels vs torch dense, with random weights and "
                         "random 50% masks of Qwen2.5-0.5B's shapes, and the bandwidth floor.")
    k.add_argument("--layers", type=_positive, default=24, help="decoder layers (default 24)")
    k.add_argument("--threads", type=_positive, default=2, help="torch threads (default 2)")
    k.add_argument("--repeats", type=_positive, default=5,
                   help="timed repeats per case, best reported (default 5)")
    k.add_argument("--prefill-layers", type=_positive, default=2,
                   help="layers used for the prefill comparison (default 2)")
    add_out(k, "kernels")
    k.set_defaults(func=run_kernels)

    p = kinds.add_parser("perplexity", help="perplexity of dense and each mask on held-out "
                         "code (resumable)",
                         description="Perplexity of the dense model and of each language's mask "
                         "on held-out code of each language; resumes from OUT/perplexity.json.")
    p.add_argument("store", type=Path, help="sub-model store directory")
    p.add_argument("--nsamples", type=_positive, default=8,
                   help="held-out windows per language (default 8)")
    p.add_argument("--seqlen", type=int, default=512, help="tokens per window (default 512)")
    p.add_argument("--languages", default=None,
                   help="comma-separated subset of the store's languages (rows and columns; "
                        "default all)")
    p.add_argument("--calib", action="append", default=[], metavar="LANG=PATH",
                   help="the --calib given to prune, so held-out files come from the same "
                        "source (repeatable; default: the sources found on this machine)")
    p.add_argument("--batch-size", type=_positive, default=4,
                   help="windows per forward pass (default 4)")
    p.add_argument("--threads", type=_positive, default=None,
                   help="torch CPU threads (default: torch's, one per core; on a busy machine "
                        "fewer threads than cores avoid OpenMP oversubscription)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    add_out(p, "perplexity")
    p.set_defaults(func=run_perplexity)

    r = kinds.add_parser("router", help="router accuracy on projects it never saw, and its "
                         "latency",
                         description="Leave-projects-out accuracy of the language router per "
                         "class and snippet length, its confusion matrix, and detect() latency.")
    r.add_argument("--model", type=Path, default=None,
                   help="a router model file to measure instead of the committed one")
    r.add_argument("--samples", type=_positive, default=500,
                   help="snippets per class and length bucket (default 500)")
    r.add_argument("--seed", type=int, default=0, help="snippet sampling seed (default 0)")
    r.add_argument("--threshold", type=_fraction, default=0.5,
                   help="router confidence threshold (default 0.5)")
    r.add_argument("--no-humaneval", action="store_true",
                   help="skip routing the HumanEval prompts")
    add_out(r, "router")
    r.set_defaults(func=run_router)

    ide = kinds.add_parser("ide", help="an editing session replayed: TTFT with and without "
                           "the prefix cache, a long prompt admitted under load, llama.cpp "
                           "side by side",
                           description="What an editor user waits for, as ratios from one run "
                           "(~10 min on the default model): (1) a real file typed forward, a "
                           "fill-in-the-middle request at each pause with up to "
                           "--context-tokens of context, some abandoned as typing goes on, on "
                           "an engine without and with the prefix cache (TTFT p50/p99, "
                           "latency, hit rate); (2) a running request's inter-token gaps while "
                           "a ~2k-token prompt is admitted, chunked prefill vs whole; (3) "
                           "llama.cpp's llama-bench on the store's GGUF next to our decode and "
                           "prefill, when a llama-bench binary is found.")
    ide.add_argument("store", help="sub-model store directory")
    ide.add_argument("--file", type=Path, default=None,
                     help="the source file typed in the session (default: Python's own "
                          "argparse.py)")
    ide.add_argument("--language", default="python",
                     help="the sub-model the session's requests use (default python)")
    ide.add_argument("--pauses", type=_positive, default=24,
                     help="pauses in typing = requests (default 24)")
    ide.add_argument("--context-tokens", type=_positive, default=1536,
                     help="most tokens of text before the cursor sent (default 1536)")
    ide.add_argument("--max-tokens", type=_positive, default=32,
                     help="tokens per completion (default 32)")
    ide.add_argument("--prefix-cache-mb", type=_positive, default=256,
                     help="the cache's budget in the cached run (default 256)")
    ide.add_argument("--prefill-chunk", default="auto",
                     help="the engine's chunked prefill in the editing session (see `serve "
                          "--prefill-chunk`; default auto)")
    ide.add_argument("--admission-chunks", default="auto,8,32,256",
                     help="prefill chunks timed while a long prompt is admitted, "
                          "comma-separated, auto or tokens >= 1 (whole prompts are always "
                          "timed; default auto,8,32,256)")
    ide.add_argument("--phases", default="session,admission,llama_cpp",
                     help="which parts to run, comma-separated (default all: "
                          "session,admission,llama_cpp)")
    ide.add_argument("--strategy", choices=STRATEGIES, default="fused",
                     help="engine strategy (default fused)")
    ide.add_argument("--weights", choices=WEIGHT_CHOICES, default="auto",
                     help="how fused holds the weights (default auto: what `serve` picks "
                          "for this store and CPU; the report names it)")
    ide.add_argument("--llama-bench", default=None,
                     help="a llama-bench binary (default: llama-bench on PATH, if any)")
    ide.add_argument("--threads", type=_positive, default=2, help="torch threads (default 2)")
    add_out(ide, "ide")
    ide.set_defaults(func=run_ide)

    sb = kinds.add_parser("sandbox", help="HumanEval sandbox throughput per language (known-good "
                          "programs)",
                          description="Runs per second and CPU ms per run of known-good programs "
                          "through a fresh sandbox executor, per language.")
    sb.add_argument("--runs", type=_positive, default=100,
                    help="programs to run per language after the first (default 100)")
    sb.add_argument("--workers", type=_positive, default=None,
                    help="parallel sandboxes (default: one per CPU core)")
    sb.add_argument("--languages", nargs="+", default=list(LANGUAGES), choices=LANGUAGES,
                    help="languages to measure (default: all)")
    add_out(sb, "sandbox")
    sb.set_defaults(func=run_sandbox)


def _report(out: str, name: str, result: dict, markdown: str) -> int:
    from submodel.bench.report import write_report

    print(markdown)
    paths = write_report(Path(out), name, result, markdown)
    print(f"wrote {', '.join(map(str, paths))}", file=sys.stderr)
    return 0


def run_engine(args: argparse.Namespace) -> int:
    from dataclasses import asdict

    from submodel.bench.engine import QUICK, BenchError, Settings, run
    from submodel.bench.engine_report import markdown
    from submodel.pruning.store import StoreError
    from submodel.server.kernels import KernelUnavailableError

    settings = QUICK if args.quick else Settings()
    if args.threads != settings.threads:
        settings = Settings(**{**asdict(settings), "threads": args.threads})
    try:
        result = run(args.store, settings)
    except (BenchError, StoreError, KernelUnavailableError) as e:
        raise CLIError(str(e)) from None
    result["command"] = " ".join(["submodel bench engine", args.store,
                                  *(["--quick"] if args.quick else []),
                                  "--threads", str(args.threads)])
    return _report(args.out, "engine", result, markdown(result))


def run_kernels(args: argparse.Namespace) -> int:
    from submodel.bench.kernels import markdown, run
    from submodel.server.kernels import KernelUnavailableError

    try:
        result = run(args.layers, args.threads, args.repeats,
                     min(args.prefill_layers, args.layers))
    except KernelUnavailableError as e:
        raise CLIError(str(e)) from None
    return _report(args.out, "kernels", result, markdown(result))


def run_perplexity(args: argparse.Namespace) -> int:
    import torch

    from submodel import corpora
    from submodel.bench.perplexity import BenchError, markdown, run
    from submodel.pruning.store import StoreError

    if args.seqlen < 2:
        raise CLIError("--seqlen must be >= 2")
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    try:
        languages = None
        if args.languages:
            languages = [corpora.canonical_language(x) for x in args.languages.split(",") if x]
        calib = corpora.parse_calib_flags(args.calib)
        result = run(args.store, languages, args.nsamples, args.seqlen,
                     Path(args.out) / "perplexity.json", args.batch_size, calib,
                     progress=not args.quiet)
    except (BenchError, StoreError, corpora.CorpusError, ValueError) as e:
        raise CLIError(str(e)) from None
    return _report(args.out, "perplexity", result, markdown(result))


def run_router(args: argparse.Namespace) -> int:
    from submodel.bench.router import markdown, run
    from submodel.router import fetch
    from submodel.router.model import ContentModel

    try:
        model = None if args.model is None else ContentModel.load(args.model)
        result = run(args.samples, args.seed, args.threshold, not args.no_humaneval, model)
    except (OSError, ValueError, fetch.FetchError) as e:
        raise CLIError(str(e)) from None
    return _report(args.out, "router", result, markdown(result))


def run_ide(args: argparse.Namespace) -> int:
    import torch

    from submodel import corpora
    from submodel.bench.ide import PHASES, Settings, markdown, run
    from submodel.pruning.store import StoreError, open_store
    from submodel.server.engine import choose_weights

    path = args.file or Path(argparse.__file__)
    try:
        text = path.read_text(encoding="utf-8")
        store = open_store(args.store)
        language = corpora.canonical_language(args.language)
    except (OSError, UnicodeDecodeError, StoreError, ValueError) as e:
        raise CLIError(str(e)) from None
    if language not in store.languages:
        raise CLIError(f"the store has no '{language}' mask (has {', '.join(store.languages)})")
    torch.set_num_threads(args.threads)
    phases = tuple(x for x in args.phases.split(",") if x)
    if not phases or set(phases) - set(PHASES):
        raise CLIError(f"--phases: pick from {', '.join(PHASES)}")
    try:
        prefill_chunk = parse_prefill_chunk(args.prefill_chunk)
        chunks = tuple(parse_prefill_chunk(x) for x in args.admission_chunks.split(",") if x)
    except ValueError as e:
        raise CLIError(str(e)) from None
    if not chunks or 0 in chunks:
        raise CLIError("--admission-chunks: comma-separated, auto or token counts >= 1")
    settings = Settings(pauses=args.pauses, context_tokens=args.context_tokens,
                        max_tokens=args.max_tokens, prefix_cache_mb=args.prefix_cache_mb,
                        prefill_chunk=prefill_chunk, admission_chunks=chunks)
    weights = args.weights
    if weights == "auto":
        weights = choose_weights(store, args.strategy)[0]
    engine_kwargs = {"strategy": args.strategy, "weights": weights}
    result = run(store, text, language, settings, engine_kwargs, args.llama_bench, args.threads,
                 phases)
    result["file"] = str(path)
    return _report(args.out, "ide", result, markdown(result))


def run_sandbox(args: argparse.Namespace) -> int:
    from dataclasses import asdict

    from submodel.bench.humaneval.sandbox import SandboxError
    from submodel.bench.humaneval.throughput import markdown, measure

    try:
        rows = [measure(lang, args.runs, args.workers) for lang in args.languages]
    except SandboxError as e:
        raise CLIError(str(e)) from None
    result = {"runs": [{**asdict(t), "runs_per_s": t.runs_per_s,
                        "cpu_ms_per_run": t.cpu_ms_per_run} for t in rows]}
    return _report(args.out, "sandbox", result, markdown(rows))
