"""The engine: one copy of the dense weights, every language's mask, a KV cache of slots, and
a scheduler thread that runs continuous batching over them.

The set of languages can change while serving (`reload`): new and changed masks are loaded and
verified on the caller's thread, then the engine thread swaps the set between two steps.
Requests already submitted for a removed language, and requests running on a language whose
mask changed, finish on the mask they started with: at the swap they move to a retired key
(`python~1`) that keeps the old mask until the last of them ends. Nothing in flight is
refused or disturbed; only new requests see the new set.

Each step: drop cancelled and expired sequences, pick the language(s) to run, admit waiting
requests into free slots (prefilling them), then run one decode step for the batch. With a
strategy that cannot mix languages in one step (swap, replicas), a language keeps the batch for
a bounded time slice, then the language with the oldest waiting work goes next; sequences of
other languages keep their slots (paused) until their turn comes back.
"""

from __future__ import annotations

import itertools
import logging
import queue
import threading
import time
from collections import deque
from dataclasses import dataclass, field

import torch

from submodel.pruning.store import DENSE_FILE, Store, StoreError, open_store, verify_language
from submodel.server.api import (
    DoneEvent,
    DrainingError,
    EngineObserver,
    FinishEvent,
    GenerationRequest,
    InvalidRequestError,
    QueueFullError,
    Reason,
    Reload,
    StoreInvalidError,
    TokenEvent,
    UnknownLanguageError,
)
from submodel.server.masking import make_strategy
from submodel.server.model import KVCache, ModelArgs, Transformer
from submodel.server.omp import release_team
from submodel.server.prompts import PromptBuilder, validate_messages
from submodel.server.sampling import TextAssembler, choose_token, make_generator
from submodel.vocabulary import DEFAULT_STRATEGY, DENSE

log = logging.getLogger("submodel.engine")

END_TOKENS = ("<|endoftext|>", "<|im_end|>", "<|eot_id|>", "<|end_of_text|>", "<end_of_turn>",
              "<|end|>", "</s>")
MAX_N = 16
MAX_TEMPERATURE = 5.0


class RequestHandle:
    """A submitted request: iterate it for events; cancel() frees its slots at the next step."""

    _ids = itertools.count()

    def __init__(self, request: GenerationRequest, prompt_ids: list[int]) -> None:
        self.id = next(self._ids)
        self.request = request
        self.language = request.language
        self.key = request.language  # the engine's mask key: a retired one after a reload
        self.prompt_ids = prompt_ids
        self.prompt_tokens = len(prompt_ids)
        self.submitted = time.monotonic()
        self.admitted: float | None = None
        self.first_token: float | None = None
        self.cancelled = False
        self.unfinished = request.params.n
        self.generated = 0
        self._events: queue.Queue = queue.Queue()

    def cancel(self) -> None:
        self.cancelled = True

    def __iter__(self):
        while True:
            event = self._events.get()
            yield event
            if isinstance(event, DoneEvent):
                return

    def expired(self, now: float) -> bool:
        return self.request.deadline is not None and now >= self.request.deadline


