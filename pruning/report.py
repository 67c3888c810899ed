"""Store reports: how sparse each language's mask is and how much the masks overlap."""

from __future__ import annotations

import itertools
from pathlib import Path

import torch

from submodel.pruning import masks as bits
from submodel.pruning.store import layer_type


def sparsity_report(all_masks: dict[str, dict[str, torch.Tensor]],
                    prunable: dict[str, tuple[int, int]]) -> dict:
    """Per language: overall sparsity and per layer type (q_proj, ..., down_proj)."""
    out = {}
    for lang, masks in all_masks.items():
        kept: dict[str, int] = {}
        total: dict[str, int] = {}
        for name, packed in masks.items():
            kind = layer_type(name)
            kept[kind] = kept.get(kind, 0) + bits.count_kept(packed)
            total[kind] = total.get(kind, 0) + prunable[name][0] * prunable[name][1]
        out[lang] = {
            "overall": 1 - sum(kept.values()) / sum(total.values()),
            "by_layer_type": {k: 1 - kept[k] / total[k] for k in sorted(total)},
        }
    return out


def overlap_report(all_masks: dict[str, dict[str, torch.Tensor]]) -> dict:
    """Jaccard distance (1 - |A∩B| / |A∪B|) of the kept sets of every pair of languages,
    overall and per layer type."""
    pairs = []
    for a, b in itertools.combinations(sorted(all_masks), 2):
        inter: dict[str, int] = {}
        union: dict[str, int] = {}
        for name, packed in all_masks[a].items():
            kind = layer_type(name)
            i, u = bits.intersection_union(packed, all_masks[b][name])
            inter[kind] = inter.get(kind, 0) + i
            union[kind] = union.get(kind, 0) + u
        pairs.append({
            "a": a, "b": b,
            "overall": 1 - sum(inter.values()) / sum(union.values()),
            "by_layer_type": {k: 1 - inter[k] / union[k] for k in sorted(union)},
        })
    return {"metric": "jaccard_distance_of_kept_weights", "languages": sorted(all_masks),
            "pairs": pairs}


def distance_matrix(overlap: dict, key: str | None = None) -> list[list[float]]:
    """Square matrix of `overlap` distances (overall, or one layer type)."""
    langs = overlap["languages"]
    index = {lang: i for i, lang in enumerate(langs)}
    matrix = [[0.0] * len(langs) for _ in langs]
    for p in overlap["pairs"]:
        d = p["overall"] if key is None else p["by_layer_type"][key]
        matrix[index[p["a"]]][index[p["b"]]] = matrix[index[p["b"]]][index[p["a"]]] = d
    return matrix


def plot_overlap(overlap: dict, path: Path) -> None:
    """Heatmaps of the Jaccard distance: overall, then one per layer type."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    langs = overlap["languages"]
    kinds = sorted(overlap["pairs"][0]["by_layer_type"]) if overlap["pairs"] else []
    panels = [None, *kinds]
    cols = (len(panels) + 1) // 2
    fig, axes = plt.subplots(2, cols, figsize=(3.2 * cols, 6.4), squeeze=False)
    for ax, key in zip(axes.flat, panels, strict=False):
        m = distance_matrix(overlap, key)
        ax.imshow(m, cmap="viridis", vmin=0, vmax=max(max(r) for r in m) or 1)
        ax.set_title("overall" if key is None else key, fontsize=9)
        ax.set_xticks(range(len(langs)), langs, rotation=45, fontsize=7)
        ax.set_yticks(range(len(langs)), langs, fontsize=7)
        for i, j in itertools.product(range(len(langs)), repeat=2):
            ax.text(j, i, f"{m[i][j]:.3f}", ha="center", va="center", fontsize=6, color="w")
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    fig.suptitle("Jaccard distance between languages' kept weights")
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    tmp.replace(path)
