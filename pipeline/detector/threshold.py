"""Calibrate: reconstruction errors of held-out normal windows -> alarm threshold.

Rules (``threshold.method``):
- ``quantile``: the ``threshold.quantile`` quantile of the held-out errors, like the
  ``offset_`` of scikit-learn's outlier detectors (a chosen false-alarm share on normal data);
- ``mean_std``: mean + ``threshold.k`` standard deviations of the held-out errors;
- ``pot``: peaks over threshold. A generalised Pareto distribution is fitted to the held-out
  errors above their ``threshold.pot_level`` quantile, and the threshold is the error exceeded
  with probability ``threshold.risk`` under that tail (Siffer et al., KDD 2017). It extrapolates
  beyond the largest held-out error, which a quantile of a few hundred errors cannot.
Never the maximum training error: the errors come from windows the model was not fitted on.
"""

from __future__ import annotations

import math
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
    elif config.method == "pot":
        value, params = pot_threshold(errors, config.risk, config.pot_level)
    else:
        value = float(np.mean(errors) + config.k * np.std(errors))
        params = {"k": config.k}
    if config.margin != 1.0:  # a safety factor for normal data drifting beyond the held-out part
        params = {**params, "margin": config.margin, "before_margin": value}
        value *= config.margin
    return Threshold(
        value=value, method=config.method, params=params, n_windows=int(errors.size), error_stats=error_stats(errors)
    )


MIN_EXCESSES = 5  # fewer peaks than this cannot carry a tail fit


def fit_gpd(excesses: np.ndarray) -> tuple[float, float]:
    """(shape gamma, scale sigma) of a generalised Pareto distribution fitted to positive excesses.

    Maximum likelihood (location fixed at 0); the method of moments when the fit fails or
    gives a shape outside [-0.5, 1), where small samples make maximum likelihood unreliable.
    """
    excesses = np.asarray(excesses, dtype=np.float64)
    gamma = sigma = float("nan")
    if np.ptp(excesses) > 0:
        try:
            from scipy import stats  # fit time only: scoring never pays for importing scipy.stats

            gamma, _, sigma = stats.genpareto.fit(excesses, floc=0)
        except (ValueError, RuntimeError, FloatingPointError):
            gamma = float("nan")
    if not (np.isfinite(gamma) and np.isfinite(sigma) and -0.5 <= gamma < 1 and sigma > 0):
        mean, var = float(np.mean(excesses)), float(np.var(excesses))
        if var <= 0:
            return 0.0, max(mean, 1e-12)
        gamma = 0.5 * (1 - mean**2 / var)
        sigma = 0.5 * mean * (mean**2 / var + 1)
    return float(gamma), float(sigma)


def pot_threshold(errors: np.ndarray, risk: float, level: float) -> tuple[float, dict[str, float]]:
    """The error exceeded with probability ``risk``, from a tail fit above the ``level`` quantile.

    With ``n`` errors of which ``n_t`` exceed ``t = quantile(errors, level)``, and a generalised
    Pareto fit (gamma, sigma) of the excesses, the threshold is
    ``t + sigma / gamma * ((risk * n / n_t) ** -gamma - 1)`` (``t - sigma * ln(risk * n / n_t)``
    for gamma = 0). When too few errors exceed ``t`` for a fit, or ``risk`` is no smaller than the
    share above ``t``, it falls back to the ``1 - risk`` quantile.

    Returns:
        The threshold and the parameters that gave it (for the bundle and the tracking run).
    """
    errors = np.asarray(errors, dtype=np.float64)
    start = float(np.quantile(errors, level))
    excesses = errors[errors > start] - start
    ratio = risk * errors.size / max(excesses.size, 1)
    if excesses.size < MIN_EXCESSES or ratio >= 1:
        value = float(np.quantile(errors, 1 - risk))
        return value, {"risk": risk, "pot_level": level, "fallback_quantile": 1 - risk, "n_peaks": float(excesses.size)}
    gamma, sigma = fit_gpd(excesses)
    if abs(gamma) < 1e-9:
        value = start - sigma * math.log(ratio)
    else:
        value = start + sigma / gamma * (ratio**-gamma - 1)
    params = {
        "risk": risk,
        "pot_level": level,
        "initial_threshold": start,
        "gpd_shape": gamma,
        "gpd_scale": sigma,
        "n_peaks": float(excesses.size),
    }
    return float(value), params
