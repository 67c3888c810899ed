"""`submodel prune`: base model + calibration code per language -> a verified store."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm import tqdm

from submodel import corpora
from submodel.pruning import calibration
from submodel.pruning.edit import add_masks, recipe_of, shared_recipe
from submodel.pruning.models import DTYPES, load_model, resolve_model, sha256_file
from submodel.pruning.owl import owl_block_sparsity
from submodel.pruning.recipe import MaskRecipe
from submodel.pruning.report import overlap_report, plot_overlap, sparsity_report
from submodel.pruning.store import (
    DENSE_FILE,
    RECIPE_DEFAULTS,
    Store,
    StoreBuilder,
    StoreError,
    load_hf_model,
    load_tokenizer,
    open_store,
    parse_pattern,
    read_masks,
    recipe_differences,
    save_safetensors_atomic,
    with_defaults,
)
from submodel.pruning.wanda import magnitude_masks, prunable_linears, wanda_masks
from submodel.vocabulary import LANGUAGES

METHODS = ("wanda", "magnitude")


@dataclass
class PruneConfig:
    model: str
    out: Path
    languages: tuple[str, ...] = LANGUAGES
    calib: dict[str, str] = field(default_factory=dict)  # language -> override path
    calib_kind: str = "raw"  # calibration.KINDS
    nsamples: int = 128
    seqlen: int = 512
    seed: int = 0
    sparsity: float = 0.5  # the default target of every language...
    sparsity_overrides: dict[str, float] = field(default_factory=dict)  # ...but these
    pattern: str = "unstructured"
    method: str = "wanda"
    recipe: MaskRecipe = field(default_factory=MaskRecipe)
    dtype: str = "bfloat16"
    device: str = "cpu"
    batch_size: int = 8
    force: bool = False
    progress: bool = True


def _recipe(cfg: PruneConfig, model_id: str, model_sha: str | None,
            sources: dict[str, corpora.Source]) -> dict:
    """What determines the masks; a resumed build must match it exactly."""
    return {
        "base_model": {"id": model_id, "sha256": model_sha},
        "dtype": cfg.dtype,
        "calibration_dtype": str(calibration_dtype(DTYPES[cfg.dtype], cfg.device)).split(".")[-1],
        "method": cfg.method,
        "sparsity": cfg.sparsity,
        "sparsity_overrides": dict(sorted(cfg.sparsity_overrides.items())),
        "pattern": cfg.pattern,
        **cfg.recipe.manifest(),
        "calibration": {
            "kind": cfg.calib_kind,
            "nsamples": cfg.nsamples, "seqlen": cfg.seqlen, "seed": cfg.seed,
            "sources": {lang: src.description for lang, src in sorted(sources.items())},
        },
    }


def calibration_dtype(store_dtype: torch.dtype, device: str) -> torch.dtype:
    """The store's dtype where half-precision matmuls are native (CUDA; CPUs with AMX or
    AVX512_BF16 for bf16: 3.4x faster than fp32 on a Xeon), fp32 elsewhere: on an AVX2-only
    EPYC a bf16 GEMM of calibration size measured 8x slower than fp32. The bf16 weights upcast
    exactly; only the activations' rounding differs."""
    if store_dtype == torch.float32 or device.startswith("cuda"):
        return store_dtype
    if store_dtype == torch.bfloat16 and cpu_flags() & {"amx_bf16", "avx512_bf16"}:
        return store_dtype
    return torch.float32


