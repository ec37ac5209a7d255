"""Score: model + scaler + threshold + validated table -> per-row scores and sensor contributions.

A row's score is the reconstruction error of the window ending at that row: causal, one score
per row. Each sensor's error in a window is its mean squared residual (scaled units) plus
``offset_weight`` times its squared mean residual, divided by its ``error_scale`` (its mean
error on held-out normal windows, so one noisy sensor cannot dominate; 1.0 when normalisation
is off); the window's error is the largest of these (``combine: max``) or their mean. Sensors
listed in ``Scaler.centred`` enter every window centred on their own mean (judged by shape).
With ``smoothing_rows`` k > 1 the score is the trailing mean of the last k window errors (a
finite, causal filter): a row's score then depends on ``window_size - 1 + k - 1`` earlier rows.
Rows without that much history in their segment get NaN. A sensor's contribution is its share
of the sum of the (normalised) sensor errors of the row's window, so a row's contributions add
up to 1.
"""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import numpy as np
import pandas as pd
from tqdm import tqdm

from pipeline.features import Scaler, gather_windows, segment_ids, window_starts

if TYPE_CHECKING:
    from pipeline.bundle import ModelBundle

log = logging.getLogger(__name__)


class Reconstructor(Protocol):
    """A Keras autoencoder or its NumPy twin (``pipeline.inference``): windows in, windows out."""

    def predict_on_batch(self, windows: np.ndarray) -> np.ndarray: ...


@dataclass(frozen=True)
class ErrorRule:
    """How a window's residuals become its error and per-sensor shares (module docstring).

    ``centred``: sensors whose windows are centred on their own mean (``Scaler.centred_mask``);
    ``offset_weight``: extra weight of a sensor's squared mean residual; ``combine``: ``"mean"``
    or ``"max"`` over sensors; ``normaliser``: per-sensor divisors, ``None`` for 1.0.
    """

    centred: np.ndarray | None = None
    offset_weight: float = 0.0
    combine: str = "mean"
    normaliser: ErrorNormaliser | None = None


def reconstruction_errors(
    model: Reconstructor,
    values: np.ndarray,
    starts: np.ndarray,
    window_size: int,
    batch_size: int,
    rule: ErrorRule = ErrorRule(),
) -> tuple[np.ndarray, np.ndarray]:
    """Errors of the windows beginning at ``starts``, predicted one batch at a time.

    Args:
        values: scaled sensor values, shape (n_rows, n_sensors).

    Returns:
        ``errors`` of shape (n_windows,) and per-sensor error shares of shape (n_windows, n_sensors).
    """
    errors = np.empty(len(starts), dtype=np.float32)
    shares = np.empty((len(starts), values.shape[1]), dtype=np.float32)
    _predict_into(model, values, starts, window_size, batch_size, rule, errors, shares, by_end_row=False)
    return errors, shares


def sensor_errors(errors: np.ndarray, shares: np.ndarray) -> np.ndarray:
    """Per-sensor mean squared error of each window, (n_windows, n_sensors), from its mean error and shares."""
    return errors[:, None] * shares * shares.shape[1]


def combine_sensors(per_sensor: np.ndarray, how: str) -> np.ndarray:
    """A window's error from its per-sensor errors, (n, n_sensors) -> (n,).

    ``"max"``: the worst sensor's error, so a fault that shows in one sensor is not diluted by
    the sensors that stay normal (with per-sensor normalisation, no sensor dominates by its
    noise alone); ``"mean"``: the mean over sensors.
    """
    return per_sensor.max(axis=1) if how == "max" else per_sensor.mean(axis=1)


def fit_error_scale(errors: np.ndarray, shares: np.ndarray) -> list[float]:
    """Each sensor's mean squared error over held-out normal windows (floored, never zero).

    The floor (1e-3 of the mean over sensors) keeps a sensor the model rebuilds perfectly from
    turning any later wobble into a huge score.
    """
    per_sensor = sensor_errors(np.asarray(errors, np.float64), np.asarray(shares, np.float64)).mean(axis=0)
    floor = max(float(per_sensor.mean()) * 1e-3, 1e-12)
    return [float(max(v, floor)) for v in per_sensor]


