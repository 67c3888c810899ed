"""The engine: one copy of the dense weights, every language's mask, a KV cache of slots, and
a thread that runs continuous batching over them (what runs when: scheduler.py).

The set of languages can change while serving (`reload`): new and changed masks are loaded and
verified on the caller's thread, then the engine thread swaps the set between two steps.
Requests already submitted for a removed language, and requests running on a language whose
mask changed, finish on the mask they started with: at the swap they move to a retired key
(`python~1`) that keeps the old mask until the last of them ends. Nothing in flight is
refused or disturbed; only new requests see the new set.

Each step: drop cancelled and expired sequences, pick the language(s) to run, admit waiting
requests into free slots, prefill, then run one decode step for the batch. While sequences are
decoding, a step carries a chunk of the oldest waiting prompt (a long prompt takes several
steps; chunking.py sizes the chunks), so admitting a 2k-token prompt never stalls the tokens of
requests in flight; with nothing decoding, prompts are prefilled whole.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import threading
import time
from dataclasses import dataclass

import torch

from submodel.pruning.models import ModelError, resolve_model
from submodel.pruning.store import DENSE_FILE, Store, StoreError, open_store, verify_language
from submodel.server import gguf_blocks, kernels
from submodel.server.api import (
    DrainingError,
    EngineObserver,
    GenerationRequest,
    InvalidRequestError,
    Reason,
    Reload,
    StoreInvalidError,
    UnknownLanguageError,
)
from submodel.server.chunking import ChunkSizer
from submodel.server.masking import make_strategy
from submodel.server.model import KVCache, ModelArgs, Transformer
from submodel.server.omp import release_team
from submodel.server.prefix_cache import PrefixCache
from submodel.server.prompts import PromptBuilder, validate_messages
from submodel.server.sampling import TextAssembler, choose_token, make_generator
from submodel.server.scheduler import RequestHandle, Scheduler, Sequence
from submodel.vocabulary import DEFAULT_STRATEGY, DENSE, SERVE_DTYPES

log = logging.getLogger("submodel.engine")

END_TOKENS = ("<|endoftext|>", "<|im_end|>", "<|eot_id|>", "<|end_of_text|>", "<end_of_turn>",
              "<|end|>", "</s>")
MAX_N = 16
MAX_TEMPERATURE = 5.0
INT8_FEATURES = {"avx512bw", "avx512vnni"}  # the int8 kernel's fast path; scalar elsewhere
SERVED_DTYPES = tuple(getattr(torch, name) for name in SERVE_DTYPES)


def compute_dtype(requested: torch.dtype | None, stored: torch.dtype) -> torch.dtype:
    """The dtype a forward computes in: the requested one, else the store's; float32 or
    bfloat16, what the CPU kernels (masked Linears, decode attention) take. A float16 store
    computes in float32: its weights upcast exactly."""
    if requested is not None and requested not in SERVED_DTYPES:
        raise ValueError(f"the server computes in {' or '.join(SERVE_DTYPES)}, not "
                         f"{str(requested).removeprefix('torch.')}")
    if requested is None and stored not in SERVED_DTYPES:
        log.info("the store holds %s weights: computing in float32 (--dtype bfloat16 is "
                 "faster and rounds them)", str(stored).removeprefix("torch."))
        return torch.float32
    return requested or stored


def choose_weights(store: Store, strategy: str) -> tuple[str, str]:
    """`--weights auto`: (format, why). The GGUF's own blocks where they can be served fast
    (the store's base is a GGUF file found on this machine, the fused strategy, a CPU with
    AVX-512 VNNI): a decode step then reads about half the bytes, for the
    same greedy pass@1 (README, speed); the weights as stored otherwise."""
    if strategy != "fused":
        return "full", f"the {strategy} strategy holds the weights as stored"
    base = store.manifest["base_model"]["id"]
    try:
        source = resolve_model(base, verify=False)
    except (ModelError, OSError):  # OSError: a packaged model that cannot be assembled here
        return "full", f"the store's base model {base!r} is not on this machine"
    if source.kind != "gguf":
        return "full", f"the store's base model {base!r} is not a GGUF file"
    if not INT8_FEATURES <= set(kernels.cpu_features()):
        return "full", "this CPU lacks AVX-512 VNNI, the int8 kernel's fast path"
    return "gguf", f"the store's base is the GGUF file {source.path.name}"


@dataclass
class _Change:
    """A verified mask set waiting for the engine thread (see Engine.reload)."""

    store: Store
    masks: dict[str, list[torch.Tensor]]  # every language served after the swap
    retire: set[str]  # languages served before whose in-flight work keeps the old mask
    applied: bool = False


class Engine:
    def __init__(self, store: Store, strategy: str = DEFAULT_STRATEGY,
                 dtype: torch.dtype | None = None, max_batch: int = 8, max_context: int = 2048,
                 max_queue: int = 64, time_slice: float = 0.25, prefix_cache_mb: int = 0,
                 weights: str = "full", prefill_chunk: int | None = None,
                 observer: EngineObserver | None = None) -> None:
        self.store = store
        self.languages = store.languages
        self.observer = observer or EngineObserver()
        self.dtype = compute_dtype(dtype, store.dtype)
        if weights == "auto":
            weights, why = choose_weights(store, strategy)
            log.info("--weights auto: %s (%s)", weights, why)
        self.weights = weights
        self.max_batch = max_batch
        self.max_queue = max_queue
        self.time_slice = time_slice
        self.set_prefill_chunk(prefill_chunk)
        config = store.config()
        self.args = ModelArgs.from_config(config)
        self.max_context = min(max_context, self.args.max_positions)
        self.tokenizer = store.load_tokenizer()
        self.prompts = PromptBuilder(self.tokenizer)
        self.end_ids = self._end_token_ids(config)

        log.info("kernel path: %s", kernels.use_fastest_path(self.dtype))
        kernels.use_fastest_tiles(self.dtype, int8=weights != "full")
        kernels.use_measured_gemm_min_rows(self.dtype)
        if weights != "full":
            kernels.use_measured_gemm_min_rows(self.dtype, int8=True)
        state = store.load_state_dict(self.dtype)
        self.model = Transformer(self.args, state)  # CPU: the masked kernels are CPU code
        self.names = [f"{name}.weight" for name in self.model.prunable()]
        masks = {lang: self._load_mask(store, lang) for lang in self.languages}
        blocks = self._gguf_blocks(store) if weights == "gguf" and strategy == "fused" else None
        self.strategy = make_strategy(strategy, self.model, masks, store.dense_file, weights,
                                      blocks)
        prunable = set(self.names)
        held = {id(v) for m in self.model.modules() for v in vars(m).values()
                if isinstance(v, torch.Tensor)}  # int8's tied head drops the table
        other_bytes = sum(t.numel() * t.element_size() for n, t in state.items()
                          if n not in prunable and id(t) in held)
        del state
        self.mixes_languages = self.strategy.mixes_languages
        slots = max_batch if self.mixes_languages else 2 * max_batch  # room for paused ones
        self.cache = KVCache(self.args, slots, self.max_context, self.dtype, "cpu")
        self.scheduler = Scheduler(slots, max_batch, max_queue, time_slice, self.languages,
                                   self.observer)
        self.lock = self.scheduler.lock  # guards the scheduler and the engine's own flags
        self.other_bytes = other_bytes  # embeddings, lm_head, norms, biases
        self._report_weights()
        self.retired: set[str] = set()  # mask keys of finishing work on an old mask
        self.pending: _Change | None = None
        self.reload_lock = threading.Lock()  # one reload at a time
        self._retire_ids = itertools.count(1)
        self.prefix_cache = self._prefix_cache(prefix_cache_mb)
        self.mask_ids = {DENSE: DENSE, **{lang: self._digest(store, lang)
                                          for lang in self.languages}}  # mask key -> content
        self.stopping = False
        self.parked = True  # the engine thread is idle and holds no OpenMP team (see omp.py)
        self.thread: threading.Thread | None = None

    # ---- caller side (any thread) ----

    def start(self) -> None:
        release_team()  # the loading thread's: from now on the engine thread runs the model
        self.thread = threading.Thread(target=self._loop, name="submodel-engine", daemon=True)
        self.thread.start()

    def submit(self, request: GenerationRequest) -> RequestHandle:
        self._validate(request)
        ids = self.prompts.ids(request)
        if len(ids) >= self.max_context:
            raise InvalidRequestError(f"prompt is {len(ids)} tokens; the context window is "
                                      f"{self.max_context}: shorten the prompt",
                                      Reason.PROMPT_TOO_LONG, "prompt")
        handle = RequestHandle(request, ids)
        with self.lock:
            if not self.scheduler.accepting:
                raise DrainingError("the server is shutting down; retry on another replica")
            if request.language not in self.languages and request.language != DENSE:
                raise self._unknown(request.language)  # removed by a reload since _validate
            self.scheduler.enqueue(handle)
        return handle

    def drain(self, timeout: float) -> bool:
        """Refuse new requests and wait for the ones in flight; True if all finished."""
        return self.scheduler.drain(timeout)

    def wait_parked(self, timeout: float | None = None) -> bool:
        """Wait until the engine thread is idle and has released its OpenMP team. A caller about
        to run torch work on its own thread (a benchmark) calls this first: two live teams slow
        both down (see omp.py). True unless the timeout passed."""
        with self.lock:
            return self.lock.wait_for(lambda: self.parked, timeout)

    def stop(self) -> None:
        with self.lock:
            self.scheduler.accepting = False
            self.stopping = True
            self.lock.notify_all()
        if self.thread is not None:
            self.thread.join()

    def count_tokens(self, text: str) -> int:
        return len(self.tokenizer.encode(text))

    def _validate(self, r: GenerationRequest) -> None:
        p = r.params
        if r.language not in self.languages and r.language != DENSE:
            raise self._unknown(r.language)
        problems: list[tuple[str, str]] = []  # (field, what is wrong)
        if r.messages:
            if r.prompt or r.suffix is not None:
                problems.append(("messages", "messages go without prompt and suffix"))
            validate_messages(r.messages)
        elif r.suffix is None and not r.prompt:
            problems.append(("prompt", "prompt is empty"))
        elif r.suffix is not None and not (r.prompt or r.suffix):
            problems.append(("prompt", "prompt and suffix are both empty"))
        if not 1 <= p.max_tokens <= self.max_context:
            problems.append(("max_tokens", f"max_tokens must be in 1..{self.max_context}"))
        if not 0 <= p.temperature <= MAX_TEMPERATURE:
            problems.append(("temperature", f"temperature must be in 0..{MAX_TEMPERATURE}"))
        if not 0 < p.top_p <= 1:
            problems.append(("top_p", "top_p must be in (0, 1]"))
        if p.top_k < 0:
            problems.append(("top_k", "top_k must be >= 0 (0 = off)"))
        if not 1 <= p.n <= min(MAX_N, self.max_batch):
            problems.append(("n", f"n must be in 1..{min(MAX_N, self.max_batch)}"))
        if p.seed is not None and p.seed < 0:
            problems.append(("seed", "seed must be >= 0"))
        if problems:
            raise InvalidRequestError("; ".join(why for _, why in problems),
                                      field=problems[0][0])

    def _unknown(self, language: str) -> UnknownLanguageError:
        return UnknownLanguageError(f"language '{language}' is not served (have "
                                    f"{', '.join(self.languages)} and {DENSE})",
                                    field="language")

    def reload(self, path: str | None = None) -> Reload:
        """Serve the languages the store's manifest lists now (the store this engine serves,
        or `path`, which must hold the same base weights).

        New and changed masks (by the manifest's sha256) are read and verified here, on the
        caller's thread: sha256, shapes, kept count per row. A bad one raises
        StoreInvalidError naming its file, and the engine keeps its set. Then the engine
        thread swaps the set between two steps (see the module docstring for what happens
        to requests in flight) and this returns once it has."""
        with self.reload_lock:
            try:
                store = open_store(path or self.store.path, verify=False)
                self._check_base(store)
                masks, changed = {}, set()
                for lang in store.languages:
                    if lang in self.languages and self._digest(store, lang) == self._digest(
                            self.store, lang):
                        masks[lang] = self.strategy.masks[lang]
                    else:
                        verify_language(store, lang)
                        masks[lang] = self._load_mask(store, lang)
                        changed.add(lang)
            except StoreError as e:
                raise StoreInvalidError(f"reload refused, still serving "
                                        f"{', '.join(self.languages)}: {e}") from None
            finally:
                release_team()  # the checks' torch work (one OpenMP team at a time: omp.py)
            before = set(self.languages)
            change = _Change(store, masks, retire=before - set(masks) | (changed & before))
            with self.lock:
                if self.stopping or self.thread is None or not self.thread.is_alive():
                    if self.stopping:
                        raise DrainingError("the server is shutting down; not reloading")
                    self._apply(change)  # no engine thread: nothing runs concurrently
                else:
                    self.pending = change
                    self.lock.notify_all()
                    self.lock.wait_for(lambda: change.applied or self.stopping)
                    if not change.applied:
                        raise DrainingError("the server is shutting down; not reloading")
            after = set(masks)
            return Reload(languages=tuple(sorted(after)), added=tuple(sorted(after - before)),
                          removed=tuple(sorted(before - after)),
                          changed=tuple(sorted(changed & before)))

    def _check_base(self, store: Store) -> None:
        """A reload swaps masks only: the dense weights (by sha256) and layers must match."""
        ours = self.store.manifest["files"].get(DENSE_FILE)
        if store.manifest["files"].get(DENSE_FILE) != ours:
            raise StoreError(f"{store.dense_file}: other base weights than the ones served "
                             "(sha256 differs); restart the server to serve them")
        if store.prunable != self.store.prunable:
            raise StoreError(f"{store.path / 'manifest.json'}: other prunable layers than "
                             "the ones served; restart the server to serve them")

    @staticmethod
    def _digest(store: Store, language: str) -> str | None:
        return store.manifest["files"].get(store.manifest["languages"][language]["file"])

    def _load_mask(self, store: Store, language: str) -> dict[str, torch.Tensor]:
        loaded = store.load_mask(language)
        return {n: loaded[n] for n in self.names}

    def _gguf_blocks(self, store: Store) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """The base GGUF's own Q5_0/Q8_0 codes of the prunable Linears and the LM head."""
        base = store.manifest["base_model"]["id"]
        try:
            source = resolve_model(base, verify=False)
        except ModelError as e:
            raise ValueError(f"--weights gguf needs the store's base model file: {e}") from None
        if source.kind != "gguf":
            raise ValueError(f"--weights gguf needs a store pruned from a GGUF file; its base "
                             f"model {base!r} is a {source.kind} checkpoint (use --weights int8)")
        head = "model.embed_tokens.weight" if self.args.tie_embeddings else "lm_head.weight"
        blocks = gguf_blocks.exact_codes(source.path, [*self.names, head])
        log.info("--weights gguf: %d of %d Linears hold %s's own blocks", len(blocks),
                 len(self.names) + 1, source.path.name)
        return blocks

    def _report_weights(self) -> None:
        sizes = self.strategy.resident_bytes()
        sizes["dense"] += self.other_bytes
        for kind, nbytes in sizes.items():
            self.observer.weight_bytes(kind, nbytes)
        self.observer.sub_models(len(self.languages))

    def _end_token_ids(self, config: dict) -> set[int]:
        ids = set()
        for key in ("eos_token_id",):
            value = config.get(key)
            ids.update(value if isinstance(value, list) else [value] if value is not None else [])
        if self.tokenizer.eos_token_id is not None:
            ids.add(self.tokenizer.eos_token_id)
        vocab = self.tokenizer.get_vocab()
        ids.update(vocab[t] for t in END_TOKENS if t in vocab)
        if self.prompts.fim is not None:  # a FIM marker would start another document
            fim = self.prompts.fim
            ids.update((fim.prefix, fim.suffix, fim.middle))
        return ids

    # ---- engine thread ----

    def _loop(self) -> None:
        torch.set_grad_enabled(False)
        sched = self.scheduler
        while True:
            with self.lock:
                if sched.idle() and not self.parked:
                    release_team()
                    self.parked = True
                    self.lock.notify_all()  # wait_parked()
                self.lock.wait_for(lambda: self.stopping or self.pending is not None
                                   or not sched.idle())
                self.parked = False
                if self.stopping:
                    break
                if self.pending is not None:
                    self._apply(self.pending)
                    self.pending = None
                    self.lock.notify_all()  # reload() waits for it
            try:
                self._step()
            except Exception:
                log.exception("engine step failed; failing the requests in it")
                for seq in list(sched.running):
                    sched.finish(seq, "error")
                for handle in list(sched.prefilling):
                    sched.fail(handle)
            with self.lock:
                self.lock.notify_all()  # drain() waits for idleness
        sched.cancel_all()

    def _apply(self, change: _Change) -> None:
        """Swap the mask set, between steps (engine thread, or no engine thread; self.lock
        held). In-flight work of a retired language moves to a key of its own that keeps
        the old mask; a removed language's waiting requests go along."""
        old = self.strategy.masks
        keep = {key: old[key] for key in self.retired}
        for lang in change.retire:
            key = f"{lang}~{next(self._retire_ids)}"
            if self.scheduler.retire(lang, key, removed=lang not in change.masks):
                keep[key] = old[lang]
                self.retired.add(key)
                self.mask_ids[key] = self.mask_ids[lang]
        self.mask_ids.update({lang: self._digest(change.store, lang) for lang in change.masks})
        self.scheduler.serve(sorted(change.masks), set(self.languages) - set(change.masks))
        self.strategy.set_masks({**change.masks, **keep})
        self.store = change.store
        self.languages = sorted(change.masks)
        change.applied = True
        self._report_weights()
        log.info("serving %s (%d retired mask(s) finishing)", ", ".join(self.languages),
                 len(self.retired))

    def _drop_retired(self) -> None:
        """Free the old masks whose last request has ended."""
        with self.lock:
            done = self.scheduler.finished_keys(self.retired)
            if not done:
                return
            self.retired -= done
            self.strategy.set_masks({k: v for k, v in self.strategy.masks.items()
                                     if k not in done})
            self._report_weights()

    def set_prefill_chunk(self, tokens: int | None) -> None:
        """Chunked prefill while others decode: None sizes chunks from measured step times
        (chunking.py), N > 0 carries N tokens a step, 0 prefills every prompt whole. Benches
        call it between runs, while the engine thread idles."""
        self.chunks = ChunkSizer(tokens) if tokens != 0 else None

    def _step(self) -> None:
        sched = self.scheduler
        if self.retired:
            self._drop_retired()
        now = time.monotonic()
        sched.drop_stale(now)
        language = None if self.mixes_languages else sched.pick_language(now)
        for handle in sched.admit(language):
            handle.prefilled = self._reuse_prefix(self.mask_ids[handle.key], handle.prompt_ids,
                                                  handle.slots[0], handle.language)
        batch = sched.batch(language)
        pending = sched.to_prefill(language)
        if batch and pending and self.chunks:
            if self.chunks.plain_step_due():
                return self._decode(batch)  # the running step's own time, measured afresh
            return self._decode(batch, pending[0])  # the oldest prompt's next chunk rides along
        budget = self.chunks.size() if sched.running and self.chunks else None
        for handle in pending:
            if budget is not None and budget <= 0:
                break
            remaining = len(handle.prompt_ids) - handle.prefilled
            chunk = remaining if budget is None else min(remaining, budget)
            with self._failing_alone(handle, "prefill"):
                self._prefill(handle, chunk)
            if budget is not None:
                budget -= chunk
        batch = sched.batch(language)
        if batch:
            self._decode(batch)

    @contextlib.contextmanager
    def _failing_alone(self, handle: RequestHandle, work: str):
        """Run one request's own work; should it raise, that request fails alone (logged) and
        the engine goes on with the others."""
        try:
            yield
        except Exception:
            log.exception("%s failed; failing its request", work)
            self.scheduler.fail(handle)

    def _prefill(self, handle: RequestHandle, tokens: int) -> None:
        """Prefill the next `tokens` prompt tokens on their own."""
        ids, positions = self._chunk(handle, tokens)
        logits = self.forward(ids, positions, torch.tensor([handle.slots[0]]), [handle.key],
                              prefill=True)[0]
        self._prefilled(handle, tokens, logits)

    def _chunk(self, handle: RequestHandle, tokens: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Token ids and positions [1, tokens] of the prompt's next `tokens` tokens."""
        start = handle.prefilled
        return (torch.tensor([handle.prompt_ids[start:start + tokens]]),
                torch.arange(start, start + tokens)[None])

    def _prefilled(self, handle: RequestHandle, tokens: int, logits: torch.Tensor) -> None:
        """`tokens` more of the prompt are in its slot; once the prompt is all in, start its
        samples from the last position's logits."""
        handle.prefilled += tokens
        prompt, first = handle.prompt_ids, handle.slots[0]
        if handle.prefilled < len(prompt):
            return
        params = handle.request.params
        if self.prefix_cache is not None:
            mask_id = self.mask_ids[handle.key]
            self.prefix_cache.store(mask_id, prompt, self.cache.k[:, first],
                                    self.cache.v[:, first])
            self.observer.prefix_cache_bytes(self.prefix_cache.nbytes)
        for sample, slot in enumerate(handle.slots):
            if sample:
                self.cache.copy_slot(first, slot, len(prompt))
            seq = Sequence(handle, sample, slot, len(prompt), -1,
                           TextAssembler(self.tokenizer, params.stop),
                           make_generator(params, sample))
            self.scheduler.start(seq)
            self._accept(seq, choose_token(logits, params, seq.generator))

    def _prefix_cache(self, megabytes: int) -> PrefixCache | None:
        if not megabytes:
            return None
        try:
            return PrefixCache(megabytes << 20, self.args.n_layers, self.args.n_kv_heads,
                               self.args.head_dim, self.dtype)
        except RuntimeError:  # torch's allocator: more than this machine can reserve
            raise ValueError(f"a prefix cache of {megabytes} MiB cannot be allocated on this "
                             "machine (--prefix-cache-mb)") from None

    def _reuse_prefix(self, mask_id: str, prompt: list[int], slot: int, language: str) -> int:
        """Copy the longest cached prefix of `prompt` into `slot`; its length in tokens."""
        if self.prefix_cache is None:
            return 0
        length = self.prefix_cache.restore(mask_id, prompt, self.cache.k[:, slot],
                                           self.cache.v[:, slot])
        self.observer.prefix_cache_lookup(language, len(prompt), length)
        return length

    def _decode(self, batch: list[Sequence], pending: RequestHandle | None = None) -> None:
        """One decode step of `batch`; with `pending`, the next chunk of its prompt goes
        through the same pass over the weights."""
        started = time.perf_counter()
        chunk: int | None = 0
        tokens = torch.tensor([[s.last_token] for s in batch])
        positions = torch.tensor([[s.position] for s in batch])
        slots = torch.tensor([s.slot for s in batch])
        languages = [s.language for s in batch]
        if pending is None:
            logits = self.forward(tokens, positions, slots, languages, prefill=False)
        else:
            chunk = min(len(pending.prompt_ids) - pending.prefilled, self.chunks.size())
            ids, chunk_positions = self._chunk(pending, chunk)
            logits = None
            with self._failing_alone(pending, "a step carrying a prompt chunk"):
                logits = self.forward_mixed(tokens, positions, slots, languages, ids,
                                            chunk_positions, pending.slots[0], pending.key)
            if logits is None:  # the others' step is redone without the chunk
                logits = self.forward(tokens, positions, slots, languages, prefill=False)
                chunk = None  # a failed step's time says nothing about chunk sizes
            else:
                with self._failing_alone(pending, "prefill"):
                    self._prefilled(pending, chunk, logits[-1])
        for seq, row in zip(batch, logits[:len(batch)], strict=True):
            seq.position += 1
            self._accept(seq, choose_token(row, seq.handle.request.params, seq.generator))
        seconds = time.perf_counter() - started
        if self.chunks and chunk is not None:
            self.chunks.observe(seconds, chunk)
        self.observer.batch_size(len(batch))
        self.observer.token_latency(seconds)

    def forward(self, tokens: torch.Tensor, positions: torch.Tensor, slots: torch.Tensor,
                row_languages: list[str], prefill: bool) -> torch.Tensor:
        """One forward: a prefill of one sequence or a decode step, each row on its language's
        mask. The engine thread's own; benchmarks and tests call it while that thread idles."""
        seconds = self.strategy.set_rows(row_languages, prefill)
        if seconds:
            self.observer.mask_switch(seconds)
        return self.model(tokens, positions, self.cache, slots, prefill=prefill)

    def forward_mixed(self, tokens: torch.Tensor, positions: torch.Tensor, slots: torch.Tensor,
                      row_languages: list[str], chunk_tokens: torch.Tensor,
                      chunk_positions: torch.Tensor, chunk_slot: int,
                      chunk_language: str) -> torch.Tensor:
        """A decode step with a prompt chunk ([1, T] tokens of `chunk_language` into
        `chunk_slot`) in the same pass: logits [B + 1, vocab], the chunk's last row last."""
        rows = row_languages + [chunk_language] * chunk_tokens.shape[1]
        seconds = self.strategy.set_rows(rows, prefill=False)
        if seconds:
            self.observer.mask_switch(seconds)
        return self.model.forward_mixed(tokens, positions, slots, chunk_tokens, chunk_positions,
                                        torch.tensor([chunk_slot]), self.cache)

    def _accept(self, seq: Sequence, token: int) -> None:
        """Record a sampled token: emit its text, or finish the sequence."""
        handle = seq.handle
        if handle.first_token is None:
            handle.first_token = time.monotonic()
        if token in self.end_ids:
            return self.scheduler.finish(seq, "stop")
        seq.generated += 1
        handle.generated += 1
        seq.last_token = token
        delta, hit_stop = seq.assembler.add(token)
        if delta or not hit_stop:
            handle.token(seq.sample, delta, token)
        if hit_stop:
            self.scheduler.finish(seq, "stop")
        elif (seq.generated >= handle.request.params.max_tokens
              or seq.position + 1 >= self.max_context):
            self.scheduler.finish(seq, "length")