def cpu_flags() -> set[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    line = next((x for x in text.splitlines() if x.startswith("flags")), "")
    return set(line.partition(":")[2].split())


def validate(cfg: PruneConfig) -> None:
    """Reject bad flags before any slow work (ValueError with one line)."""
    if cfg.method not in METHODS:
        raise ValueError(f"--method must be one of {', '.join(METHODS)}")
    if not all(0 < s < 1 for s in (cfg.sparsity, *cfg.sparsity_overrides.values())):
        raise ValueError("--sparsity must be between 0 and 1 (exclusive)")
    pattern = parse_pattern(cfg.pattern)
    cfg.recipe.validate(pattern)
    if cfg.method == "magnitude" and cfg.recipe != MaskRecipe():
        raise ValueError("--score, --allocation and --refine need --method wanda "
                         "(magnitude pruning has no calibration statistics)")
    if pattern is not None and cfg.sparsity_overrides:
        raise ValueError("per-language --sparsity needs --pattern unstructured "
                         "(an N:M pattern fixes the sparsity)")
    for lang in cfg.languages:
        cfg.recipe.check_target(target_sparsity(cfg, lang))
    if cfg.dtype not in DTYPES:
        raise ValueError(f"--dtype must be one of {', '.join(DTYPES)}")
    if cfg.calib_kind not in calibration.KINDS:
        raise ValueError(f"--calib-kind must be one of {', '.join(calibration.KINDS)}")
    if cfg.method == "magnitude" and cfg.calib_kind != "raw":
        raise ValueError("--method magnitude uses no calibration data: drop --calib-kind")
    if cfg.nsamples < 1 or cfg.seqlen < 8:
        raise ValueError("--nsamples must be >= 1 and --seqlen >= 8")
    if not cfg.languages or len(set(cfg.languages)) != len(cfg.languages):
        raise ValueError("--languages needs distinct language names")
    unknown = set(cfg.calib) - set(cfg.languages)
    if unknown:
        raise ValueError(f"--calib given for {', '.join(sorted(unknown))}, not in --languages")
    unknown = set(cfg.sparsity_overrides) - set(cfg.languages)
    if unknown:
        raise ValueError(f"--sparsity given for {', '.join(sorted(unknown))}, "
                         "not in --languages")
    if cfg.device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError("--device cuda: no CUDA device is available here")


def target_sparsity(cfg: PruneConfig, language: str) -> float:
    return cfg.sparsity_overrides.get(language, cfg.sparsity)


def prune(cfg: PruneConfig) -> Store:
    """Build the store at cfg.out, resuming a partial build; or, when cfg.out is a finished
    store (and not --force), add the languages it lacks to it (see `add_languages`)."""
    validate(cfg)
    sources = {} if cfg.method == "magnitude" else {
        lang: corpora.find_source(lang, cfg.calib.get(lang)) for lang in cfg.languages}
    source = resolve_model(cfg.model)
    recipe = _recipe(cfg, source.id, source.sha256, sources)
    if (cfg.out / "manifest.json").is_file() and not cfg.force:
        return add_languages(cfg, recipe, sources)
    builder = StoreBuilder(cfg.out, recipe, cfg.force)
    if not builder.has_base():
        say(cfg, f"loading {source.id} ({source.kind}) and writing the dense base ({cfg.dtype})")
        model, tokenizer = load_model(source, dtype=torch.float32)
        builder.write_base(model, tokenizer, DTYPES[cfg.dtype])
        del model
    # Calibrate on the stored weights (what will be served), so a resumed build sees the same
    # model, in the dtype that is fast here (see calibration_dtype).
    tokenizer = load_tokenizer(builder.base_dir)
    model = load_hf_model(builder.base_dir, calibration_dtype(DTYPES[cfg.dtype], cfg.device))
    prunable = {name: (lin.out_features, lin.in_features)
                for name, lin in prunable_linears(model).items()}
    done = set(builder.done_languages())
    for lang in cfg.languages:
        if lang in done:
            say(cfg, f"{lang}: already pruned in an earlier run, kept")
            continue
        masks, info = _language_masks(cfg, model, tokenizer, sources, recipe, lang)
        builder.write_mask(lang, masks, info)
        say(cfg, f"{lang}: masks written in {info['seconds']:.1f}s")
    all_masks = {lang: read_masks(builder.mask_path(lang)) for lang in cfg.languages}
    builder.write_report("sparsity.json", sparsity_report(all_masks, prunable))
    overlap = overlap_report(all_masks)
    builder.write_report("overlap.json", overlap)
    if len(cfg.languages) > 1:
        plot_overlap(overlap, builder.work / "report" / "overlap.png")
    return builder.finalize(prunable, list(cfg.languages))


def add_languages(cfg: PruneConfig, recipe: dict, sources: dict[str, corpora.Source]) -> Store:
    """Add cfg.languages that the finished store at cfg.out lacks, leaving its other masks
    untouched. The store must have been made from the same base model (its sha256 and the
    dense file's, as the manifest records them) with the same recipe flags, or the new mask
    would not be comparable with the others: a difference is refused in one line naming it.
    Languages the store already has are kept as they are."""
    store = open_store(cfg.out, verify=False)
    old = with_defaults(recipe_of(store.manifest),
                        {k: v for k, v in RECIPE_DEFAULTS.items() if k in recipe})
    differs = recipe_differences(shared_recipe(old), shared_recipe(recipe))
    if differs:
        raise StoreError(f"{store.path}: built with another recipe (differs in "
                         f"{', '.join(differs)}); pass the store's flags to add a language, or "
                         "--force to rebuild it")
    new = [lang for lang in cfg.languages if lang not in store.manifest["languages"]]
    for lang in cfg.languages:
        if lang not in new:
            say(cfg, f"{lang}: already in {store.path}, kept")
    if not new:
        return open_store(store.path)
    dense = store.manifest["files"].get(DENSE_FILE)
    if dense is None or sha256_file(store.dense_file) != dense:
        raise StoreError(f"{store.dense_file}: sha256 does not match the manifest; the base "
                         "weights are damaged, not adding to this store")
    tokenizer = load_tokenizer(store.base_dir)
    model = load_hf_model(store.base_dir, calibration_dtype(DTYPES[cfg.dtype], cfg.device))
    infos = {}
    for lang in new:
        masks, info = _language_masks(cfg, model, tokenizer, sources, recipe, lang)
        save_safetensors_atomic(store.path / "masks" / f"{lang}.safetensors", masks,
                                metadata={"info": json.dumps(info, sort_keys=True)})
        infos[lang] = info
        say(cfg, f"{lang}: masks written in {info['seconds']:.1f}s")
    return add_masks(store, infos, recipe)


def _language_masks(cfg: PruneConfig, model, tokenizer, sources: dict[str, corpora.Source],
                    recipe: dict, lang: str) -> tuple[dict[str, torch.Tensor], dict]:
    """One language's packed masks and how they were made (the manifest's language entry)."""
    started = time.perf_counter()
    target = target_sparsity(cfg, lang)
    pattern = parse_pattern(cfg.pattern)
    info: dict = {"sparsity": target}
    if cfg.method == "magnitude":
        masks = magnitude_masks(model, target, pattern)
    else:
        base = recipe["base_model"]
        docs = corpora.documents(sources[lang], "calib")
        ids = calibration.calibration_windows(
            cfg.calib_kind, model, tokenizer, docs, lang, cfg.nsamples, cfg.seqlen,
            cfg.seed, cache_key=f"{base['id']}|{base['sha256']}|{sources[lang].description}"
            f"|{model.dtype}", progress=lambda m: say(cfg, m))
        info.update(calibration_tokens=int(ids.numel()), calibration_documents=len(docs))
        masks = _wanda_language(cfg, model, ids, lang, target, pattern, info)
    info["seconds"] = round(time.perf_counter() - started, 2)
    return masks, info


def _wanda_language(cfg: PruneConfig, model, ids: torch.Tensor, lang: str, target: float,
                    pattern: tuple[int, int] | None, info: dict) -> dict[str, torch.Tensor]:
    """One language's masks under cfg.recipe; OWL's per-block choices go into `info`."""
    n_blocks = len(prunable_linears(model)) // 7
    block_sparsity = None
    if cfg.recipe.allocation == "owl":
        with tqdm(total=n_blocks, desc=f"owl {lang}", unit="block",
                  disable=not cfg.progress) as bar:
            block_sparsity, ratios = owl_block_sparsity(
                model, ids, target, cfg.recipe.owl_m, cfg.recipe.owl_lambda, cfg.batch_size,
                cfg.device, on_block=lambda i, n: bar.update(1))
        info.update(block_sparsity=block_sparsity, block_outlier_ratio=ratios)
    with tqdm(total=n_blocks, desc=f"{cfg.recipe.score} {lang}", unit="block",
              disable=not cfg.progress) as bar:
        return wanda_masks(model, ids, target, pattern, cfg.batch_size, cfg.device,
                           on_block=lambda i, n: bar.update(1), recipe=cfg.recipe,
                           block_sparsity=block_sparsity)


def say(cfg: PruneConfig, message: str) -> None:
    if cfg.progress:
        tqdm.write(message)