@dataclass(frozen=True)
class ErrorNormaliser:
    """Per-sensor divisors of the squared error: ``scale + allowance * (drift_rate * dt) ** 2``.

    ``scale`` is the sensor's mean error on held-out normal windows. A sensor that trended in the
    training rows (``drift_rate``, scaled units per second, from a straight-line fit) is expected
    to keep drifting: ``dt`` seconds after the end of the training rows (``reference_ns``) its
    error may have grown by the square of that drift, and ``allowance`` of it is forgiven. Zero
    drift rates or ``allowance = 0`` leave just the scale. It depends only on the row's own time,
    so a row scores the same however the series is split into batches.
    """

    scale: np.ndarray
    drift_rate: np.ndarray
    allowance: float
    reference_ns: int

    def weights(self, times_ns: np.ndarray | None) -> np.ndarray:
        """1 / divisor for rows at ``times_ns`` (UTC nanoseconds): shape (n, n_sensors), or (n_sensors,) without drift."""
        if times_ns is None or self.allowance == 0 or not np.any(self.drift_rate):
            return (1.0 / self.scale).astype(np.float32)
        dt = np.clip((np.asarray(times_ns, dtype=np.int64) - self.reference_ns) / 1e9, 0, None)[:, None]
        return (1.0 / (self.scale + self.allowance * np.square(self.drift_rate * dt))).astype(np.float32)


def rule_for(bundle: ModelBundle) -> ErrorRule:
    """How the bundle turns residuals into errors: its centred sensors, scoring settings and normaliser."""
    scoring = bundle.config.scoring
    return ErrorRule(bundle.scaler.centred_mask, scoring.offset_weight, scoring.combine, _normaliser(bundle))


def _normaliser(bundle: ModelBundle) -> ErrorNormaliser | None:
    """The bundle's error normaliser, or ``None`` when it has no per-sensor error scale."""
    if bundle.error_scale is None:
        return None
    rate = np.asarray(bundle.drift_rate if bundle.drift_rate is not None else np.zeros(len(bundle.error_scale)), dtype=np.float64)
    reference = pd.Timestamp(bundle.drift_reference).value if bundle.drift_reference else 0
    return ErrorNormaliser(np.asarray(bundle.error_scale, dtype=np.float64), rate, bundle.config.scoring.drift_allowance, reference)


def fit_drift_rate(values: np.ndarray, times_ns: np.ndarray) -> list[float]:
    """Slope of a straight line through each sensor's scaled values over time (per second)."""
    seconds = (np.asarray(times_ns, dtype=np.int64) - int(times_ns[0])) / 1e9
    centred = seconds - seconds.mean()
    spread = float(np.sum(centred**2))
    if values.shape[0] < 2 or spread == 0:
        return [0.0] * values.shape[1]
    slope = centred @ (values - values.mean(axis=0)) / spread
    return [float(v) for v in slope]


def smooth_trailing(score: np.ndarray, rows: int, segment: np.ndarray | None = None) -> np.ndarray:
    """Trailing mean of the last ``rows`` scores within each segment; NaN until ``rows`` finite ones.

    Causal and of finite length: a row's value depends on itself and the ``rows - 1`` rows before
    it, never on later rows. NaN scores (rows without a full window) propagate.
    """
    score = np.asarray(score, dtype=np.float64)
    if rows <= 1 or score.size == 0:
        return score.astype(np.float32)
    segment = np.zeros(score.size, dtype=np.int64) if segment is None else np.asarray(segment)
    out = np.full(score.size, np.nan)
    edges = np.flatnonzero(np.diff(segment)) + 1
    for lo, hi in zip(np.concatenate([[0], edges]), np.concatenate([edges, [score.size]])):
        part = score[lo:hi]
        if part.size < rows:
            continue
        total = np.concatenate([[0.0], np.cumsum(np.nan_to_num(part))])
        bad = np.concatenate([[0], np.cumsum(np.isnan(part))])
        window_sum = total[rows:] - total[:-rows]
        window_bad = bad[rows:] - bad[:-rows]
        out[lo + rows - 1 : hi] = np.where(window_bad == 0, window_sum / rows, np.nan)
    return out.astype(np.float32)


