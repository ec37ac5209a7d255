"""Calibrate: reconstruction errors of held-out normal windows -> alarm threshold.

Rules (``threshold.method``):
- ``quantile``: the ``threshold.quantile`` quantile of the held-out errors, like the
  ``offset_`` of scikit-learn's outlier detectors (a chosen false-alarm share on normal data);
- ``mean_std``: mean + ``threshold.k`` standard deviations of the held-out errors.
Never the maximum training error: the errors come from windows the model was not fitted on.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from pipeline.config import ThresholdConfig
from pipeline.errors import InputError


@dataclass(frozen=True)
class Threshold:
    """A threshold and how it was obtained."""

    value: float
    method: str
    params: dict[str, float]
    n_windows: int  # held-out normal windows it was calibrated on
    error_stats: dict[str, float]  # of those windows' errors

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> Threshold:
        return cls(**data)


def error_stats(errors: np.ndarray) -> dict[str, float]:
    return {
        "mean": float(np.mean(errors)),
        "std": float(np.std(errors)),
        "p50": float(np.quantile(errors, 0.5)),
        "p95": float(np.quantile(errors, 0.95)),
        "p99": float(np.quantile(errors, 0.99)),
        "max": float(np.max(errors)),
    }


def calibrate_threshold(errors: np.ndarray, config: ThresholdConfig) -> Threshold:
    """Threshold from the errors of held-out normal windows, shape (n_windows,).

    Raises:
        InputError: there are no held-out errors to calibrate on.
    """
    errors = np.asarray(errors, dtype=np.float64)
    if errors.size == 0:
        raise InputError("no held-out normal windows to calibrate the threshold on: give more normal rows")
    if config.method == "quantile":
        value = float(np.quantile(errors, config.quantile))
        params = {"quantile": config.quantile}
    else:
        value = float(np.mean(errors) + config.k * np.std(errors))
        params = {"k": config.k}
    return Threshold(value=value, method=config.method, params=params, n_windows=int(errors.size), error_stats=error_stats(errors))
