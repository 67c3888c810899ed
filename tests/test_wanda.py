import pytest
import torch
from tiny import tiny_model

from submodel.pruning import masks as bits
from submodel.pruning.wanda import (
    decoder_layers,
    keep_mask,
    magnitude_masks,
    prunable_linears,
    wanda_masks,
    wanda_score,
)


def brute_force_keep(weight, x, sparsity):
    """Per row: drop the int(in*sparsity) smallest |W_ij| * ||X_j||, lower index first on ties."""
    norm = x.pow(2).sum(0).div(x.shape[0]).sqrt()
    keep = torch.ones_like(weight, dtype=torch.bool)
    k = int(weight.shape[1] * sparsity)
    for r in range(weight.shape[0]):
        scores = [(float(weight[r, j].abs() * norm[j]), j) for j in range(weight.shape[1])]
        for _, j in sorted(scores)[:k]:
            keep[r, j] = False
    return keep


def test_wanda_mask_on_one_linear_matches_brute_force():
    torch.manual_seed(0)
    weight = torch.randn(6, 20)
    x = torch.randn(50, 20) * torch.linspace(0.1, 3, 20)
    score = wanda_score(weight, x.double().pow(2).sum(0), x.shape[0])
    got = keep_mask(score, 0.5, None)
    assert torch.equal(got, brute_force_keep(weight, x, 0.5))
    assert (got.sum(1) == 10).all()


def test_ties_go_to_the_lower_index():
    keep = keep_mask(torch.ones(2, 8), 0.5, None)
    assert keep[:, :4].logical_not().all() and keep[:, 4:].all()


@pytest.mark.parametrize("n,m", [(2, 4), (1, 4), (4, 8)])
def test_n_m_pattern_exact_in_every_group(n, m):
    keep = keep_mask(torch.rand(16, 64), 0.5, (n, m))
    groups = keep.reshape(16, -1, m)
    assert (groups.sum(-1) == m - n).all()


def test_magnitude_and_wanda_differ_when_activations_are_not_uniform():
    model = tiny_model()
    ids = torch.randint(0, 256, (4, 32))
    wanda = wanda_masks(model, ids, 0.5, None)
    magnitude = magnitude_masks(model, 0.5, None)
    assert wanda.keys() == magnitude.keys()
    assert any(not torch.equal(wanda[k], magnitude[k]) for k in wanda)


def test_exactly_half_per_row_and_weights_unchanged():
    model = tiny_model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    result = wanda_masks(model, torch.randint(0, 256, (4, 32)), 0.5, None)
    for name, lin in prunable_linears(model).items():
        assert (bits.kept_per_row(result[name]) == lin.in_features // 2).all()
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), f"{k} changed"


def _layer_stats_after(model, ids, layer_index, prune_before: dict[str, torch.Tensor] | None):
    """Reference: input sum of squares of block `layer_index`'s Linears when the earlier blocks
    carry the given masks (or none)."""
    linears = prunable_linears(model)
    saved = {}
    if prune_before:
        for name, packed in prune_before.items():
            lin = linears[name]
            saved[name] = lin.weight.detach().clone()
            lin.weight.data.mul_(bits.unpack(packed, lin.in_features).float())
    sums = {}
    hooks = []
    for name, lin in linears.items():
        if f".layers.{layer_index}." in name:
            def hook(_m, args, name=name):
                x = args[0].reshape(-1, args[0].shape[-1]).double()
                sums[name] = sums.get(name, 0) + x.pow(2).sum(0)
            hooks.append(lin.register_forward_pre_hook(hook))
    with torch.no_grad():
        model(input_ids=ids, use_cache=False)
    for h in hooks:
        h.remove()
    for name, w in saved.items():
        linears[name].weight.data.copy_(w)
    return sums


def test_block_two_statistics_come_from_block_one_pruned_outputs():
    model = tiny_model()
    ids = torch.randint(0, 256, (4, 32))
    result = wanda_masks(model, ids, 0.5, None, batch_size=4)
    linears = prunable_linears(model)
    block0 = {k: v for k, v in result.items() if ".layers.0." in k}
    n_tokens = ids.numel()

    def masks_from(sums):
        return {name: bits.pack(keep_mask(wanda_score(linears[name].weight, s, n_tokens), 0.5,
                                          None)) for name, s in sums.items()}

    sequential = masks_from(_layer_stats_after(model, ids, 1, block0))
    for name, packed in sequential.items():
        assert torch.equal(packed, result[name]), name
    unpruned = masks_from(_layer_stats_after(model, ids, 1, None))
    assert any(not torch.equal(unpruned[k], result[k]) for k in unpruned)


def test_deterministic_masks():
    ids = torch.randint(0, 256, (4, 32))
    a = wanda_masks(tiny_model(), ids, 0.5, None)
    b = wanda_masks(tiny_model(), ids, 0.5, None)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_llama_architecture_prunes_too():
    model = tiny_model("llama")
    result = wanda_masks(model, torch.randint(0, 256, (2, 16)), 0.5, (2, 4))
    assert len(result) == 7 * len(decoder_layers(model))
