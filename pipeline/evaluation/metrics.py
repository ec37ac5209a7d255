"""Point-wise detection figures: confusion counts, F1, false-alarm rate and missed-alarm rate.

The SKAB outlier-detection protocol sums the counts over all files before computing the
figures (micro-average), so ``Counts`` add up with ``+``:

- F1 = TP / (TP + (FP + FN) / 2)
- FAR = FP / (FP + TN), the share of normal rows flagged
- MAR = FN / (FN + TP), the share of anomalous rows missed

A figure whose denominator is zero is NaN (for example FAR on a file with no normal rows).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np


@dataclass(frozen=True)
class Counts:
    tp: int = 0
    fp: int = 0
    fn: int = 0
    tn: int = 0

    def __add__(self, other: Counts) -> Counts:
        return Counts(self.tp + other.tp, self.fp + other.fp, self.fn + other.fn, self.tn + other.tn)

    @property
    def f1(self) -> float:
        return _ratio(self.tp, self.tp + (self.fp + self.fn) / 2)

    @property
    def far(self) -> float:
        return _ratio(self.fp, self.fp + self.tn)

    @property
    def mar(self) -> float:
        return _ratio(self.fn, self.fn + self.tp)

    def figures(self) -> dict[str, float | int]:
        """Counts and figures, JSON-ready (NaN figures become None)."""
        figures = {"f1": self.f1, "far": self.far, "mar": self.mar}
        return {**asdict(self), **{k: (None if np.isnan(v) else float(v)) for k, v in figures.items()}}


def _ratio(numerator: float, denominator: float) -> float:
    return float(numerator / denominator) if denominator else float("nan")


def paired_flags(flags: np.ndarray, labels: np.ndarray, what: str) -> tuple[np.ndarray, np.ndarray]:
    """Both 0/1 arrays as booleans of the same rows.

    Raises:
        ValueError: the two arrays differ in length.
    """
    flags, labels = np.asarray(flags).astype(bool), np.asarray(labels).astype(bool)
    if flags.shape != labels.shape:
        raise ValueError(f"{flags.size} {what} for {labels.size} labels")
    return flags, labels


def confusion(predicted: np.ndarray, actual: np.ndarray) -> Counts:
    """Point-wise counts of 0/1 predictions against 0/1 labels of the same rows.

    Raises:
        ValueError: the two arrays differ in length.
    """
    predicted, actual = paired_flags(predicted, actual, "predictions")
    return Counts(
        tp=int(np.sum(predicted & actual)),
        fp=int(np.sum(predicted & ~actual)),
        fn=int(np.sum(~predicted & actual)),
        tn=int(np.sum(~predicted & ~actual)),
    )
