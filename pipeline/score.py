"""Score: model + scaler + threshold + validated table -> per-row scores and sensor contributions.

A row's score is the reconstruction error (mean squared error over the window's time steps and
sensors, in scaled units) of the window ending at that row: causal, one score per row. Rows with
no full window yet in their segment get NaN. A sensor's contribution is its share of that
window's squared error, so a row's contributions add up to 1.
"""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass

import keras
import numpy as np
import pandas as pd
from tqdm import tqdm

from pipeline.features import Scaler, gather_windows, segment_ids, window_starts

log = logging.getLogger(__name__)


def reconstruction_errors(
    model: keras.Model, values: np.ndarray, starts: np.ndarray, window_size: int, batch_size: int, progress: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """Errors of the windows beginning at ``starts``, predicted one batch at a time.

    Args:
        values: scaled sensor values, shape (n_rows, n_sensors).

    Returns:
        ``errors`` of shape (n_windows,) and per-sensor error shares of shape (n_windows, n_sensors).
    """
    n_sensors = values.shape[1]
    errors = np.empty(len(starts), dtype=np.float32)
    shares = np.empty((len(starts), n_sensors), dtype=np.float32)
    batches = range(0, len(starts), batch_size)
    show_bar = progress and sys.stderr.isatty()
    for number, lo in enumerate(tqdm(batches, desc="scoring", unit="batch", disable=not show_bar)):
        windows = gather_windows(values, starts[lo : lo + batch_size], window_size)
        rebuilt = np.asarray(model.predict_on_batch(windows))
        per_sensor = np.square(windows - rebuilt).sum(axis=1)  # (batch, n_sensors)
        total = per_sensor.sum(axis=1)
        errors[lo : lo + len(windows)] = total / (window_size * n_sensors)
        safe_total = np.where(total > 0, total, 1.0)[:, None]
        shares[lo : lo + len(windows)] = np.where(total[:, None] > 0, per_sensor / safe_total, 1.0 / n_sensors)
        if progress and not show_bar and number % 200 == 199:
            log.info("scored %d of %d windows", lo + len(windows), len(starts))
    return errors, shares


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
    model: keras.Model,
    scaler: Scaler,
    table: pd.DataFrame,
    window_size: int,
    max_gap_seconds: float,
    batch_size: int,
    progress: bool = False,
) -> RowScores:
    """Score every row of a validated, time-sorted table with the window ending at it."""
    values = scaler.transform(table[scaler.sensors].to_numpy(dtype=np.float64))
    segment = segment_ids(table["timestamp"], max_gap_seconds)
    starts = window_starts(segment, window_size, stride=1)
    errors, shares = reconstruction_errors(model, values, starts, window_size, batch_size, progress)
    score = np.full(len(table), np.nan, dtype=np.float32)
    contributions = np.full((len(table), len(scaler.sensors)), np.nan, dtype=np.float32)
    ends = starts + window_size - 1
    score[ends] = errors
    contributions[ends] = shares
    return RowScores(score=score, contributions=contributions, segment=segment)