@dataclass
class Sequence:
    handle: RequestHandle
    sample: int
    slot: int
    position: int  # where the next token's key/value go
    last_token: int
    assembler: TextAssembler
    generator: torch.Generator | None
    generated: int = 0
    done: bool = False
    language: str = field(init=False)

    def __post_init__(self) -> None:
        self.language = self.handle.key


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
                 max_queue: int = 64, time_slice: float = 0.25,
                 observer: EngineObserver | None = None) -> None:
        self.store = store
        self.languages = store.languages
        self.observer = observer or EngineObserver()
        self.dtype = dtype or store.dtype
        self.max_batch = max_batch
        self.max_queue = max_queue
        self.time_slice = time_slice
        config = store.config()
        self.args = ModelArgs.from_config(config)
        self.max_context = min(max_context, self.args.max_positions)
        self.tokenizer = store.load_tokenizer()
        self.prompts = PromptBuilder(self.tokenizer)
        self.end_ids = self._end_token_ids(config)

        state = store.load_state_dict(self.dtype)
        self.model = Transformer(self.args, state)  # CPU: the masked kernels are CPU code
        self.names = [f"{name}.weight" for name in self.model.prunable()]
        masks = {lang: self._load_mask(store, lang) for lang in self.languages}
        self.strategy = make_strategy(strategy, self.model, masks, store.dense_file)
        prunable = set(self.names)
        other_bytes = sum(t.numel() * t.element_size() for n, t in state.items()
                          if n not in prunable)
        del state
        self.mixes_languages = self.strategy.mixes_languages
        slots = max_batch if self.mixes_languages else 2 * max_batch  # room for paused ones
        self.cache = KVCache(self.args, slots, self.max_context, self.dtype, "cpu")
        self.free_slots = list(range(slots))
        self.other_bytes = other_bytes  # embeddings, lm_head, norms, biases
        self._report_weights()
        self.retired: set[str] = set()  # mask keys of finishing work on an old mask
        self.pending: _Change | None = None
        self.reload_lock = threading.Lock()  # one reload at a time
        self._retire_ids = itertools.count(1)

        self.waiting: dict[str, deque[RequestHandle]] = {
            lang: deque() for lang in [*self.languages, DENSE]}
        self.running: list[Sequence] = []
        self.active = DENSE
        self.slice_started = 0.0
        self.lock = threading.Condition()
        self.accepting = True
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
            if not self.accepting:
                raise DrainingError("the server is shutting down; retry on another replica")
            if request.language not in self.languages and request.language != DENSE:
                raise self._unknown(request.language)  # removed by a reload since _validate
            if sum(len(q) for q in self.waiting.values()) >= self.max_queue:
                raise QueueFullError(f"the queue is full ({self.max_queue} waiting requests); "
                                     "retry later")
            self.waiting[request.language].append(handle)
            self.observer.queue_depth(request.language, len(self.waiting[request.language]))
            self.lock.notify()
        return handle

    def drain(self, timeout: float) -> bool:
        """Refuse new requests and wait for the ones in flight; True if all finished."""
        with self.lock:
            self.accepting = False
            return self.lock.wait_for(self._idle, timeout)

    def wait_parked(self, timeout: float | None = None) -> bool:
        """Wait until the engine thread is idle and has released its OpenMP team. A caller about
        to run torch work on its own thread (a benchmark) calls this first: two live teams slow
        both down (see omp.py). True unless the timeout passed."""
        with self.lock:
            return self.lock.wait_for(lambda: self.parked, timeout)

    def stop(self) -> None:
        with self.lock:
            self.accepting = False
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

    def _idle(self) -> bool:
        return not self.running and not any(self.waiting.values())

    # ---- engine thread ----

    def _loop(self) -> None:
        torch.set_grad_enabled(False)
        while True:
            with self.lock:
                if self._idle() and not self.parked:
                    release_team()
                    self.parked = True
                    self.lock.notify_all()  # wait_parked()
                self.lock.wait_for(lambda: self.stopping or self.pending is not None
                                   or not self._idle())
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
                for seq in list(self.running):
                    self._finish(seq, "error")
            with self.lock:
                self.lock.notify_all()  # drain() waits for idleness
        for seq in list(self.running):
            self._finish(seq, "cancelled")
        with self.lock:
            waiting = [h for q in self.waiting.values() for h in q]
            for q in self.waiting.values():
                q.clear()
        for handle in waiting:
            self._abandon(handle, "cancelled")

    def _apply(self, change: _Change) -> None:
        """Swap the mask set, between steps (engine thread, or no engine thread; self.lock
        held). In-flight work of a retired language moves to a key of its own that keeps
        the old mask; a removed language's waiting requests go along."""
        old = self.strategy.masks
        keep = {key: old[key] for key in self.retired}
        for lang in change.retire:
            removed = lang not in change.masks
            running = [s for s in self.running if s.language == lang]
            waiting = self.waiting.pop(lang) if removed else deque()
            if not running and not waiting:
                continue
            key = f"{lang}~{next(self._retire_ids)}"
            keep[key] = old[lang]
            for seq in running:
                seq.language = seq.handle.key = key
            for handle in waiting:
                handle.key = key
            self.waiting[key] = waiting
            self.retired.add(key)
        for lang in set(self.languages) - set(change.masks):
            self.waiting.pop(lang, None)  # emptied above
        for lang in change.masks:
            self.waiting.setdefault(lang, deque())
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
            done = {key for key in self.retired if not self.waiting[key]
                    and not any(s.language == key for s in self.running)}
            if not done:
                return
            for key in done:
                del self.waiting[key]
            self.retired -= done
            self.strategy.set_masks({k: v for k, v in self.strategy.masks.items()
                                     if k not in done})
            self._report_weights()

    def _step(self) -> None:
        if self.retired:
            self._drop_retired()
        now = time.monotonic()
        for seq in list(self.running):
            if seq.handle.cancelled or seq.handle.expired(now):
                self._finish(seq, "cancelled" if seq.handle.cancelled else "deadline")
        self._drop_abandoned(now)
        language = None if self.mixes_languages else self._pick_language(now)
        for handle in self._admit(language):
            try:
                self._prefill(handle)
            except Exception:
                log.exception("prefill failed; failing its request")
                self._fail(handle)
        batch = [s for s in self.running
                 if language is None or s.language == language][: self.max_batch]
        if batch:
            self._decode(batch)

    def _drop_abandoned(self, now: float) -> None:
        with self.lock:
            dropped = []
            for lang, q in self.waiting.items():
                keep = [h for h in q if not (h.cancelled or h.expired(now))]
                if len(keep) != len(q):
                    dropped += [h for h in q if h not in keep]
                    self.waiting[lang] = deque(keep)
                    if lang not in self.retired:
                        self.observer.queue_depth(lang, len(keep))
        for handle in dropped:
            self._abandon(handle, "cancelled" if handle.cancelled else "deadline")

    def _pick_language(self, now: float) -> str | None:
        """Keep the active language for its slice; then the oldest waiting work goes next."""
        with self.lock:
            oldest: dict[str, float] = {}
            for lang, q in self.waiting.items():
                if q and len(self.free_slots) >= q[0].request.params.n:
                    oldest[lang] = q[0].submitted
            for seq in self.running:
                oldest[seq.language] = min(oldest.get(seq.language, now), seq.handle.submitted)
        if not oldest:
            return None
        fresh = now - self.slice_started < self.time_slice
        if self.active in oldest and (fresh or len(oldest) == 1):
            return self.active
        others = {k: v for k, v in oldest.items() if k != self.active} or oldest
        self.active = min(others, key=others.get)
        self.slice_started = now
        return self.active

    def _admit(self, language: str | None) -> list[RequestHandle]:
        """Move waiting requests into free slots, oldest first, up to the batch size."""
        admitted = []
        with self.lock:
            in_batch = sum(1 for s in self.running if language is None or s.language == language)
            while True:
                queues = [self.waiting[language]] if language else list(self.waiting.values())
                heads = [q for q in queues if q]
                if not heads:
                    break
                q = min(heads, key=lambda q: q[0].submitted)
                n = q[0].request.params.n
                if len(self.free_slots) < n or in_batch + n > self.max_batch:
                    break
                handle = q.popleft()
                if handle.key == handle.language:  # a retired key has no gauge
                    self.observer.queue_depth(handle.language, len(q))
                handle.slots = [self.free_slots.pop(0) for _ in range(n)]
                in_batch += n
                admitted.append(handle)
        return admitted

    def _prefill(self, handle: RequestHandle) -> None:
        handle.admitted = time.monotonic()
        params = handle.request.params
        self._set_rows([handle.key], prefill=True)
        ids = torch.tensor([handle.prompt_ids])
        positions = torch.arange(len(handle.prompt_ids))[None]
        logits = self.model(ids, positions, self.cache, torch.tensor(handle.slots[:1]),
                            prefill=True)[0]
        for sample, slot in enumerate(handle.slots):
            if sample:
                self.cache.copy_slot(handle.slots[0], slot, len(handle.prompt_ids))
            seq = Sequence(handle, sample, slot, len(handle.prompt_ids), -1,
                           TextAssembler(self.tokenizer, params.stop),
                           make_generator(params, sample))
            self.running.append(seq)
            self._accept(seq, choose_token(logits, params, seq.generator))

    def _decode(self, batch: list[Sequence]) -> None:
        started = time.perf_counter()
        self._set_rows([s.language for s in batch], prefill=False)
        tokens = torch.tensor([[s.last_token] for s in batch])
        positions = torch.tensor([[s.position] for s in batch])
        slots = torch.tensor([s.slot for s in batch])
        logits = self.model(tokens, positions, self.cache, slots, prefill=False)
        for seq, row in zip(batch, logits, strict=True):
            seq.position += 1
            self._accept(seq, choose_token(row, seq.handle.request.params, seq.generator))
        self.observer.batch_size(len(batch))
        self.observer.token_latency(time.perf_counter() - started)

    def forward(self, tokens: torch.Tensor, positions: torch.Tensor, slots: torch.Tensor,
                row_languages: list[str], prefill: bool) -> torch.Tensor:
        """One forward outside the scheduler (benchmarks, tests; the engine thread idle): a
        prefill of one sequence or a decode step, each row on its language's mask."""
        self._set_rows(row_languages, prefill)
        return self.model(tokens, positions, self.cache, slots, prefill=prefill)

    def _set_rows(self, row_languages: list[str], prefill: bool) -> None:
        seconds = self.strategy.set_rows(row_languages, prefill)
        if seconds:
            self.observer.mask_switch(seconds)

    def _accept(self, seq: Sequence, token: int) -> None:
        """Record a sampled token: emit its text, or finish the sequence."""
        handle = seq.handle
        if handle.first_token is None:
            handle.first_token = time.monotonic()
        if token in self.end_ids:
            return self._finish(seq, "stop")
        seq.generated += 1
        handle.generated += 1
        seq.last_token = token
        delta, hit_stop = seq.assembler.add(token)
        if delta or not hit_stop:
            handle._events.put(TokenEvent(seq.sample, delta, token))
        if hit_stop:
            self._finish(seq, "stop")
        elif (seq.generated >= handle.request.params.max_tokens
              or seq.position + 1 >= self.max_context):
            self._finish(seq, "length")

    def _finish(self, seq: Sequence, reason: str) -> None:
        if seq.done:
            return
        seq.done = True
        self.running.remove(seq)
        with self.lock:
            self.free_slots.append(seq.slot)
        handle = seq.handle
        tail = seq.assembler.finish()
        if tail:
            handle._events.put(TokenEvent(seq.sample, tail, -1))
        handle._events.put(FinishEvent(seq.sample, reason, seq.assembler.text, seq.generated))
        handle.unfinished -= 1
        if handle.unfinished == 0:
            self._done(handle)

    def _fail(self, handle: RequestHandle) -> None:
        """End a request whose prefill raised: its started samples and the rest."""
        started = [s for s in self.running if s.handle is handle]
        with self.lock:
            used = {s.slot for s in started}
            self.free_slots.extend(slot for slot in handle.slots if slot not in used)
        for seq in started:
            self._finish(seq, "error")
        for sample in range(len(started), handle.request.params.n):
            handle._events.put(FinishEvent(sample, "error", "", 0))
            handle.unfinished -= 1
        if handle.unfinished == 0:
            self._done(handle)

    def _abandon(self, handle: RequestHandle, reason: str) -> None:
        """A request that never got a slot (cancelled or expired while waiting)."""
        for sample in range(handle.request.params.n):
            handle._events.put(FinishEvent(sample, reason, "", 0))
        self._done(handle)

    def _done(self, handle: RequestHandle) -> None:
        now = time.monotonic()
        admitted = handle.admitted or now
        handle._events.put(DoneEvent(
            prompt_tokens=handle.prompt_tokens, generated_tokens=handle.generated,
            queue_seconds=admitted - handle.submitted,
            ttft_seconds=(handle.first_token or now) - handle.submitted,
            total_seconds=now - handle.submitted))
