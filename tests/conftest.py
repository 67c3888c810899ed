import pytest
from tiny import save_tiny

from submodel.pruning.prune import PruneConfig, prune

LANGS = ("python", "java", "cpp", "javascript")


def build_tiny_store(root, languages=LANGS, arch="qwen2", editor=False, dtype="float32",
                     **overrides):
    """A real store pruned from a tiny random model on real calibration code (seconds);
    `editor`: its tokenizer has FIM tokens and a chat template."""
    model_dir = save_tiny(root / "model", arch=arch, editor=editor)
    cfg = PruneConfig(model=str(model_dir), out=root / "store", languages=tuple(languages),
                      nsamples=8, seqlen=64, progress=False, dtype=dtype, **overrides)
    return prune(cfg)


@pytest.fixture(scope="session")
def tiny_store(tmp_path_factory):
    """Path of a tiny float32 store with python, java, cpp and javascript masks."""
    return build_tiny_store(tmp_path_factory.mktemp("tiny")).path


@pytest.fixture(scope="session")
def editor_store(tmp_path_factory):
    """Like tiny_store, with FIM tokens and a chat template in its tokenizer."""
    return build_tiny_store(tmp_path_factory.mktemp("editor"), editor=True).path
