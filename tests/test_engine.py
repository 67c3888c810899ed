import os
import random
import shutil
import threading
import time

import pytest
import torch
from conftest import build_tiny_store
from tiny import save_tiny

from submodel.pruning import masks as bits
from submodel.pruning.edit import remove_language
from submodel.pruning.prune import PruneConfig, prune
from submodel.pruning.store import open_store
from submodel.server import chunking, kernels, model, omp
from submodel.server.api import (
    DoneEvent,
    FinishEvent,
    GenerationRequest,
    InvalidRequestError,
    QueueFullError,
    SamplingParams,
    TokenEvent,
    UnknownLanguageError,
)
from submodel.server.chunking import FIRST_CHUNK, MAX_CHUNK, MIN_CHUNK
from submodel.server.engine import Engine
from submodel.server.model import DECODE_OP_MAX_TOKENS
from submodel.vocabulary import DENSE, PRUNABLE

PROMPT = "def add(a, b):\n    return"
GREEDY = SamplingParams(max_tokens=12)


@pytest.fixture(scope="module")
def store(tiny_store):
    return open_store(tiny_store)


@pytest.fixture(scope="module", params=["swap", "fused"])
def engine(request, store):
    e = Engine(store, strategy=request.param, max_batch=4, max_queue=8, time_slice=0.05)
    e.start()
    yield e
    e.stop()


def run(engine, prompt=PROMPT, language=DENSE, params=GREEDY, **kw):
    """(token ids per sample, FinishEvents, DoneEvent) of one request."""
    handle = engine.submit(GenerationRequest(prompt, language, params, **kw))
    tokens, finishes, done = {}, {}, None
    for event in handle:
        if isinstance(event, TokenEvent) and event.token_id >= 0:
            tokens.setdefault(event.sample, []).append(event.token_id)
        elif isinstance(event, FinishEvent):
            finishes[event.sample] = event
        elif isinstance(event, DoneEvent):
            done = event
    return tokens, finishes, done


def assert_idle_with_every_slot_free(engine) -> None:
    assert engine.drain(5.0)
    assert len(engine.scheduler.free_slots) == engine.cache.k.shape[1]


def reference_tokens(store, language, prompt=PROMPT, max_tokens=12, int8=False):
    """Greedy tokens of transformers' own model with the language's mask multiplied in (and,
    with `int8`, the prunable Linears and the LM head holding the values int8 keeps of them)."""
    model = store.load_hf_model(torch.float32)
    sd = model.state_dict()
    if int8:
        for name in [n for n in sd if n.rsplit(".", 2)[-2] in PRUNABLE]:
            sd[name].copy_(dequantize(sd[name]))
        # a head of its own: the engine's embedding table stays as it was
        model.lm_head.weight = torch.nn.Parameter(dequantize(model.lm_head.weight.detach()))
    if language != DENSE:
        masks = store.load_mask(language)
        for name, packed in masks.items():
            sd[name].mul_(bits.unpack(packed, sd[name].shape[1]).float())
    tok = store.load_tokenizer()
    ids = torch.tensor([tok.encode(prompt)])
    out = model.generate(ids, max_new_tokens=max_tokens, do_sample=False,
                         eos_token_id=[256, 257], pad_token_id=256)
    return out[0, ids.shape[1]:].tolist()


def dequantize(weight: torch.Tensor) -> torch.Tensor:
    codes, scales = kernels.quantize_q8(weight)
    return (codes.float().view(codes.shape[0], -1, 32) * scales[..., None]).view(weight.shape)


@pytest.mark.parametrize("language", [DENSE, "python", "cpp"])
def test_greedy_matches_masked_reference(engine, store, language):
    tokens, finishes, _ = run(engine, language=language)
    assert tokens[0] == reference_tokens(store, language)
    assert finishes[0].finish_reason == "length" and finishes[0].tokens == 12


