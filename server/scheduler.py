"""Continuous batching: who waits, who runs, in which slot, and which language goes next.

Requests wait in one queue per mask key (a language, `dense`, or a retired key such as
`python~1` that finishes in-flight work on an old mask after a reload). The engine thread asks,
once per step: which language runs (`pick_language`: a language keeps the batch for a bounded
time slice, then the oldest waiting work goes next; strategies that mix languages in one step
skip this), which waiting requests get free KV slots (`admit`), and which running sequences
make up the decode batch (`batch`). An admitted request is `prefilling` until its whole
prompt is in its slot (the engine prefills it in chunks while others decode); then its samples
run. A request's handle emits its own events; the scheduler finishes sequences and frees their
slots. One condition (`lock`) guards all of it: callers
submit and cancel from any thread, the engine thread schedules.
"""

from __future__ import annotations

import itertools
import queue
import threading
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch

from submodel.server.api import (
    DoneEvent,
    DrainingError,
    EngineObserver,
    FinishEvent,
    GenerationRequest,
    QueueFullError,
    TokenEvent,
)
from submodel.server.sampling import TextAssembler
from submodel.vocabulary import DENSE


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
        self.slots: list[int] = []  # KV slots, one per sample, given at admission
        self.prefilled = 0  # prompt tokens already in slots[0]
        self.cancelled = False
        self.unfinished = request.params.n
        self.generated = 0
        self._events: queue.Queue = queue.Queue()

    def cancel(self) -> None:
        self.cancelled = True

    def __iter__(self) -> Iterator[TokenEvent | FinishEvent | DoneEvent]:
        while True:
            event = self._events.get()
            yield event
            if isinstance(event, DoneEvent):
                return

    def expired(self, now: float) -> bool:
        return self.request.deadline is not None and now >= self.request.deadline

    def token(self, sample: int, text: str, token: int) -> None:
        self._events.put(TokenEvent(sample, text, token))

    def finish(self, sample: int, reason: str, text: str, generated: int) -> None:
        """One sample ended; the last one ends the request."""
        self._events.put(FinishEvent(sample, reason, text, generated))
        self.unfinished -= 1
        if self.unfinished == 0:
            now = time.monotonic()
            admitted = self.admitted or now
            self._events.put(DoneEvent(
                prompt_tokens=self.prompt_tokens, generated_tokens=self.generated,
                queue_seconds=admitted - self.submitted,
                ttft_seconds=(self.first_token or now) - self.submitted,
                total_seconds=now - self.submitted))


@dataclass
class Sequence:
    """One running sample of a request, in its own KV slot."""

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


