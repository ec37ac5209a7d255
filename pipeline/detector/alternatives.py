"""Score and threshold rules measured against the defaults and not adopted (README "How the
defaults were chosen"): kept as pure functions so the measurement can be repeated and the rules
tried on other data. Neither is wired into a config option: both lost on every fold on SKAB.

- **Mahalanobis residual score**: a window's residuals judged with the precision matrix
  (inverse covariance, Ledoit-Wolf shrinkage) of per-row residuals on calibration windows, so
  that sensors that move together are not counted twice and a residual against the usual
  co-movement weighs more.
- **Dynamic threshold** (telemanom, Hundman et al. 2018): an EWMA of the errors and a threshold
  mean + z * std of the errors of a window, with z chosen per window by the telemanom
  criterion, and pruning of flagged sequences whose peaks are close to the largest unflagged error.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from sklearn.covariance import LedoitWolf


def fit_residual_precision(residuals: np.ndarray) -> np.ndarray:
    """Ledoit-Wolf precision (n_sensors, n_sensors) of per-row residuals (n_rows, n_sensors), taken as centred at 0."""
    return LedoitWolf(assume_centered=True).fit(np.asarray(residuals, dtype=np.float64)).precision_


def mahalanobis_error(residual: np.ndarray, precision: np.ndarray, offset_weight: float) -> np.ndarray:
    """Window errors (batch,) of residuals (batch, window_size, n_sensors) under a precision matrix.

    The multivariate form of the window energy: the mean over the window's rows of r^T P r, plus
    ``offset_weight`` times m^T P m for the window's mean residual m. With a diagonal P of
    1 / variance it is the per-sensor energies divided by the variances, summed over sensors.
    """
    residual = np.asarray(residual, dtype=np.float64)
    per_row = np.einsum("bts,sk,btk->b", residual, precision, residual) / residual.shape[1]
    mean = residual.mean(axis=1)
    return per_row + offset_weight * np.einsum("bs,sk,bk->b", mean, precision, mean)


def ewma(errors: np.ndarray, span: int) -> np.ndarray:
    """Exponentially weighted moving average of errors in time order (pandas ``ewm(span).mean()``)."""
    return pd.Series(np.asarray(errors, dtype=np.float64)).ewm(span=span).mean().to_numpy()


def _runs(flags: np.ndarray) -> list[tuple[int, int]]:
    edges = np.diff(np.concatenate([[0], flags.astype(np.int8), [0]]))
    return list(zip(np.flatnonzero(edges == 1), np.flatnonzero(edges == -1) - 1))


def dynamic_threshold(smoothed: np.ndarray, z_values: np.ndarray | None = None) -> float:
    """Telemanom's threshold for one window of smoothed errors (n,): mean + z * std with the z that maximises
    (delta_mean / mean + delta_std / std) / (n_above + n_sequences ** 2), where delta_* is how much the
    mean and std drop when the errors above are removed. Ties go to the smallest z; with no z
    flagging anything, the largest candidate.
    """
    e = np.asarray(smoothed, dtype=np.float64)
    z_values = np.arange(2.5, 12.5, 0.5) if z_values is None else np.asarray(z_values, dtype=np.float64)
    mean, std = float(e.mean()), float(e.std())
    best, best_value = -np.inf, mean + z_values[-1] * std
    if std == 0:
        return best_value
    for z in z_values:
        epsilon = mean + z * std
        above = e > epsilon
        if not above.any() or above.all():
            continue
        below = e[~above]
        gain = (mean - below.mean()) / mean + (std - below.std()) / std if mean else (std - below.std()) / std
        value = gain / (above.sum() + len(_runs(above)) ** 2)
        if value > best:
            best, best_value = value, epsilon
    return float(best_value)


def prune(smoothed: np.ndarray, flags: np.ndarray, p: float = 0.13) -> np.ndarray:
    """Telemanom's pruning: sort the flagged sequences' peaks (and the largest unflagged error) in
    descending order; from the smallest up, drop sequences until a peak exceeds the next smaller one
    by more than ``p`` (relative); the flags of the kept sequences are returned."""
    e = np.asarray(smoothed, dtype=np.float64)
    flags = np.asarray(flags, dtype=bool)
    sequences = _runs(flags)
    if not sequences:
        return flags.copy()
    peaks = np.array([e[a : b + 1].max() for a, b in sequences])
    rest = e[~flags]
    order = np.argsort(-peaks)
    ladder = np.concatenate([peaks[order], [rest.max() if rest.size else 0.0]])
    keep_upto = -1  # sequences order[0..keep_upto] are kept
    for i in range(len(peaks)):
        if ladder[i] > 0 and (ladder[i] - ladder[i + 1]) / ladder[i] > p:
            keep_upto = i
    out = np.zeros_like(flags)
    for i in order[: keep_upto + 1]:
        a, b = sequences[i]
        out[a : b + 1] = True
    return out
