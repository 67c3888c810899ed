import math

import pytest
import torch
from tiny import tiny_model

from submodel.pruning import masks as bits
from submodel.pruning.dsnot import dsnot_refine, ranked_first
from submodel.pruning.owl import allocate, block_outlier_ratios, outlier_ratio, owl_block_sparsity
from submodel.pruning.recipe import MaskRecipe
from submodel.pruning.scores import ria_score
from submodel.pruning.wanda import (
    decoder_layers,
    keep_mask,
    magnitude_masks,
    prunable_linears,
    wanda_masks,
    wanda_score,
)


def brute_force_keep(weight, x, sparsity, power=1.0):
    """Per row: drop the int(in*sparsity) smallest |W_ij| * ||X_j||^power, lower index first on
    ties."""
    norm = x.pow(2).sum(0).div(x.shape[0]).sqrt().pow(power)
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


@pytest.mark.parametrize("power", [0.0, 0.5, 2.0])
def test_activation_power_mask_on_one_linear_matches_brute_force(power):
    torch.manual_seed(1)
    weight = torch.randn(6, 20)
    x = torch.randn(50, 20) * torch.linspace(0.1, 3, 20)
    recipe = MaskRecipe(activation_power=power)
    score = wanda_score(weight, x.double().pow(2).sum(0), x.shape[0], recipe.power)
    got = keep_mask(score, 0.5, None)
    assert torch.equal(got, brute_force_keep(weight, x, 0.5, power))
    if power == 0.0:  # |W| alone: magnitude pruning
        assert torch.equal(got, keep_mask(weight.abs(), 0.5, None))
    assert not torch.equal(got, brute_force_keep(weight, x, 0.5))  # not Wanda's mask


def test_activation_power_is_validated_and_recorded_only_when_not_the_scores_own():
    assert MaskRecipe().power == 1.0 and MaskRecipe(score="ria").power == 0.5
    assert MaskRecipe(activation_power=1.0).manifest() == MaskRecipe().manifest()
    assert MaskRecipe(activation_power=0.5).manifest()["activation_power"] == 0.5
    assert MaskRecipe(score="ria", activation_power=1.0).manifest()["activation_power"] == 1.0
    for bad in (-0.1, 4.5):
        with pytest.raises(ValueError, match="--activation-power must be between 0 and 4"):
            MaskRecipe(activation_power=bad).validate(None)


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


# --- recipes: RIA score, DSnoT refinement, OWL allocation -------------------------------------

def brute_force_ria(weight, x):
    """RI_ij = |W_ij| / sum_k |W_ik| + |W_ij| / sum_k |W_kj|, times ||X_j|| ** 0.5, by loops."""
    out_f, in_f = weight.shape
    norm = [math.sqrt(sum(float(x[t, j]) ** 2 for t in range(x.shape[0])) / x.shape[0])
            for j in range(in_f)]
    a = [[abs(float(weight[r, j])) for j in range(in_f)] for r in range(out_f)]
    score = torch.zeros(out_f, in_f, dtype=torch.float64)
    for r in range(out_f):
        for j in range(in_f):
            row = sum(a[r][k] for k in range(in_f))
            col = sum(a[k][j] for k in range(out_f))
            score[r, j] = (a[r][j] / row + a[r][j] / col) * norm[j] ** 0.5
    return score


def keep_lowest_dropped(score, sparsity):
    """Per row: drop the int(in*sparsity) lowest scores, lower index first on ties."""
    keep = torch.ones_like(score, dtype=torch.bool)
    for r in range(score.shape[0]):
        ranked = sorted((float(score[r, j]), j) for j in range(score.shape[1]))
        for _, j in ranked[:int(score.shape[1] * sparsity)]:
            keep[r, j] = False
    return keep


def test_ria_score_on_one_linear_matches_brute_force():
    torch.manual_seed(1)
    weight = torch.randn(7, 24) * torch.linspace(0.2, 2, 24)  # columns of different scale
    x = torch.randn(40, 24) * torch.linspace(3, 0.1, 24)
    want = brute_force_ria(weight, x)
    got = ria_score(weight, x.double().pow(2).sum(0), x.shape[0])
    assert torch.allclose(got.double(), want, rtol=1e-5)
    keep = keep_mask(got, 0.5, None)
    assert torch.equal(keep, keep_lowest_dropped(want, 0.5))
    wanda = keep_mask(wanda_score(weight, x.double().pow(2).sum(0), x.shape[0]), 0.5, None)
    assert not torch.equal(keep, wanda)


