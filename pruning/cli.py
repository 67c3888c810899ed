"""CLI: `submodel prune`, `submodel remove-language` and `submodel info`."""

from __future__ import annotations

import argparse
from pathlib import Path

from submodel.cli import CLIError
from submodel.vocabulary import DTYPES, LANGUAGES

DEFAULT_LANGUAGES = ",".join(LANGUAGES)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "prune", help="prune a base model per language into a sub-model store",
        description="Run Wanda (or magnitude) pruning of a base model once per language, "
        "calibrated on real code of that language, and write a sub-model store: the dense "
        "weights once, one bit-packed mask per language, a manifest and reports. An "
        "interrupted run resumes with the languages it already finished. Given a finished "
        "store as --out, it adds the languages the store lacks (same base model and recipe "
        "flags required) and leaves the others' masks untouched.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--model", default="qwen2.5-coder-0.5b",
                   help="alias (qwen2.5-coder-0.5b, qwen2.5-coder-1.5b, gemma-3-270m, "
                   "smollm2-135m), a .gguf file, or a Hugging Face model directory")
    p.add_argument("--out", required=True, type=Path,
                   help="store directory to create, or a finished store to add languages to")
    p.add_argument("--languages", default=DEFAULT_LANGUAGES,
                   help="comma-separated languages, one mask each")
    p.add_argument("--calib", action="append", default=[], metavar="LANG=PATH",
                   help="calibration code for LANG: a directory, a glob, or a JSONL file with "
                   "a 'text' field (repeatable; default: sources found on this machine)")
    p.add_argument("--calib-kind", default="raw", choices=("raw", "selfgen", "task", "mixed"),
                   help="raw: random windows of the source files; selfgen: the dense model "
                   "continues real file prefixes; task: documented functions of the source "
                   "(signature + docstring) followed by the dense model's body; mixed: a third "
                   "of each. Generated sets are cached in the user cache dir")
    p.add_argument("--nsamples", type=int, default=128, help="calibration windows per language")
    p.add_argument("--seqlen", type=int, default=None,
                   help="tokens per window (default 512 on CPU, 2048 on CUDA)")
    p.add_argument("--seed", type=int, default=0, help="seed of the window sampling")
    p.add_argument("--sparsity", default="0.5",
                   help="fraction pruned per row: one number for every language, or a default "
                   "plus per-language values, e.g. '0.5,python=0.4,java=0.6'")
    p.add_argument("--pattern", default="unstructured",
                   help="'unstructured' or N:M (prune N of every M consecutive inputs, e.g. 2:4)")
    p.add_argument("--method", default="wanda", choices=("wanda", "magnitude"),
                   help="wanda: calibrated (see --score); magnitude: |W| (baseline)")
    p.add_argument("--score", default="wanda", choices=("wanda", "ria"),
                   help="wanda: |W| x ||X||; ria: |W| relative to its row and column sums "
                   "x ||X||^0.5 (Zhang et al. 2024)")
    p.add_argument("--activation-power", type=float, default=None, metavar="P",
                   help="the exponent of the activation norm ||X|| in the score (default: the "
                   "score's own, 1 for wanda and 0.5 for ria; 0 ranks by |W| alone)")
    p.add_argument("--allocation", default="uniform", choices=("uniform", "owl"),
                   help="uniform: every block at the target sparsity; owl: blocks with more "
                   "outlier scores pruned less, within +-lambda, same overall (Yin et al. 2024)")
    p.add_argument("--owl-m", type=float, default=5.0,
                   help="OWL: a score is an outlier above M x its block's mean score")
    p.add_argument("--owl-lambda", type=float, default=0.08,
                   help="OWL: the largest shift of a block's sparsity from the target")
    p.add_argument("--refine", default="none", choices=("none", "dsnot"),
                   help="dsnot: swap pruned and kept weights per row to shrink the expected "
                   "reconstruction error, weights unchanged (Zhang et al. 2024)")
    p.add_argument("--dsnot-cycles", type=int, default=50, help="DSnoT: most swaps per row")
    p.add_argument("--dsnot-threshold", type=float, default=0.0,
                   help="DSnoT: a row stops once its expected error is within this")
    p.add_argument("--dtype", default="bfloat16", choices=DTYPES,
                   help="dtype of the dense weights in the store")
    p.add_argument("--device", default="cpu", help="where blocks run while pruning (cpu, cuda)")
    p.add_argument("--batch-size", type=int, default=8, help="calibration windows per forward")
    p.add_argument("--force", action="store_true",
                   help="rebuild even if the store or a partial build exists")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=run_prune)

    r = sub.add_parser(
        "remove-language", help="drop one language's mask from a store",
        description="Remove LANG from a finished store: the reports are recomputed without it, "
        "the manifest is rewritten atomically, then its mask file is deleted. A server "
        "serving the store drops it on SIGHUP or the ReloadSubModels RPC. The last language "
        "of a store cannot be removed.")
    r.add_argument("store", type=Path, help="store directory")
    r.add_argument("language", help="the language to remove")
    r.set_defaults(func=run_remove_language)

    i = sub.add_parser("info", help="describe a sub-model store",
                       description="Print a store's manifest in human form: base model, recipe, "
                       "per-language sparsity and the mask overlap table. Verifies the store "
                       "(sha256s, shapes, sparsity) unless --no-verify.")
    i.add_argument("store", type=Path, help="store directory")
    i.add_argument("--no-verify", action="store_true", help="skip the sha256 and mask checks")
    i.set_defaults(func=run_info)