def test_int8_weights_match_their_dequantized_reference(store):
    engine = Engine(store, strategy="fused", weights="int8", max_batch=4)
    engine.start()
    try:
        for language in (DENSE, "python", "java"):
            tokens, _, _ = run(engine, language=language)
            assert tokens[0] == reference_tokens(store, language, int8=True)
        sizes = engine.strategy.resident_bytes()
        full = sum(m.numel() * 4 for m in engine.strategy.masks["python"].values()) * 8
        assert sizes["dense"] < full / 3  # 1 byte + 1/8 of a scale per weight, not 4
    finally:
        engine.stop()
    with pytest.raises(ValueError, match="needs the fused strategy"):
        Engine(store, strategy="swap", weights="int8")


def test_fused_int8_weights_read_each_layers_siblings_in_one_call(store):
    """With int8 weights q|k|v and gate|up are one Linear each (4 calls a layer): its members
    hold views of its rows and their masks views of its stack (nothing held twice), and each
    row of a mixed-language step gets what the members called alone give it. Full weights stay
    the store's own tensors, one Linear each."""
    full = Engine(store, strategy="fused")
    assert len(full.model.called_linears()) == 7 * full.args.n_layers
    assert full.model.model.layers[0].self_attn.qkv_proj is None
    engine = Engine(store, strategy="fused", weights="int8")
    model, strategy = engine.model, engine.strategy
    assert len(model.called_linears()) == 4 * engine.args.n_layers
    langs = [DENSE, *store.languages]
    strategy.set_rows(langs)
    for block in model.model.layers[:2]:
        groups = ((block.self_attn.qkv_proj, ("q_proj", "k_proj", "v_proj"), block.self_attn),
                  (block.mlp.gate_up_proj, ("gate_proj", "up_proj"), block.mlp))
        for joint, names, parent in groups:
            x = torch.randn(len(langs), 1, joint.codes.shape[1], dtype=engine.dtype)
            want, start = [], 0
            for name in names:
                member = getattr(parent, name)
                assert member.codes.data_ptr() == joint.codes[start].data_ptr()
                weight_name = next(n for n, m in strategy.linears.items() if m is member)
                for k, lang in enumerate(strategy.languages):
                    assert strategy.masks[lang][weight_name].data_ptr() == \
                        joint.stack[k, start].data_ptr()
                want.append(member(x))
                start += member.codes.shape[0]
            assert start == joint.codes.shape[0]
            assert torch.equal(joint(x), torch.cat(want, dim=-1))


def test_languages_give_different_outputs(engine):
    outs = {lang: run(engine, language=lang, params=SamplingParams(max_tokens=24))[0][0]
            for lang in (DENSE, "python", "java", "cpp", "javascript")}
    assert len({tuple(v) for v in outs.values()}) >= 3


def test_logits_match_transformers(store):
    engine = Engine(store, strategy="swap")
    model = store.load_hf_model(torch.float32)
    ids = torch.tensor([engine.tokenizer.encode(PROMPT)])
    with torch.no_grad():
        want = model(ids).logits[0, -1]
    engine.strategy.set_rows([DENSE], prefill=True)
    got = engine.model(ids, torch.arange(ids.shape[1])[None], engine.cache, torch.tensor([0]),
                       prefill=True)[0]
    assert torch.allclose(got, want, atol=1e-4, rtol=1e-4)


def test_two_hundred_switches_leave_dense_weights_bit_identical(store):
    engine = Engine(store, strategy="swap")
    dense = store.load_state_dict()
    masks = {lang: store.load_mask(lang) for lang in store.languages}
    rng = random.Random(0)
    strategy = engine.strategy
    for _ in range(200):
        lang = rng.choice([*store.languages, DENSE])
        strategy.switch(lang)
    assert len(strategy.linears) == len(PRUNABLE) * engine.args.n_layers
    for name, linear in strategy.linears.items():
        want = dense[name]
        if strategy.active != DENSE:
            want = want * bits.unpack(masks[strategy.active][name], want.shape[1])
        assert torch.equal(linear.weight, want), name
    strategy.switch(DENSE)
    for name, linear in strategy.linears.items():
        assert torch.equal(linear.weight, dense[name])