def brute_force_dsnot(weight, keep, importance, mean, var, cycles, threshold):
    """DSnoT by loops, one row at a time, scanning every column for each swap."""
    keep = keep.clone()
    out_f, in_f = weight.shape
    for r in range(out_f):
        c = [float(weight[r, j]) * float(mean[j]) for j in range(in_f)]
        e = sum(c[j] for j in range(in_f) if not keep[r, j])
        s0 = (e > 0) - (e < 0)
        for _ in range(cycles):
            if abs(e) <= threshold or ((e > 0) - (e < 0)) != s0:
                break
            grow, best = None, -math.inf
            for j in range(in_f):
                if not keep[r, j] and s0 * c[j] > 0:
                    value = s0 * c[j] / max(float(var[j]), 1e-12)
                    if value > best:
                        grow, best = j, value
            prune, least = None, math.inf
            for j in range(in_f):
                if keep[r, j] and s0 * c[j] < 0 and float(importance[r, j]) < least:
                    prune, least = j, float(importance[r, j])
            if grow is None or prune is None:
                break
            new_e = e - c[grow] + c[prune]
            if abs(new_e) >= abs(e):
                break
            keep[r, grow], keep[r, prune], e = True, False, new_e
    return keep


def expected_error(weight, keep, mean):
    return (weight.double() * mean.double()[None, :] * (~keep)).sum(1)


@pytest.mark.parametrize("cycles,threshold", [(50, 0.01), (3, 0.01), (50, 0.5)])
def test_dsnot_on_one_linear_matches_brute_force(cycles, threshold):
    torch.manual_seed(2)
    weight = torch.randn(12, 40)
    x = torch.randn(200, 40) * torch.linspace(0.2, 2, 40) + torch.linspace(-1, 1.5, 40)
    mean, var = x.double().mean(0), x.double().var(0, unbiased=False)
    score = wanda_score(weight, x.double().pow(2).sum(0), x.shape[0])
    initial = keep_mask(score, 0.5, None)
    before = weight.clone()
    got = dsnot_refine(weight, initial, score, mean, var, cycles, threshold)
    assert torch.equal(weight, before)
    assert torch.equal(got, brute_force_dsnot(weight, initial, score, mean, var, cycles,
                                              threshold))
    assert (got.sum(1) == 20).all()
    changed = (got != initial).any(1)
    assert changed.any()
    assert ((got != initial).sum(1) <= 2 * cycles).all()
    e0, e1 = expected_error(weight, initial, mean), expected_error(weight, got, mean)
    assert (e1[changed].abs() < e0[changed].abs()).all()
    assert torch.equal(e1[~changed], e0[~changed])


@pytest.mark.parametrize("largest", [True, False])
def test_ranked_first_is_a_stable_sort_prefix_even_with_ties(largest):
    torch.manual_seed(6)
    key = torch.randint(0, 6, (50, 40)).double()  # many ties, also at the k-th value
    key[0] = torch.inf if not largest else -torch.inf
    key[1, ::2] = -torch.inf if largest else torch.inf
    for k in (1, 7, 40):
        want = torch.sort(key, dim=1, descending=largest, stable=True).indices[:, :k]
        got = ranked_first(key, k, largest)
        valid = torch.isfinite(key.gather(1, want))
        assert torch.equal(got[valid], want[valid]), k


def test_dsnot_is_deterministic_and_leaves_the_input_mask():
    torch.manual_seed(3)
    weight = torch.randn(64, 96)
    x = torch.randn(300, 96) + 0.5
    mean, var = x.double().mean(0), x.double().var(0, unbiased=False)
    score = ria_score(weight, x.double().pow(2).sum(0), x.shape[0])
    initial = keep_mask(score, 0.5, None)
    copy = initial.clone()
    a = dsnot_refine(weight, initial, score, mean, var, 50, 0.1)
    b = dsnot_refine(weight, initial, score, mean, var, 50, 0.1)
    assert torch.equal(a, b) and torch.equal(initial, copy)
    assert (a.sum(1) == 48).all() and not torch.equal(a, initial)


def _dense_block_stats(model, ids, layer_index):
    """Reference: (sum of x^2, sum of x, tokens) of each Linear of one block, dense model."""
    stats = {}
    hooks = []
    for name, lin in prunable_linears(model).items():
        if f".layers.{layer_index}." in name:
            def hook(_m, args, name=name):
                x = args[0].reshape(-1, args[0].shape[-1]).double()
                sq, s, n = stats.get(name, (0, 0, 0))
                stats[name] = (sq + x.pow(2).sum(0), s + x.sum(0), n + x.shape[0])
            hooks.append(lin.register_forward_pre_hook(hook))
    with torch.no_grad():
        model(input_ids=ids, use_cache=False)
    for h in hooks:
        h.remove()
    return stats


