"""A fast proxy for mask quality, computed without HumanEval: teacher-forced agreement with the
dense model on code tasks from sources disjoint from calibration.

Per language, a tuning set of documented functions (`pruning.tasks`: prompt = signature +
docstring) is cut from a *tuning source*: other projects than the calibration source (Python:
installed third-party packages; Java: JDK modules that calibration leaves out; C++: the
libstdc++ headers; JavaScript: `--tuning javascript=PATH`). The target of each task is the dense
model's own greedy body. A sub-model is scored by feeding prompt + target and comparing, at each
target token, its next-token distribution with dense's:
- agreement: the share of target tokens that are the sub-model's top-1 too (the dense greedy
  path it would have kept);
- KL(dense || sub-model), over dense's top PROXY_TOPK tokens (the rest of the vocabulary carries
  a negligible share of dense's mass and would cost a full-vocabulary copy per token).

Tasks that share a 13-gram with HumanEval are dropped (`hygiene.py`). Targets and dense
distributions are computed once and cached in OUT; each finished cell is written at once, so a
rerun resumes. `submodel bench proxy --store S [--languages ...] [--tasks 32]`.
"""

from __future__ import annotations

import hashlib
import json
import sysconfig
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm import tqdm

from submodel import corpora
from submodel.bench.hygiene import humaneval_ngrams, shares_ngram
from submodel.bench.perplexity import apply_mask, prunable_params, restore_dense
from submodel.bench.report import write_json, write_text
from submodel.pruning.calibration import dense_bodies
from submodel.pruning.store import Store
from submodel.pruning.tasks import Task, sample_tasks
from submodel.vocabulary import DENSE

PROXY_TOPK = 32
TUNING_SEED = 4321
# Python tuning code: third-party packages this project installs (so every machine with the
# project has them), none of them in the standard library that calibration reads.
PY_TUNING_PACKAGES = ("transformers", "tqdm", "pygments", "matplotlib", "grpc",
                      "prometheus_client", "safetensors", "accelerate", "platformdirs", "gguf")
# JDK modules outside corpora.JAVA_MODULES (calibration).
JAVA_TUNING_MODULES = ("java.desktop", "java.xml", "java.compiler", "java.security.jgss",
                       "java.instrument", "jdk.xml.dom", "java.datatransfer")


class ProxyError(Exception):
    """Bad input or a missing tuning source; one line for the user."""


def tuning_source(language: str, override: str | None = None) -> corpora.Source:
    """Code of `language` from other projects than its calibration source."""
    if override is not None:
        return corpora.find_source(language, override)
    if language == "python":
        root = Path(sysconfig.get_paths()["purelib"])
        names = tuple(n for pkg in PY_TUNING_PACKAGES if (root / pkg).is_dir()
                      for n in corpora.walk_files(root, (".py",), frozenset({"tests", "test"}),
                                                  root=root / pkg))
        return corpora.Source("python", f"third-party packages in {root} "
                              f"({', '.join(PY_TUNING_PACKAGES)}; {len(names)} files)",
                              "files", root, names)
    if language == "java":
        java = corpora.find_source("java")
        if java.kind != "zip":
            raise ProxyError("no JDK src.zip for the Java tuning set: pass --tuning java=PATH")
        return corpora.zip_source("java", java.root, (".java",), JAVA_TUNING_MODULES,
                                  "JDK modules outside calibration")
    if language == "cpp":
        include = corpora.newest_dir(Path("/usr/include/c++").glob("[0-9]*"))
        if include is None:
            raise ProxyError("no libstdc++ headers for the C++ tuning set: pass --tuning "
                             "cpp=PATH")
        names = tuple(sorted(str(p.relative_to(include)) for p in include.rglob("*")
                             if p.is_file() and p.suffix in ("", ".h", ".tcc")))
        return corpora.Source("cpp", f"libstdc++ headers {include} ({len(names)} files)",
                              "files", include, names)
    raise ProxyError(f"no default {language} tuning source: pass --tuning {language}=PATH "
                     "(code from other projects than its calibration source)")


def tuning_tasks(source: corpora.Source, language: str, count: int) -> tuple[list[Task], int]:
    """`count` tasks free of HumanEval 13-grams, and how many were dropped for sharing one."""
    docs = corpora.documents(source, "calib")  # a tuning source is disjoint as a whole
    grams = humaneval_ngrams()
    pool = sample_tasks(docs, language, 2 * count, TUNING_SEED)
    clean = [t for t in pool if not shares_ngram(t.prompt + t.body, grams)]
    return clean[:count], len(pool) - len(clean)