def _predict_into(
    model: Reconstructor,
    values: np.ndarray,
    starts: np.ndarray,
    window_size: int,
    batch_size: int,
    rule: ErrorRule,
    errors: np.ndarray,
    shares: np.ndarray,
    by_end_row: bool,
    times_ns: np.ndarray | None = None,
    progress: bool = False,
) -> None:
    """Predict the windows beginning at ``starts`` a batch at a time; window ``i``'s error and
    per-sensor shares go to index ``i`` of ``errors`` and ``shares``, or, with ``by_end_row``,
    to the index of the window's last row. ``times_ns`` (UTC nanoseconds per row) feed the
    normaliser's drift allowance.

    Only one batch of windows (batch_size, window_size, n_sensors) is copied out at a time.
    """
    n_sensors = values.shape[1]
    batches = range(0, len(starts), batch_size)
    show_bar = progress and sys.stderr.isatty()
    for number, lo in enumerate(tqdm(batches, desc="scoring", unit="batch", disable=not show_bar)):
        windows = gather_windows(values, starts[lo : lo + batch_size], window_size, rule.centred)
        rebuilt = np.asarray(model.predict_on_batch(windows))
        residual = windows - rebuilt
        # (batch, n_sensors): the squared residual summed over the window, plus offset_weight times
        # the window's length times the squared mean residual.
        per_sensor = np.square(residual).sum(axis=1)
        if rule.offset_weight:
            per_sensor += rule.offset_weight * np.square(residual.sum(axis=1)) / window_size
        if rule.normaliser is not None:
            ends = starts[lo : lo + len(windows)] + (window_size - 1)
            per_sensor = per_sensor * rule.normaliser.weights(None if times_ns is None else times_ns[ends])
        total = per_sensor.sum(axis=1)
        where = starts[lo : lo + len(windows)] + (window_size - 1) if by_end_row else slice(lo, lo + len(windows))
        errors[where] = combine_sensors(per_sensor, rule.combine) / window_size
        safe_total = np.where(total > 0, total, 1.0)[:, None]
        shares[where] = np.where(total[:, None] > 0, per_sensor / safe_total, 1.0 / n_sensors)
        if progress and not show_bar and number % 200 == 199:
            log.info("scored %d of %d windows", lo + len(windows), len(starts))


@dataclass
class RowScores:
    """Scores of a validated table's rows, in the table's (time) order.

    ``score`` has shape (n_rows,), NaN where no full window ends; ``contributions`` has shape
    (n_rows, n_sensors); ``segment`` numbers the gap-free stretches.
    """

    score: np.ndarray
    contributions: np.ndarray
    segment: np.ndarray


def score_table(
    model: Reconstructor,
    scaler: Scaler,
    table: pd.DataFrame,
    window_size: int,
    max_gap_seconds: float,
    batch_size: int,
    rule: ErrorRule = ErrorRule(),
    smoothing_rows: int = 1,
    progress: bool = False,
) -> RowScores:
    """Score every row of a validated, time-sorted table with the window ending at it.

    Memory beyond the result: the scaled values (n_rows, n_sensors) float32, the window start
    rows and one batch of windows; errors are written straight into the per-row arrays.
    """
    values = scaler.transform_frame(table)
    segment = segment_ids(table["timestamp"], max_gap_seconds)
    starts = window_starts(segment, window_size, stride=1)
    score = np.full(len(table), np.nan, dtype=np.float32)
    contributions = np.full((len(table), len(scaler.sensors)), np.nan, dtype=np.float32)
    times_ns = utc_ns(table["timestamp"]) if rule.normaliser is not None else None
    _predict_into(model, values, starts, window_size, batch_size, rule, score, contributions, True, times_ns, progress)
    if smoothing_rows > 1:
        score = smooth_trailing(score, smoothing_rows, segment)
    return RowScores(score=score, contributions=contributions, segment=segment)


def score_rows(bundle: ModelBundle, table: pd.DataFrame, progress: bool = False) -> RowScores:
    """Score every row of a validated, time-sorted table with a bundle: what ``score`` reports."""
    return score_table(
        bundle.model,
        bundle.scaler,
        table,
        bundle.window_size,
        bundle.max_gap_seconds,
        bundle.config.scoring.batch_size,
        rule_for(bundle),
        bundle.config.scoring.smoothing_rows,
        progress,
    )


def flag_rows(bundle: ModelBundle, rows: RowScores, sources: np.ndarray) -> np.ndarray:
    """0/1 per row: the row belongs to an event (``report.assign_events`` with the bundle's policy)."""
    from pipeline.report import assign_events  # report imports this module

    source_code = pd.factorize(sources)[0]
    change = np.concatenate([[False], (source_code[1:] != source_code[:-1]) | (np.diff(rows.segment) != 0)])
    event = assign_events(rows.score, bundle.threshold.value, np.cumsum(change), bundle.config.events)
    return (event > 0).astype(np.int8)


def utc_ns(timestamps: pd.Series) -> np.ndarray:
    """UTC nanoseconds since the epoch of a datetime column, as int64."""
    return pd.to_datetime(timestamps, utc=True).dt.tz_convert(None).dt.as_unit("ns").to_numpy().astype(np.int64)