def test_first_block_ria_dsnot_masks_match_the_references():
    """Block 0 sees the dense inputs, so its masks follow from plain dense statistics."""
    model = tiny_model()
    ids = torch.randint(0, 256, (4, 32))
    recipe = MaskRecipe(score="ria", refine="dsnot", dsnot_threshold=0.001)
    result = wanda_masks(model, ids, 0.5, None, recipe=recipe)
    linears = prunable_linears(model)
    changed = 0
    for name, (sq, s, n) in _dense_block_stats(model, ids, 0).items():
        weight = linears[name].weight.detach()
        score = ria_score(weight, sq, n)
        initial = keep_mask(score, 0.5, None)
        mean = s / n
        want = brute_force_dsnot(weight, initial, score, mean, sq / n - mean.pow(2), 50, 0.001)
        assert torch.equal(bits.unpack(result[name], weight.shape[1]), want), name
        changed += int((want != initial).any())
    assert changed > 0


def test_ria_dsnot_exact_per_row_weights_unchanged_deterministic():
    ids = torch.randint(0, 256, (4, 32))
    recipe = MaskRecipe(score="ria", refine="dsnot")
    model = tiny_model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    a = wanda_masks(model, ids, 0.5, None, recipe=recipe)
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), f"{k} changed"
    b = wanda_masks(tiny_model(), ids, 0.5, None, recipe=recipe)
    for name, lin in prunable_linears(model).items():
        assert (bits.kept_per_row(a[name]) == lin.in_features // 2).all()
        assert torch.equal(a[name], b[name])
    plain = wanda_masks(tiny_model(), ids, 0.5, None)
    assert any(not torch.equal(a[k], plain[k]) for k in a)


def test_outlier_ratio_matches_brute_force():
    torch.manual_seed(4)
    scores = [torch.rand(5, 8).pow(4), torch.rand(3, 6).pow(6)]
    values = [float(v) for s in scores for v in s.flatten()]
    mean = sum(values) / len(values)
    want = sum(1 for v in values if v > 2 * mean) / len(values)
    assert want > 0
    assert outlier_ratio(scores, 2.0) == pytest.approx(want, abs=0)


def test_owl_allocation_by_hand_and_its_bounds():
    got = allocate([0.1, 0.2, 0.6], [10, 10, 10], 0.5, 0.08)
    assert got == pytest.approx([0.5 + 0.08 * 2 / 3, 0.5 + 0.08 / 3, 0.42], abs=1e-12)
    assert allocate([0.3, 0.3], [4, 9], 0.5, 0.08) == [0.5, 0.5]
    torch.manual_seed(5)
    ratios = torch.rand(24).tolist()
    sizes = torch.randint(100, 1000, (24,)).tolist()
    got = allocate(ratios, sizes, 0.45, 0.08)
    assert all(abs(s - 0.45) <= 0.08 + 1e-12 for s in got)
    assert max(abs(s - 0.45) for s in got) == pytest.approx(0.08)
    mean = sum(s * n for s, n in zip(got, sizes, strict=True)) / sum(sizes)
    assert mean == pytest.approx(0.45, abs=1e-12)
    by_ratio = [s for _, s in sorted(zip(ratios, got, strict=True))]
    assert by_ratio == sorted(by_ratio, reverse=True)  # more outliers, pruned less


def test_owl_block_ratios_come_from_dense_statistics():
    model = tiny_model()
    ids = torch.randint(0, 256, (4, 32))
    ratios, sizes = block_outlier_ratios(model, ids, 2.0)
    linears = prunable_linears(model)
    assert len(ratios) == len(decoder_layers(model))
    for index, ratio in enumerate(ratios):
        stats = _dense_block_stats(model, ids, index)
        scores = [wanda_score(linears[name].weight, sq, n) for name, (sq, _, n) in stats.items()]
        values = [float(v) for s in scores for v in s.flatten()]
        mean = sum(values) / len(values)
        assert ratio == sum(1 for v in values if v > 2 * mean) / len(values)
        assert sizes[index] == len(values)
    assert len(set(ratios)) > 1


def test_owl_block_sparsities_are_what_the_masks_keep():
    model = tiny_model()
    ids = torch.randint(0, 256, (4, 32))
    per_block, _ = owl_block_sparsity(model, ids, 0.5, 2.0, 0.08)
    assert all(abs(s - 0.5) <= 0.08 + 1e-12 for s in per_block) and len(set(per_block)) > 1
    result = wanda_masks(model, ids, 0.5, None, block_sparsity=per_block)
    kept = total = 0
    for name, lin in prunable_linears(model).items():
        target = per_block[int(name.split(".layers.")[1].split(".")[0])]
        want = lin.in_features - int(lin.in_features * target)
        assert (bits.kept_per_row(result[name]) == want).all(), name
        kept += int(bits.kept_per_row(result[name]).sum())
        total += lin.weight.numel()
    assert 1 - kept / total == pytest.approx(0.5, abs=0.02)  # whole weights per row