class Scheduler:
    def __init__(self, slots: int, max_batch: int, max_queue: int, time_slice: float,
                 languages: list[str], observer: EngineObserver) -> None:
        self.max_batch = max_batch
        self.max_queue = max_queue
        self.time_slice = time_slice
        self.observer = observer
        self.free_slots = list(range(slots))
        self.waiting: dict[str, deque[RequestHandle]] = {
            lang: deque() for lang in [*languages, DENSE]}
        self.prefilling: list[RequestHandle] = []  # admitted, prompt not yet all in its slot
        self.running: list[Sequence] = []
        self.active = DENSE
        self.slice_started = 0.0
        self.lock = threading.Condition()  # reentrant: callers may hold it around enqueue
        self.accepting = True

    # ---- caller side (any thread) ----

    def enqueue(self, handle: RequestHandle) -> None:
        with self.lock:
            if not self.accepting:
                raise DrainingError("the server is shutting down; retry on another replica")
            if sum(len(q) for q in self.waiting.values()) >= self.max_queue:
                raise QueueFullError(f"the queue is full ({self.max_queue} waiting requests); "
                                     "retry later")
            self.waiting[handle.key].append(handle)
            self.observer.queue_depth(handle.language, len(self.waiting[handle.key]))
            self.lock.notify()

    def idle(self) -> bool:
        return not self.running and not self.prefilling and not any(self.waiting.values())

    def drain(self, timeout: float) -> bool:
        """Refuse new requests and wait for the ones in flight; True if all finished."""
        with self.lock:
            self.accepting = False
            return self.lock.wait_for(self.idle, timeout)

    # ---- engine thread ----

    def drop_stale(self, now: float) -> None:
        """End running sequences and waiting requests that were cancelled or expired."""
        for seq in list(self.running):
            if seq.handle.cancelled or seq.handle.expired(now):
                self.finish(seq, "cancelled" if seq.handle.cancelled else "deadline")
        for handle in list(self.prefilling):
            if handle.cancelled or handle.expired(now):
                self.release(handle)
                self.abandon(handle, "cancelled" if handle.cancelled else "deadline")
        with self.lock:
            dropped = []
            for key, q in self.waiting.items():
                keep = [h for h in q if not (h.cancelled or h.expired(now))]
                if len(keep) != len(q):
                    dropped += [h for h in q if h not in keep]
                    self.waiting[key] = deque(keep)
                    if key == q[0].language:  # a retired key has no gauge
                        self.observer.queue_depth(key, len(keep))
        for handle in dropped:
            self.abandon(handle, "cancelled" if handle.cancelled else "deadline")

    def pick_language(self, now: float) -> str | None:
        """Keep the active language for its slice; then the oldest waiting work goes next."""
        with self.lock:
            oldest: dict[str, float] = {}
            for lang, q in self.waiting.items():
                if q and len(self.free_slots) >= q[0].request.params.n:
                    oldest[lang] = q[0].submitted
            for handle in [*self.prefilling, *(seq.handle for seq in self.running)]:
                oldest[handle.key] = min(oldest.get(handle.key, now), handle.submitted)
        if not oldest:
            return None
        fresh = now - self.slice_started < self.time_slice
        if self.active in oldest and (fresh or len(oldest) == 1):
            return self.active
        others = {k: v for k, v in oldest.items() if k != self.active} or oldest
        self.active = min(others, key=others.get)
        self.slice_started = now
        return self.active

    def admit(self, language: str | None) -> list[RequestHandle]:
        """Give waiting requests free slots, oldest first, up to the batch size (of `language`
        only, unless None)."""
        admitted = []
        with self.lock:
            in_batch = sum(1 for s in self.running if language is None or s.language == language)
            in_batch += sum(h.request.params.n for h in self.prefilling
                            if language is None or h.key == language)
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
                handle.admitted = time.monotonic()
                in_batch += n
                admitted.append(handle)
                self.prefilling.append(handle)
        return admitted

    def to_prefill(self, language: str | None) -> list[RequestHandle]:
        """Admitted requests whose prompt is not all in its slot yet, oldest first (of
        `language` only, unless None)."""
        return [h for h in self.prefilling if language is None or h.key == language]

    def start(self, seq: Sequence) -> None:
        """A sample whose prompt is prefilled starts decoding (its request leaves prefilling)."""
        if seq.handle in self.prefilling:
            self.prefilling.remove(seq.handle)
        self.running.append(seq)

    def batch(self, language: str | None) -> list[Sequence]:
        """The next decode step's sequences (of `language` only, unless None)."""
        return [s for s in self.running if language is None or s.language == language
                ][: self.max_batch]

    def finish(self, seq: Sequence, reason: str) -> None:
        if seq.done:
            return
        seq.done = True
        self.running.remove(seq)
        with self.lock:
            self.free_slots.append(seq.slot)
        tail = seq.assembler.finish()
        if tail:
            seq.handle.token(seq.sample, tail, -1)
        seq.handle.finish(seq.sample, reason, seq.assembler.text, seq.generated)

    def fail(self, handle: RequestHandle) -> None:
        """End a request whose prefill raised: its started samples and the rest."""
        started = [s for s in self.running if s.handle is handle]
        if handle in self.prefilling:
            self.prefilling.remove(handle)
        with self.lock:
            used = {s.slot for s in started}
            self.free_slots.extend(slot for slot in handle.slots if slot not in used)
        for seq in started:
            self.finish(seq, "error")
        for sample in range(len(started), handle.request.params.n):
            handle.finish(sample, "error", "", 0)

    def release(self, handle: RequestHandle) -> None:
        """Take a request out of prefilling and free its slots (it has no samples running)."""
        self.prefilling.remove(handle)
        with self.lock:
            self.free_slots.extend(handle.slots)

    def abandon(self, handle: RequestHandle, reason: str) -> None:
        """End a request that never got a slot (cancelled, expired, or shutting down)."""
        for sample in range(handle.unfinished):
            handle.finish(sample, reason, "", 0)

    def cancel_all(self) -> None:
        """Shutting down: end every running and waiting request as cancelled."""
        for seq in list(self.running):
            self.finish(seq, "cancelled")
        for handle in list(self.prefilling):
            self.release(handle)
            self.abandon(handle, "cancelled")
        with self.lock:
            waiting = [h for q in self.waiting.values() for h in q]
            for q in self.waiting.values():
                q.clear()
        for handle in waiting:
            self.abandon(handle, "cancelled")

    # ---- reloads (engine thread, lock held) ----

    def retire(self, language: str, key: str, removed: bool) -> bool:
        """Move `language`'s running and prefilling work (and, if it is `removed`, its waiting
        requests) to mask key `key`; False if there was none."""
        running = [s for s in self.running if s.language == language]
        prefilling = self.to_prefill(language)
        waiting = self.waiting.pop(language) if removed else deque()
        if not running and not prefilling and not waiting:
            return False
        for seq in running:
            seq.language = seq.handle.key = key
        for handle in [*prefilling, *waiting]:
            handle.key = key
        self.waiting[key] = waiting
        return True

    def serve(self, languages: list[str], removed: set[str]) -> None:
        """Queues for the languages served from now on; the removed ones' queues (emptied by
        `retire`) go."""
        for lang in removed:
            self.waiting.pop(lang, None)
        for lang in languages:
            self.waiting.setdefault(lang, deque())

    def finished_keys(self, keys: set[str]) -> set[str]:
        """Which of these (retired) keys have no work left; their queues are dropped."""
        with self.lock:
            done = {key for key in keys if not self.waiting[key] and not self.to_prefill(key)
                    and not any(s.language == key for s in self.running)}
            for key in done:
                del self.waiting[key]
        return done
