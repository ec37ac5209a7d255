"""The window error: how a window's reconstruction residuals become its score and its sensors' shares.

One definition serves calibration and scoring alike, so the threshold is always calibrated on
scores formed exactly as new data's are:

1. a sensor's *energy* in a window is its squared residual summed over the window plus
   ``offset_weight`` times the window's length times its squared mean residual (a sustained
   offset, as a partly closed valve causes, weighs more than noise of the same energy, which
   averages out);
2. each sensor's energy is divided by its normal error level (``ErrorNormaliser``: its mean
   on held-out normal windows, so one noisy sensor cannot dominate), when the model has one;
3. the window's error is the largest (``combine: max``) or the mean of these over sensors,
   divided by the window's length; a sensor's share is its part of their sum (shares add up
   to 1).

Sensors listed in ``Scaler.centred`` enter every window centred on their own mean.
"""

from __future__ import annotations

import logging
import os
import sys
from collections import deque
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Literal, Protocol

import numpy as np
from threadpoolctl import threadpool_limits
from tqdm import tqdm

from pipeline.config import ScoringConfig
from pipeline.features.windows import gather_windows

log = logging.getLogger(__name__)

Combine = Literal["max", "mean"]


class Reconstructor(Protocol):
    """A Keras autoencoder or its NumPy twin (``pipeline.model.numpy_twin``): windows in, windows out."""

    def predict_on_batch(self, windows: np.ndarray) -> np.ndarray: ...


@dataclass(frozen=True)
class ErrorNormaliser:
    """Per-sensor divisors of the energy: ``scale + allowance * (drift_rate * dt) ** 2``.

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
        """1 / divisor for windows ending at ``times_ns`` (UTC ns): (n, n_sensors), or (n_sensors,) without drift."""
        if times_ns is None or self.allowance == 0 or not np.any(self.drift_rate):
            return (1.0 / self.scale).astype(np.float32)
        dt = np.clip((np.asarray(times_ns, dtype=np.int64) - self.reference_ns) / 1e9, 0, None)[:, None]
        return (1.0 / (self.scale + self.allowance * np.square(self.drift_rate * dt))).astype(np.float32)


@dataclass(frozen=True)
class ErrorRule:
    """How residuals become a window's error (module docstring); built from the scoring settings.

    ``centred``: mask of the sensors whose windows are centred (``Scaler.centred_mask``);
    ``normaliser``: per-sensor divisors, ``None`` for 1.0.
    """

    offset_weight: float
    combine: Combine
    centred: np.ndarray | None = None
    normaliser: ErrorNormaliser | None = None

    @classmethod
    def from_config(
        cls, scoring: ScoringConfig, centred: np.ndarray | None, normaliser: ErrorNormaliser | None = None
    ) -> ErrorRule:
        return cls(scoring.offset_weight, scoring.combine, centred, normaliser)


def residual_energy(windows: np.ndarray, rebuilt: np.ndarray, offset_weight: float) -> np.ndarray:
    """Step 1: per-sensor energy of (batch, window_size, n_sensors) windows -> (batch, n_sensors)."""
    residual = windows - rebuilt
    energy = np.square(residual).sum(axis=1)
    if offset_weight:
        energy += offset_weight * np.square(residual.sum(axis=1)) / windows.shape[1]
    return energy


def window_scores(
    energy: np.ndarray, window_size: int, rule: ErrorRule, times_ns: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Steps 2 and 3: (n, n_sensors) energies of windows ending at ``times_ns`` -> errors (n,) and shares (n, n_sensors)."""
    if rule.normaliser is not None:
        energy = energy * rule.normaliser.weights(times_ns)
    errors = combine_sensors(energy, rule.combine) / window_size
    total = energy.sum(axis=1)
    safe_total = np.where(total > 0, total, 1.0)[:, None]
    shares = np.where(total[:, None] > 0, energy / safe_total, 1.0 / energy.shape[1])
    return errors.astype(np.float32, copy=False), shares.astype(np.float32, copy=False)


def combine_sensors(per_sensor: np.ndarray, how: Combine) -> np.ndarray:
    """A window's error from its per-sensor errors, (n, n_sensors) -> (n,).

    ``"max"``: the worst sensor's error, so a fault that shows in one sensor is not diluted by
    the sensors that stay normal; ``"mean"``: the mean over sensors.
    """
    return per_sensor.max(axis=1) if how == "max" else per_sensor.mean(axis=1)