def run_prune(args: argparse.Namespace) -> int:
    from submodel import corpora
    from submodel.pruning.models import ModelError
    from submodel.pruning.prune import PruneConfig, prune
    from submodel.pruning.recipe import MaskRecipe, parse_sparsity
    from submodel.pruning.store import StoreError

    languages = tuple(s.strip() for s in args.languages.split(",") if s.strip())
    try:
        calib = corpora.parse_calib_flags(args.calib)
        sparsity, overrides = parse_sparsity(args.sparsity)
        recipe = MaskRecipe(score=args.score, activation_power=args.activation_power,
                            allocation=args.allocation, owl_m=args.owl_m,
                            owl_lambda=args.owl_lambda, refine=args.refine,
                            dsnot_cycles=args.dsnot_cycles,
                            dsnot_threshold=args.dsnot_threshold)
        cfg = PruneConfig(
            model=args.model, out=args.out, languages=languages, calib=calib,
            calib_kind=args.calib_kind, nsamples=args.nsamples,
            seqlen=args.seqlen or (2048 if args.device.startswith("cuda") else 512),
            seed=args.seed, sparsity=sparsity, sparsity_overrides=overrides,
            pattern=args.pattern, method=args.method, recipe=recipe,
            dtype=args.dtype, device=args.device, batch_size=args.batch_size, force=args.force,
            progress=not args.quiet)
        store = prune(cfg)
    except (ValueError, corpora.CorpusError, ModelError, StoreError) as e:
        raise CLIError(str(e)) from None
    print(f"wrote {store.path} ({', '.join(store.languages)})")
    return 0


def run_remove_language(args: argparse.Namespace) -> int:
    from submodel.pruning.edit import remove_language
    from submodel.pruning.store import StoreError

    try:
        store = remove_language(args.store, args.language)
    except StoreError as e:
        raise CLIError(str(e)) from None
    print(f"removed {args.language} from {store.path} (now {', '.join(store.languages)})")
    return 0


def run_info(args: argparse.Namespace) -> int:
    from submodel.pruning.info import describe
    from submodel.pruning.store import StoreError, open_store

    try:
        store = open_store(args.store, verify=not args.no_verify)
    except StoreError as e:
        raise CLIError(str(e)) from None
    print(describe(store))
    return 0
