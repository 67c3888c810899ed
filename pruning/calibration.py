"""Calibration sets: which token windows Wanda's activation statistics are taken over.

Kinds (`submodel prune --calib-kind`):
- raw: seeded random windows of real source files (Wanda's recipe; `windows.sample_windows`).
- selfgen: the dense model continues short real file prefixes, sampling; its own text is the
  calibration set (Ji et al., ICLR 2025: self-generated data beats external corpora for
  Wanda-style pruning, as it matches what the model itself puts through its layers).
- task: documented functions of the calibration source posed as tasks (signature + docstring,
  `tasks.py`) followed by the dense model's own greedy body: the format the model is used in.
- mixed: a third of each, in that order.

Generated sets depend on the model, the source, the sizes and the seed only; they are cached
(user cache dir, keyed by all of those) so that recipes compared on the same data regenerate
nothing, and written atomically.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path

import torch

from submodel import corpora
from submodel.corpora import windows
from submodel.pruning.tasks import Task, end_of_body, sample_tasks

KINDS = ("raw", "selfgen", "task", "mixed")
SELFGEN_PREFIX_TOKENS = 32
SELFGEN_TEMPERATURE = 0.8
SELFGEN_TOP_P = 0.95
TASK_MAX_NEW_TOKENS = 192
GENERATION_BATCH = 16


def calibration_windows(kind: str, model, tokenizer, docs: list[corpora.Document],
                        language: str, nsamples: int, seqlen: int, seed: int,
                        cache_key: str | None = None,
                        progress: Callable[[str], None] | None = None) -> torch.LongTensor:
    """[nsamples, seqlen] token ids of calibration `kind` for one language."""
    if kind not in KINDS:
        raise ValueError(f"--calib-kind must be one of {', '.join(KINDS)}")
    if kind == "raw":
        return windows.sample_windows(tokenizer, docs, nsamples, seqlen, seed)
    if kind == "mixed":
        counts = [nsamples // 3 + (i < nsamples % 3) for i in range(3)]
        parts = [calibration_windows(k, model, tokenizer, docs, language, c, seqlen, seed,
                                     cache_key, progress)
                 for k, c in zip(("raw", "selfgen", "task"), counts, strict=True) if c]
        return torch.cat(parts)
    path = _cache_path(cache_key, kind, language, nsamples, seqlen, seed)
    if path is not None and path.exists():
        return torch.load(path)
    if kind == "selfgen":
        ids = self_generated(model, tokenizer, docs, nsamples, seqlen, seed, progress)
    else:
        ids = task_formatted(model, tokenizer, docs, language, nsamples, seqlen, seed, progress)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".tmp-{os.getpid()}")
        torch.save(ids, tmp)
        os.replace(tmp, path)
    return ids


@torch.no_grad()
def self_generated(model, tokenizer, docs: list[corpora.Document], nsamples: int, seqlen: int,
                   seed: int, progress: Callable[[str], None] | None = None
                   ) -> torch.LongTensor:
    """Real prefixes of SELFGEN_PREFIX_TOKENS tokens, each continued by the model (sampling at
    SELFGEN_TEMPERATURE / SELFGEN_TOP_P, end tokens suppressed) to `seqlen` tokens."""
    prefix = min(SELFGEN_PREFIX_TOKENS, seqlen - 1)
    starts = windows.sample_windows(tokenizer, docs, nsamples, prefix, seed)
    torch.manual_seed(seed)
    out = []
    for i in range(0, nsamples, GENERATION_BATCH):
        batch = starts[i:i + GENERATION_BATCH]
        if progress:
            progress(f"self-generating calibration windows {i + len(batch)}/{nsamples}")
        ids = model.generate(batch, attention_mask=torch.ones_like(batch), do_sample=True,
                             temperature=SELFGEN_TEMPERATURE, top_p=SELFGEN_TOP_P, top_k=0,
                             max_new_tokens=seqlen - prefix, min_new_tokens=seqlen - prefix,
                             pad_token_id=_pad_id(tokenizer))
        out.append(ids[:, :seqlen])
    return torch.cat(out)


class BodyEnded:
    """Per row: has the function its task prompt opened ended? Generation stops once every row
    has (most bodies end well before the token limit). Checked every CHECK_EVERY tokens."""

    CHECK_EVERY = 8

    def __init__(self, tokenizer, tasks: list[Task], width: int) -> None:
        self.tokenizer, self.tasks, self.width = tokenizer, tasks, width
        self.done = torch.zeros(len(tasks), dtype=torch.bool)

    def __call__(self, input_ids: torch.LongTensor, scores, **kwargs) -> torch.BoolTensor:
        new = input_ids.shape[1] - self.width
        if new % self.CHECK_EVERY == 0:
            for i, task in enumerate(self.tasks):
                if not self.done[i]:
                    text = self.tokenizer.decode(input_ids[i, self.width:],
                                                 skip_special_tokens=True)
                    cut = end_of_body(task.language, task.prompt, text)
                    self.done[i] = len(cut) < len(text.rstrip())
        return self.done.clone()


@torch.no_grad()
def dense_bodies(model, tokenizer, tasks: list[Task], max_new_tokens: int = TASK_MAX_NEW_TOKENS,
                 progress: Callable[[str], None] | None = None) -> list[str]:
    """The dense model's greedy body for each task prompt, cut where its function ends."""
    bodies = []
    pad = _pad_id(tokenizer)
    for i in range(0, len(tasks), GENERATION_BATCH):
        batch = tasks[i:i + GENERATION_BATCH]
        if progress:
            progress(f"generating dense bodies {i + len(batch)}/{len(tasks)}")
        encoded = [tokenizer.encode(t.prompt, add_special_tokens=False) for t in batch]
        width = max(map(len, encoded))
        ids = torch.tensor([[pad] * (width - len(e)) + e for e in encoded])  # left padding
        mask = torch.tensor([[0] * (width - len(e)) + [1] * len(e) for e in encoded])
        out = model.generate(ids, attention_mask=mask, do_sample=False,
                             max_new_tokens=max_new_tokens, pad_token_id=pad,
                             stopping_criteria=[BodyEnded(tokenizer, batch, width)])
        for task, row in zip(batch, out[:, width:], strict=True):
            text = tokenizer.decode(row, skip_special_tokens=True)
            bodies.append(end_of_body(task.language, task.prompt, text))
    return bodies