@torch.no_grad()
def distributions(model, tokenizer, prompt: str, target: str
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """log-probs [T, V] at each target token's position, and the target ids [T]."""
    p = tokenizer.encode(prompt, add_special_tokens=False)
    t = tokenizer.encode(prompt + target, add_special_tokens=False)[len(p):]
    ids = torch.tensor([p + t])
    logits = model(input_ids=ids, use_cache=False).logits[0, len(p) - 1:-1].float()
    return F.log_softmax(logits, dim=-1), torch.tensor(t), torch.tensor(len(p))


def dense_reference(model, tokenizer, tasks: list[Task], targets: list[str]) -> list[dict]:
    """Per task: target ids and dense's top-K token ids and log-probs at each position."""
    refs = []
    for task, target in zip(tasks, targets, strict=True):
        logp, ids, _ = distributions(model, tokenizer, task.prompt, target)
        top = logp.topk(PROXY_TOPK, dim=-1)
        refs.append({"ids": ids, "top_ids": top.indices, "top_logp": top.values})
    return refs


def score(model, tokenizer, tasks: list[Task], targets: list[str], refs: list[dict]) -> dict:
    """Agreement and KL of the model as it is now against the dense references."""
    agree = tokens = 0
    kl_sum = 0.0
    for task, target, ref in zip(tasks, targets, refs, strict=True):
        logp, ids, _ = distributions(model, tokenizer, task.prompt, target)
        if not torch.equal(ids, ref["ids"]):
            raise ProxyError("tokenization differs between runs")
        agree += int((logp.argmax(-1) == ids).sum())
        tokens += ids.numel()
        p = ref["top_logp"]
        kl_sum += float((p.exp() * (p - logp.gather(1, ref["top_ids"]))).sum())
    return {"agreement": agree / tokens, "kl": kl_sum / tokens, "tokens": tokens}


def run(store: Store, languages: list[str], submodels: list[str], count: int, out: Path,
        tuning: dict[str, str] | None = None, progress: bool = True) -> dict:
    """Fill the proxy table (resuming from OUT/proxy.json) and write JSON and Markdown."""
    tuning = tuning or {}
    out.mkdir(parents=True, exist_ok=True)
    manifest_sha = hashlib.sha256((store.path / "manifest.json").read_bytes()).hexdigest()
    result_path = out / "proxy.json"
    result = _load(result_path)
    if result.get("manifest_sha256") != manifest_sha or result.get("tasks") != count:
        result = {"store": str(store.path), "manifest_sha256": manifest_sha, "tasks": count,
                  "recipe": _recipe_of(store), "cells": {}, "sets": {}}
    tokenizer = store.load_tokenizer()
    model = store.load_hf_model(torch.float32)
    params = prunable_params(model, store)
    base_sha = store.manifest["files"].get("base/model.safetensors", "")[:16]
    sets = {}
    for lang in languages:
        source = tuning_source(lang, tuning.get(lang))
        tasks, dropped = tuning_tasks(source, lang, count)
        if not tasks:
            raise ProxyError(f"no documented {lang} functions in {source.description}")
        targets = _targets(model, tokenizer, tasks, out / f"targets-{lang}-{base_sha}.json",
                           progress)
        started = time.perf_counter()
        sets[lang] = (tasks, targets, dense_reference(model, tokenizer, tasks, targets))
        result["sets"][lang] = {"source": source.description, "tasks": len(tasks),
                                "dropped_humaneval_overlap": dropped,
                                "dense_seconds": round(time.perf_counter() - started, 1)}
    todo = [(row, lang) for row in submodels for lang in languages
            if f"{row}/{lang}" not in result["cells"] and row != DENSE]
    with tqdm(total=len(todo), desc="proxy", unit="cell", disable=not progress) as bar:
        for row in dict.fromkeys(r for r, _ in todo):
            apply_mask(params, store.load_mask(row))
            for lang in [lang for r, lang in todo if r == row]:
                started = time.perf_counter()
                cell = score(model, tokenizer, *sets[lang])
                cell["seconds"] = round(time.perf_counter() - started, 1)
                result["cells"][f"{row}/{lang}"] = cell
                write_json(result_path, result)
                bar.update(1)
            restore_dense(params, store)
    write_json(result_path, result)
    write_text(out / "proxy.md", markdown(result, submodels, languages))
    return result


def _targets(model, tokenizer, tasks: list[Task], path: Path, progress: bool) -> list[str]:
    """The dense model's greedy bodies, cached in `path` by task name."""
    cached = _load(path)
    missing = [t for t in tasks if t.name not in cached]
    if missing:
        say = (lambda m: tqdm.write(m)) if progress else None
        for task, body in zip(missing, dense_bodies(model, tokenizer, missing, progress=say),
                              strict=True):
            cached[task.name] = body
        write_json(path, cached)
    return [cached[t.name] for t in tasks]


def _recipe_of(store: Store) -> dict:
    m = store.manifest
    return {k: m.get(k) for k in ("method", "sparsity", "pattern", "calibration", "recipe")
            if k in m}


def _load(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def markdown(result: dict, submodels: list[str], languages: list[str]) -> str:
    lines = ["# Proxy: teacher-forced agreement with dense on tuning tasks", "",
             f"Store `{result['store']}`. Per cell: top-1 agreement with the dense greedy body "
             f"(higher is better) / KL(dense || sub-model) over dense's top {PROXY_TOPK} tokens "
             "(lower is better).", "",
             "| sub-model | " + " | ".join(languages) + " |", "|---|" + "---|" * len(languages)]
    for row in submodels:
        if row == DENSE:
            continue
        cells = [result["cells"].get(f"{row}/{lang}") for lang in languages]
        lines.append(f"| {row} | " + " | ".join(
            f"{c['agreement']:.1%} / {c['kl']:.3f}" if c else "–" for c in cells) + " |")
    lines += ["", "| language | tuning source | tasks | dropped (HumanEval 13-gram) |",
              "|---|---|---|---|"]
    for lang, s in result["sets"].items():
        lines.append(f"| {lang} | {s['source']} | {s['tasks']} | "
                     f"{s['dropped_humaneval_overlap']} |")
    return "\n".join(lines) + "\n"
