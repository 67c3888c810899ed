"""The default real model (Qwen2.5-Coder-0.5B), pruned once for two languages with a few short
calibration windows, then loaded, measured and served. The GGUF is dequantized once per module."""

import numpy as np
import pytest
import torch

from submodel.bench import perplexity
from submodel.pruning.prune import PruneConfig, prune
from submodel.pruning.store import open_store
from submodel.server.api import FinishEvent, GenerationRequest, SamplingParams
from submodel.server.engine import INT8_FEATURES, Engine, choose_weights
from submodel.vocabulary import DENSE

pytestmark = pytest.mark.slow

LANGS = ("python", "java")


@pytest.fixture(scope="module")
def store_path(tmp_path_factory):
    out = tmp_path_factory.mktemp("real") / "store"
    cfg = PruneConfig(model="qwen2.5-coder-0.5b", out=out, languages=LANGS, nsamples=2,
                      seqlen=64, dtype="bfloat16", progress=False)
    return prune(cfg).path


def test_store_verifies_with_two_distinct_masks(store_path):
    store = open_store(store_path)  # sha256s, shapes and exactly 50% kept in every row
    assert store.languages == sorted(LANGS) and store.dtype == torch.bfloat16
    assert len(store.prunable) == 24 * 7
    python, java = store.load_mask("python"), store.load_mask("java")
    assert python.keys() == java.keys() == store.prunable.keys()
    assert any(not torch.equal(python[n], java[n]) for n in store.prunable)
    for lang in LANGS:
        assert store.manifest["languages"][lang]["seconds"] > 0
    pairs = store.report("overlap.json")["pairs"]
    assert [(p["a"], p["b"]) for p in pairs] == [("java", "python")]
    assert 0 < pairs[0]["overall"] < 1


def test_masks_raise_heldout_perplexity(store_path, tmp_path):
    result = perplexity.run(store_path, nsamples=2, seqlen=128, out=tmp_path / "ppl.json",
                            batch_size=2, progress=False)
    cells = result["cells"]
    for col in LANGS:
        dense = cells[DENSE][col]["ppl"]
        assert 1 < dense < 20  # measured ~6-7 on 128-token windows; a broken model: 100s+
        assert all(cells[lang][col]["ppl"] > dense for lang in LANGS)


def test_engine_writes_python_under_dense(store_path):
    engine = Engine(open_store(store_path), strategy="fused")
    engine.start()
    try:
        prompt = 'def add(a, b):\n    """Return a + b."""\n'
        handle = engine.submit(GenerationRequest(prompt, DENSE, SamplingParams(max_tokens=16)))
        finish = [e for e in handle if isinstance(e, FinishEvent)][0]
    finally:
        engine.stop()
    assert "return" in finish.text
    assert "a + b" in finish.text or "a+b" in finish.text


def test_gguf_weights_hold_the_files_own_values_and_still_write_python(store_path):
    import gguf
    from gguf import quants

    from submodel.pruning.models import resolve_model
    from submodel.server import kernels

    store = open_store(store_path)
    fast_int8 = INT8_FEATURES <= set(kernels.cpu_features())
    assert choose_weights(store, "fused")[0] == ("gguf" if fast_int8 else "full")
    engine = Engine(store, strategy="fused", weights="gguf")
    tensors = {t.name: t for t in gguf.GGUFReader(str(resolve_model("qwen2.5-coder-0.5b").path))
               .tensors}
    q_proj = engine.strategy.linears["model.layers.0.self_attn.q_proj.weight"]
    assert tensors["blk.0.attn_q.weight"].tensor_type.name == "Q5_0"
    values = (q_proj.codes.float().view(896, -1, 32) * q_proj.scales[..., None]).view(896, 896)
    raw = tensors["blk.0.attn_q.weight"]
    assert np.array_equal(values.numpy(), quants.dequantize(np.asarray(raw.data), raw.tensor_type))
    down = engine.strategy.linears["model.layers.0.mlp.down_proj.weight"]  # Q6_K: our rounding
    dense = open_store(store_path).load_state_dict()["model.layers.0.mlp.down_proj.weight"]
    assert torch.equal(down.codes, kernels.quantize_q8(dense)[0])
    prompt = 'def add(a, b):\n    """Return a + b."""\n'
    ids = engine.tokenizer.encode(prompt)

    def logits(e: Engine) -> torch.Tensor:  # the prompt's next-token logits, python mask
        return e.forward(torch.tensor([ids]), torch.arange(len(ids))[None], torch.tensor([0]),
                         ["python"], prefill=True)[0]

    quantized, full = logits(engine), logits(Engine(open_store(store_path), strategy="fused"))
    assert quantized.argmax() == full.argmax()  # bf16 weights: the GGUF's values, rounded
    assert torch.nn.functional.cosine_similarity(quantized, full, dim=0) > 0.99
    engine.start()
    try:
        handle = engine.submit(GenerationRequest(prompt, DENSE, SamplingParams(max_tokens=16)))
        finish = [e for e in handle if isinstance(e, FinishEvent)][0]
    finally:
        engine.stop()
    assert "a + b" in finish.text or "a+b" in finish.text
