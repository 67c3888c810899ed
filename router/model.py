"""The content detector: a log-linear (softmax) model over `features`, shipped as model.json.

`python -m submodel.router.train` writes the file; this module only reads and applies it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from submodel.router.features import count, tf

MODEL_PATH = Path(__file__).with_name("model.json")
FORMAT = 1


@dataclass
class ContentModel:
    classes: tuple[str, ...]  # our languages and groups of "other" ("other:c", "other:go"...)
    keep: frozenset[str]  # words that stay themselves in n-grams
    index: dict[str, int]  # feature -> row of weights
    weights: np.ndarray  # [features, classes]
    bias: np.ndarray  # [classes]
    kind: str = "logreg"  # how the weights were fitted: logreg, nb or ensemble (train.py)

    @classmethod
    def from_dict(cls, data: dict) -> ContentModel:
        if data.get("format") != FORMAT:
            raise ValueError(f"router model format {data.get('format')!r}, expected {FORMAT}")
        scale = float(data["scale"])
        names = list(data["features"])
        weights = np.array([data["features"][n] for n in names], dtype=np.float64) / scale
        return cls(
            classes=tuple(data["classes"]),
            keep=frozenset(data["keep"]),
            index={n: i for i, n in enumerate(names)},
            weights=weights.reshape(len(names), len(data["classes"])),
            bias=np.array(data["bias"], dtype=np.float64) / scale,
            kind=data.get("kind", "logreg"),
        )

    @classmethod
    def load(cls, path: Path = MODEL_PATH) -> ContentModel:
        with open(path, encoding="utf-8") as f:
            return cls.from_dict(json.load(f))

    def __post_init__(self) -> None:
        self._cache: dict[str, str] = {}
        # what each class routes as: its language, or "other" for a group of it
        self.labels = tuple(c.split(":")[0] for c in self.classes)

    def probabilities(self, text: str) -> np.ndarray:
        """P(class | text) for each of `classes` (the priors' softmax for featureless text)."""
        rows, counts = [], []
        index = self.index
        for feature, n in count(text, self.keep, self._cache).items():
            i = index.get(feature)
            if i is not None:
                rows.append(i)
                counts.append(n)
        logits = self.bias.copy()
        if rows:
            logits += tf(np.array(counts, dtype=np.float64)) @ self.weights[rows]
        logits -= logits.max()
        p = np.exp(logits)
        return p / p.sum()