def task_formatted(model, tokenizer, docs: list[corpora.Document], language: str, nsamples: int,
                   seqlen: int, seed: int, progress: Callable[[str], None] | None = None
                   ) -> torch.LongTensor:
    """Task prompts followed by the dense model's bodies, packed back to back (a blank line
    between) into windows. A source with too few documented functions is topped up with raw
    windows, so the set always has `nsamples` windows."""
    budget = nsamples * seqlen
    # ~200-400 tokens a task: ask for enough to fill the budget, then pack what came back.
    tasks = sample_tasks(docs, language, max(8, budget // 150), seed)
    stream: list[int] = []
    bodies = dense_bodies(model, tokenizer, tasks, progress=progress) if tasks else []
    for task, body in zip(tasks, bodies, strict=True):
        stream += tokenizer.encode(task.prompt + body + "\n\n", add_special_tokens=False)
        if len(stream) >= budget:
            break
    full = len(stream) // seqlen
    packed = torch.tensor(stream[:full * seqlen], dtype=torch.long).reshape(full, seqlen)
    if full >= nsamples:
        return packed[:nsamples]
    raw = windows.sample_windows(tokenizer, docs, nsamples - full, seqlen, seed)
    return torch.cat([packed, raw])


def _pad_id(tokenizer) -> int:
    pad = tokenizer.pad_token_id
    return tokenizer.eos_token_id if pad is None else pad


def _cache_path(cache_key: str | None, kind: str, language: str, nsamples: int, seqlen: int,
                seed: int) -> Path | None:
    if cache_key is None:
        return None
    import platformdirs

    settings = {"key": cache_key, "kind": kind, "language": language, "nsamples": nsamples,
                "seqlen": seqlen, "seed": seed, "prefix": SELFGEN_PREFIX_TOKENS,
                "temperature": SELFGEN_TEMPERATURE, "top_p": SELFGEN_TOP_P,
                "task_tokens": TASK_MAX_NEW_TOKENS, "version": 1}
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:24]
    return Path(platformdirs.user_cache_dir("submodel")) / "calibration" / f"{digest}.pt"