SCORING_THREADS_ENV = "ANOMALY_PIPELINE_SCORING_THREADS"


def scoring_workers(model: Reconstructor) -> int:
    """Threads to predict with: every core for a model that says it is thread-safe (the NumPy
    twin, whose matrix products release the GIL), else 1 (Keras spreads its own work). A fleet
    engine that runs one process per core sets ``SCORING_THREADS_ENV`` to its share of the cores."""
    cores = int(os.environ.get(SCORING_THREADS_ENV) or os.cpu_count() or 1)
    return max(1, cores) if getattr(model, "thread_safe", False) else 1


def predicted_energy(
    model: Reconstructor,
    values: np.ndarray,
    starts: np.ndarray,
    window_size: int,
    batch_size: int,
    rule: ErrorRule,
    progress: bool = False,
    workers: int | None = None,
) -> Iterator[tuple[int, np.ndarray]]:
    """Energies of the windows beginning at ``starts``, one prediction batch at a time, in order.

    Args:
        values: scaled sensor values, shape (n_rows, n_sensors).
        workers: threads predicting batches side by side (default ``scoring_workers(model)``).
            With more than one, each runs single-threaded BLAS: a BLAS spreading small matrix
            products over busy cores spends most of its time waiting (ten times slower on a
            loaded 2-core machine), one batch per core does not.

    Yields:
        (index in ``starts`` of the batch's first window, energies of shape (batch, n_sensors)).
        At most two batches of windows (batch_size, window_size, n_sensors) per worker exist at a time.
    """
    batches = range(0, len(starts), batch_size)
    show_bar = progress and sys.stderr.isatty()
    workers = scoring_workers(model) if workers is None else max(1, workers)

    def energy_of(lo: int) -> np.ndarray:
        windows = gather_windows(values, starts[lo : lo + batch_size], window_size, rule.centred)
        if hasattr(model, "energy_on_batch"):  # a model that forms its own energy (the VAE's NLL, detector.latent)
            return model.energy_on_batch(windows, rule.offset_weight)
        return residual_energy(windows, np.asarray(model.predict_on_batch(windows)), rule.offset_weight)

    def in_order() -> Iterator[tuple[int, np.ndarray]]:
        if workers == 1:
            yield from ((lo, energy_of(lo)) for lo in batches)
            return
        with threadpool_limits(limits=1, user_api="blas"), ThreadPoolExecutor(workers) as pool:
            pending: deque = deque()
            for lo in batches:
                pending.append((lo, pool.submit(energy_of, lo)))
                if len(pending) >= 2 * workers:
                    first, future = pending.popleft()
                    yield first, future.result()
            while pending:
                first, future = pending.popleft()
                yield first, future.result()

    bar = tqdm(in_order(), total=len(batches), desc="scoring", unit="batch", disable=not show_bar)
    for number, (lo, energy) in enumerate(bar):
        yield lo, energy
        if progress and not show_bar and number % 200 == 199:
            log.info("scored %d of %d windows", lo + len(energy), len(starts))


def window_errors(
    model: Reconstructor,
    values: np.ndarray,
    starts: np.ndarray,
    window_size: int,
    batch_size: int,
    rule: ErrorRule,
    times_ns: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Errors (n_windows,) and shares (n_windows, n_sensors) of the windows beginning at ``starts``.

    ``times_ns`` (UTC ns per row) feed the normaliser's drift allowance.
    """
    errors = np.empty(len(starts), dtype=np.float32)
    shares = np.empty((len(starts), values.shape[1]), dtype=np.float32)
    for lo, energy in predicted_energy(model, values, starts, window_size, batch_size, rule):
        hi = lo + len(energy)
        ends = None if times_ns is None else times_ns[starts[lo:hi] + window_size - 1]
        errors[lo:hi], shares[lo:hi] = window_scores(energy, window_size, rule, ends)
    return errors, shares


def fit_error_scale(per_sensor: np.ndarray) -> list[float]:
    """Each sensor's mean error over (n_windows, n_sensors) held-out normal errors (floored, never zero).

    The floor (1e-3 of the mean over sensors) keeps a sensor the model rebuilds perfectly from
    turning any later wobble into a huge score.
    """
    mean = np.asarray(per_sensor, np.float64).mean(axis=0)
    floor = max(float(mean.mean()) * 1e-3, 1e-12)
    return [float(max(v, floor)) for v in mean]


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