def test_seeded_sampling_is_reproducible_whatever_the_batch(engine):
    params = SamplingParams(max_tokens=10, temperature=0.9, top_p=0.95, top_k=50, seed=7, n=2)
    alone = run(engine, language="java", params=params)[0]
    results = {}

    def other(i):
        results[i] = run(engine, prompt=f"x = {i}", language="java",
                         params=SamplingParams(max_tokens=15, temperature=1.0))

    threads = [threading.Thread(target=other, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    together = run(engine, language="java", params=params)[0]
    for t in threads:
        t.join()
    assert alone == together
    assert alone[0] != alone[1]  # the two samples differ


def test_joining_mid_batch_gives_the_same_tokens(engine):
    alone = run(engine, language="python")[0][0]
    long_running = threading.Thread(target=run, kwargs=dict(
        engine=engine, prompt="import os\n", language="python",
        params=SamplingParams(max_tokens=60)))
    long_running.start()
    time.sleep(0.05)
    joined = run(engine, language="python")[0][0]
    long_running.join()
    assert joined == alone


def test_mixed_language_concurrent_requests(engine, store):
    langs = ["python", "java", "cpp", "javascript", DENSE]
    results = {}

    def go(lang):
        results[lang] = run(engine, language=lang)[0][0]

    threads = [threading.Thread(target=go, args=(lang,)) for lang in langs]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for lang in langs:
        assert results[lang] == reference_tokens(store, lang), lang


def test_stop_string_spanning_tokens(engine):
    _, finishes, _ = run(engine, language="python", params=SamplingParams(max_tokens=20))
    text = finishes[0].text
    stop = text[5:8]
    assert len(stop) == 3
    _, finishes, _ = run(engine, language="python",
                         params=SamplingParams(max_tokens=20, stop=(stop,)))
    assert finishes[0].finish_reason == "stop"
    assert finishes[0].text == text[:text.find(stop)]


def test_fairness_under_a_flood(store):
    """A late language is not starved by a flood of another: with time slices shorter than a
    step, languages take turns step by step, so the 5-token cpp request ends long before any
    40-token python one. Everything is queued before the engine starts, and the finish order
    comes from the engine's own clock (submit + total_seconds), so neither how fast this host
    steps nor when the test's threads wake can change the order."""
    engine = Engine(store, strategy="swap", max_batch=2, max_queue=32, time_slice=1e-9)
    flood = [engine.submit(GenerationRequest(f"# {i}\n", "python", SamplingParams(
        max_tokens=40))) for i in range(12)]
    late = engine.submit(GenerationRequest("int main() {", "cpp", SamplingParams(max_tokens=5)))
    engine.start()
    try:
        finished_at = {}
        for name, handle in [*((f"py{i}", h) for i, h in enumerate(flood)), ("cpp", late)]:
            done = [e for e in handle if isinstance(e, DoneEvent)][0]
            finished_at[name] = handle.submitted + done.total_seconds
    finally:
        engine.stop()
    order = sorted(finished_at, key=finished_at.get)
    assert order[0] == "cpp", order


def test_errors(engine):
    with pytest.raises(UnknownLanguageError):
        engine.submit(GenerationRequest(PROMPT, "cobol"))
    with pytest.raises(InvalidRequestError, match="prompt is empty"):
        engine.submit(GenerationRequest("", DENSE))
    with pytest.raises(InvalidRequestError, match="top_p"):
        engine.submit(GenerationRequest(PROMPT, DENSE, SamplingParams(top_p=0)))
    with pytest.raises(InvalidRequestError, match="context window"):
        engine.submit(GenerationRequest("x" * 5000, DENSE))


def test_queue_full_cancel_and_deadline(store):
    engine = Engine(store, strategy="swap", max_batch=1, max_queue=2)
    long = SamplingParams(max_tokens=400)
    first = engine.submit(GenerationRequest(PROMPT, DENSE, long))
    second = engine.submit(GenerationRequest(PROMPT, DENSE, long))
    with pytest.raises(QueueFullError):
        engine.submit(GenerationRequest(PROMPT, DENSE, long))
    engine.start()
    try:
        expiring = engine.submit(GenerationRequest(PROMPT, DENSE, long,
                                                   deadline=time.monotonic() + 0.2))
        first.cancel()
        events = list(first)
        assert [e.finish_reason for e in events if isinstance(e, FinishEvent)] == ["cancelled"]
        reasons = [e.finish_reason for e in expiring if isinstance(e, FinishEvent)]
        assert reasons == ["deadline"]
        second.cancel()
        list(second)
        assert_idle_with_every_slot_free(engine)
    finally:
        engine.stop()


def test_a_failing_prefill_fails_only_its_request(store, monkeypatch):
    engine = Engine(store, max_batch=2)
    real = engine.model.forward

    def broken_for_java(tokens, *args, prefill, **kwargs):
        if prefill and engine.strategy.rows.languages == ["java"]:
            raise RuntimeError("boom")
        return real(tokens, *args, prefill=prefill, **kwargs)

    monkeypatch.setattr(engine.model, "forward", broken_for_java)
    engine.start()
    try:
        _, finishes, done = run(engine, language="java", params=SamplingParams(n=2))
        assert [f.finish_reason for f in finishes.values()] == ["error", "error"]
        assert done is not None
        tokens, finishes, _ = run(engine, language="python")
        assert finishes[0].finish_reason == "length" and len(tokens[0]) == 12
        assert_idle_with_every_slot_free(engine)
    finally:
        engine.stop()


def test_any_uint64_seed_is_accepted(engine):
    params = SamplingParams(max_tokens=4, temperature=1.0, seed=2**64 - 1)
    assert run(engine, params=params)[0] == run(engine, params=params)[0]


def test_release_team_frees_the_calling_threads_omp_workers():
    if torch.get_num_threads() < 2:
        pytest.skip("one torch thread: no OpenMP workers to release")
    tasks = lambda: set(os.listdir("/proc/self/task"))  # noqa: E731

    def work() -> None:
        torch.ones(1 << 24).sum()  # big enough to open a parallel region
        with_team = tasks()
        assert omp.release_team(), "no OpenMP runtime with omp_pause_resource_all was found"
        gone.extend(with_team - tasks())

    gone: list[str] = []  # threads that ended when the team was released
    worker = threading.Thread(target=work)
    worker.start()
    worker.join()
    assert len(gone) >= torch.get_num_threads() - 1


def test_engine_thread_releases_its_team_when_idle(store, monkeypatch):
    released = []
    monkeypatch.setattr("submodel.server.engine.release_team",
                        lambda: released.append(threading.current_thread().name))
    engine = Engine(store, strategy="fused", max_batch=2)
    engine.start()
    try:
        assert released == [threading.current_thread().name]  # the loading thread's team
        run(engine, params=SamplingParams(max_tokens=3))
        assert engine.wait_parked(timeout=30)
        assert released[1:] == ["submodel-engine"]
    finally:
        engine.stop()


LONG_PROMPT = "def total(values):\n" + "    values = [v + 1 for v in values]\n" * 4


def recording_forward(engine, monkeypatch):
    """Record what each forward of the engine thread runs: ("prefill", prompt tokens),
    ("decode", rows) or ("mixed", prompt tokens riding along a decode step)."""
    calls, real, real_mixed = [], engine.forward, engine.forward_mixed

    def recording(tokens, positions, slots, row_languages, prefill):
        calls.append(("prefill", tokens.shape[1]) if prefill else ("decode", tokens.shape[0]))
        return real(tokens, positions, slots, row_languages, prefill=prefill)

    def recording_mixed(tokens, positions, slots, row_languages, chunk_tokens, *chunk):
        calls.append(("mixed", chunk_tokens.shape[1]))
        return real_mixed(tokens, positions, slots, row_languages, chunk_tokens, *chunk)

    monkeypatch.setattr(engine, "forward", recording)
    monkeypatch.setattr(engine, "forward_mixed", recording_mixed)
    return calls


def pause_after_first_chunk(engine, monkeypatch, language):
    """Hold the engine thread after the step that carried the first chunk of a `language`
    prompt; returns (that chunk is in, let the engine go on)."""
    real, first_chunk, proceed = engine.forward_mixed, threading.Event(), threading.Event()

    def pausing(tokens, positions, slots, row_languages, chunk_tokens, chunk_positions,
                chunk_slot, chunk_language):
        out = real(tokens, positions, slots, row_languages, chunk_tokens, chunk_positions,
                   chunk_slot, chunk_language)
        if chunk_language == language and int(chunk_positions[0, 0]) == 0:
            first_chunk.set()
            proceed.wait(30)
        return out

    monkeypatch.setattr(engine, "forward_mixed", pausing)
    return first_chunk, proceed


def start_decoding(engine, **params):
    """A python request that decodes until cancelled, once it has emitted its first token."""
    handle = engine.submit(GenerationRequest("import os\n", "python",
                                             SamplingParams(max_tokens=400, **params)))
    events = iter(handle)
    assert isinstance(next(events), TokenEvent)
    return handle, events


@pytest.mark.parametrize("strategy", ["swap", "fused"])
def test_a_long_prompt_is_prefilled_in_chunks_inside_decode_steps(store, strategy, monkeypatch):
    engine = Engine(store, strategy=strategy, max_batch=4, prefill_chunk=8)
    calls = recording_forward(engine, monkeypatch)
    engine.start()
    try:
        prompt_tokens = engine.count_tokens(LONG_PROMPT)
        alone = run(engine, prompt=LONG_PROMPT, language="python")[0][0]
        assert calls[0] == ("prefill", prompt_tokens)  # nothing decoding: the prompt whole
        running, events = start_decoding(engine)
        calls.clear()
        joined = run(engine, prompt=LONG_PROMPT, language="python")[0][0]
        running.cancel()
        assert [type(e) for e in events][-1] is DoneEvent
        assert joined == alone
        chunks = [size for kind, size in calls if kind == "mixed"]
        assert sum(chunks) == prompt_tokens and max(chunks) == 8 and len(chunks) > 2
        assert "prefill" not in {kind for kind, _ in calls}  # no forward of its own
    finally:
        engine.stop()


def test_sized_chunks_give_the_same_output(store, monkeypatch):
    """The default sizes chunks from measured step times; whatever sizes it picks, the prompt
    goes in whole and the completion is the one it gets prefilled alone; every PLAIN_EVERY-th
    step of the admission carries no chunk (the running step measured afresh)."""
    monkeypatch.setattr(chunking, "PLAIN_EVERY", 2)
    engine = Engine(store, strategy="fused", max_batch=4)
    calls = recording_forward(engine, monkeypatch)
    engine.start()
    try:
        alone = run(engine, prompt=LONG_PROMPT, language="python")[0][0]
        running, events = start_decoding(engine)
        calls.clear()
        joined = run(engine, prompt=LONG_PROMPT, language="python")[0][0]
        running.cancel()
        list(events)
        assert joined == alone
        chunks = [size for kind, size in calls if kind == "mixed"]
        assert sum(chunks) == engine.count_tokens(LONG_PROMPT) and chunks[0] == FIRST_CHUNK
        assert all(MIN_CHUNK <= c <= MAX_CHUNK for c in chunks[:-1])
        kinds = [kind for kind, _ in calls]
        admission = kinds[kinds.index("mixed"):len(kinds) - kinds[::-1].index("mixed")]
        assert len(chunks) > 2 and "mixed" * 3 not in "".join(admission)
        assert admission.count("decode") == (len(chunks) - 1) // 2
    finally:
        engine.stop()


@pytest.mark.parametrize("broken", ["forward", "bookkeeping"])
def test_a_failing_chunk_fails_only_its_request_and_the_step_goes_on(store, monkeypatch, broken):
    engine = Engine(store, strategy="fused", max_batch=4, prefill_chunk=8)
    failed = []
    if broken == "forward":  # the pass that carries the chunk
        real = engine.model.forward_mixed

        def broken_for_java(*args):
            if engine.strategy.rows.languages[-1] == "java":
                failed.append(True)
                raise RuntimeError("boom")
            return real(*args)

        monkeypatch.setattr(engine.model, "forward_mixed", broken_for_java)
    else:  # what follows it: the chunk counted in, the request started when all in
        real = engine._prefilled

        def broken_for_java(handle, *args):
            if handle.key == "java":
                failed.append(True)
                raise RuntimeError("boom")
            return real(handle, *args)

        monkeypatch.setattr(engine, "_prefilled", broken_for_java)
    engine.start()
    try:
        params = SamplingParams(max_tokens=30)
        alone = run(engine, prompt="import os\n", language="python", params=params)[0][0]
        handle = engine.submit(GenerationRequest("import os\n", "python", params))
        events = iter(handle)
        first = next(events)
        assert isinstance(first, TokenEvent)
        _, finishes, done = run(engine, prompt=LONG_PROMPT, language="java")
        assert [f.finish_reason for f in finishes.values()] == ["error"] and done is not None
        assert failed  # the java chunk rode along a python decode step
        rest = [e.token_id for e in events if isinstance(e, TokenEvent) and e.token_id >= 0]
        assert [first.token_id, *rest] == alone  # the python request lost nothing
        assert_idle_with_every_slot_free(engine)
    finally:
        engine.stop()


def test_a_request_cancelled_mid_prefill_frees_its_slots(store, monkeypatch):
    engine = Engine(store, strategy="fused", max_batch=4, prefill_chunk=8)
    first_chunk, proceed = pause_after_first_chunk(engine, monkeypatch, "python")
    engine.start()
    try:
        running, events = start_decoding(engine)
        handle = engine.submit(GenerationRequest(LONG_PROMPT, "python", GREEDY))
        assert first_chunk.wait(30)
        handle.cancel()
        proceed.set()
        finishes = [e for e in handle if isinstance(e, FinishEvent)]
        assert [(f.finish_reason, f.tokens) for f in finishes] == [("cancelled", 0)]
        running.cancel()
        list(events)
        assert_idle_with_every_slot_free(engine)
    finally:
        engine.stop()


def test_a_request_mid_prefill_when_its_language_is_removed_finishes_on_its_mask(
        tiny_store, tmp_path, monkeypatch):
    path = tmp_path / "store"
    shutil.copytree(tiny_store, path)
    engine = Engine(open_store(path), strategy="fused", max_batch=4, prefill_chunk=8)
    engine.start()
    try:
        reference = run(engine, prompt=LONG_PROMPT, language="java")[0][0]
        first_chunk, proceed = pause_after_first_chunk(engine, monkeypatch, "java")
        running, events = start_decoding(engine)
        handle = engine.submit(GenerationRequest(LONG_PROMPT, "java", GREEDY))
        assert first_chunk.wait(30)
        remove_language(path, "java")
        reloads = []
        reloader = threading.Thread(target=lambda: reloads.append(engine.reload()))
        reloader.start()
        with engine.lock:
            assert engine.lock.wait_for(lambda: engine.pending is not None, 30)
        proceed.set()  # the swap happens between this step and the next chunk
        tokens = [e.token_id for e in handle if isinstance(e, TokenEvent) and e.token_id >= 0]
        reloader.join()
        assert reloads[0].removed == ("java",) and "java" not in engine.languages
        assert tokens == reference
        running.cancel()
        list(events)
        assert engine.drain(5.0) and not engine.scheduler.prefilling
    finally:
        engine.stop()


def test_bf16_decode_steps_match_prefill_logits(store):
    """Two rows of different lengths decode together in bf16 (each row seeing only its own
    keys); each row's logits match a prefill of its whole sequence."""
    engine = Engine(store, strategy="fused", dtype=torch.bfloat16, max_batch=4)
    prompts = [engine.tokenizer.encode(p) for p in (PROMPT, "x = [1, 2, 3]\nprint(len(x))")]
    languages = [DENSE, "python"]
    for slot, (ids, lang) in enumerate(zip(prompts, languages, strict=True)):
        engine.forward(torch.tensor([ids[:-1]]), torch.arange(len(ids) - 1)[None],
                       torch.tensor([slot]), [lang], prefill=True)
    got = engine.forward(torch.tensor([[ids[-1]] for ids in prompts]),
                         torch.tensor([[len(ids) - 1] for ids in prompts]),
                         torch.tensor([0, 1]), languages, prefill=False)
    for row, (ids, lang) in enumerate(zip(prompts, languages, strict=True)):
        want = engine.forward(torch.tensor([ids]), torch.arange(len(ids))[None],
                              torch.tensor([2]), [lang], prefill=True)[0]
        assert torch.allclose(got[row], want, atol=0.1, rtol=0.05), (got[row] - want).abs().max()
        assert got[row].argmax() == want.argmax()


def test_bf16_prefills_attend_through_the_decode_op_where_it_beats_sdpa(tmp_path, monkeypatch):
    """With bf16 caches on AVX512_BF16 (heads of a multiple of 32, at most 8 a KV group) a
    prefill of any length attends through the decode op (a row per token), from the start or
    after a cached prefix, and gives the logits and the keys and values SDPA gives."""
    model_dir = save_tiny(tmp_path / "model", num_attention_heads=4, num_key_value_heads=1,
                          hidden_size=128)  # heads of 32, 4 a group
    store = prune(PruneConfig(model=str(model_dir), out=tmp_path / "store",
                              languages=("python",), nsamples=4, seqlen=32, progress=False))
    engine = Engine(store, strategy="fused", dtype=torch.bfloat16, max_batch=2)
    if kernels.kernel_path() == "avx512bf16":
        assert model.decode_op_max_tokens(torch.bfloat16, engine.args) > 4096
    assert model.decode_op_max_tokens(torch.float32, engine.args) == DECODE_OP_MAX_TOKENS
    ids = engine.tokenizer.encode(LONG_PROMPT)[:40]

    def prefill(slot):  # the first 25 tokens, then the other 15 after them
        first = engine.forward(torch.tensor([ids[:25]]), torch.arange(25)[None],
                               torch.tensor([slot]), ["python"], prefill=True)[0]
        rest = engine.forward(torch.tensor([ids[25:]]), torch.arange(25, 40)[None],
                              torch.tensor([slot]), ["python"], prefill=True)[0]
        return first, rest

    got = prefill(0)
    monkeypatch.setattr(model, "decode_op_max_tokens", lambda dtype, args: DECODE_OP_MAX_TOKENS)
    want = prefill(1)
    for g, w in zip(got, want, strict=True):
        assert torch.allclose(g, w, atol=0.1, rtol=0.05), (g - w).abs().max()
        assert g.argmax() == w.argmax()
    for cache in (engine.cache.k, engine.cache.v):
        assert torch.allclose(cache[:, 0, :, :40].float(), cache[:, 1, :, :40].float(),
                              atol=0.05, rtol=0.02)


@pytest.mark.parametrize("tokens", [1, 3, DECODE_OP_MAX_TOKENS, DECODE_OP_MAX_TOKENS + 1])
def test_a_few_tokens_after_a_prefix_give_the_logits_of_the_whole_prompt(store, tokens):
    """An editor's few new tokens after a cached prefix attend through the decode op (up to
    DECODE_OP_MAX_TOKENS), more through SDPA: both see exactly the keys a whole prefill does."""
    engine = Engine(store, strategy="fused", max_batch=2)
    ids = engine.tokenizer.encode(LONG_PROMPT)[:40]
    start = len(ids) - tokens
    engine.forward(torch.tensor([ids[:start]]), torch.arange(start)[None], torch.tensor([0]),
                   ["python"], prefill=True)
    tail = engine.forward(torch.tensor([ids[start:]]), torch.arange(start, len(ids))[None],
                          torch.tensor([0]), ["python"], prefill=True)[0]
    whole = engine.forward(torch.tensor([ids]), torch.arange(len(ids))[None],
                           torch.tensor([1]), ["python"], prefill=True)[0]
    assert torch.allclose(tail, whole, atol=1e-4, rtol=1e-4), (tail - whole).abs().max()
    for cache in (engine.cache.k, engine.cache.v):  # the same keys and values written
        assert torch.allclose(cache[:, 0, :, :len(ids)], cache[:, 1, :, :len(ids)], atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("chunk_tokens", [3, 12])
def test_a_mixed_step_gives_the_logits_of_its_two_forwards(store, dtype, chunk_tokens):
    """A decode row and a prompt chunk of another language in one pass give the logits the
    decode step and the chunk's own prefill give (a chunk of up to DECODE_OP_MAX_TOKENS
    attends through the decode op, a longer one through SDPA)."""
    engine = Engine(store, strategy="fused", dtype=dtype, max_batch=4)
    decoding = engine.tokenizer.encode(PROMPT)
    prompt = engine.tokenizer.encode(LONG_PROMPT)
    end = 8 + chunk_tokens
    chunk = torch.tensor([prompt[8:end]]), torch.arange(8, end)[None]

    def setup():  # slot 0: PROMPT but its last token; slot 1: the long prompt's first 8
        engine.forward(torch.tensor([decoding[:-1]]), torch.arange(len(decoding) - 1)[None],
                       torch.tensor([0]), ["python"], prefill=True)
        engine.forward(torch.tensor([prompt[:8]]), torch.arange(8)[None], torch.tensor([1]),
                       ["java"], prefill=True)

    step = torch.tensor([[decoding[-1]]]), torch.tensor([[len(decoding) - 1]])
    setup()
    mixed = engine.forward_mixed(*step, torch.tensor([0]), ["python"], *chunk, 1, "java")
    setup()
    decode = engine.forward(*step, torch.tensor([0]), ["python"], prefill=False)[0]
    prefill = engine.forward(*chunk, torch.tensor([1]), ["java"], prefill=True)[0]
    tol = 1e-4 if dtype == torch.float32 else 0.1
    assert mixed.shape[0] == 2
    assert torch.allclose(mixed[0], decode, atol=tol, rtol=tol)
    assert torch.allclose(mixed[1], prefill, atol=tol, rtol=tol)
    assert mixed[0].argmax() == decode.argmax() and mixed[1].argmax() == prefill.argmax()


def test_a_float16_store_computes_in_float32(tmp_path):
    """The CPU kernels take float32 or bfloat16: a float16 store is served in float32 (its
    weights upcast exactly; before, every decode step failed); float16 asked for is a clear
    error."""
    store = open_store(build_tiny_store(tmp_path, languages=("python",), dtype="float16").path)
    engine = Engine(store, max_batch=2)
    assert store.dtype == torch.float16 and engine.dtype == torch.float32
    engine.start()
    try:
        handle = engine.submit(GenerationRequest(PROMPT, "python", SamplingParams(max_tokens=6)))
        events = list(handle)
    finally:
        engine.stop()
    finish = [e for e in events if isinstance(e, FinishEvent)]
    assert [f.finish_reason for f in finish] == ["length"] and finish[0].tokens == 6
    assert isinstance(events[-1], DoneEvent) and events[-1].generated_tokens == 6
    with pytest.raises(ValueError, match="computes in float32 or bfloat16, not float16"):
        Engine(store, dtype=torch.float16)
