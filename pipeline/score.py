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


def reconstruction_errors(
    model: Reconstructor, values: np.ndarray, starts: np.ndarray, window_size: int, batch_size: int, progress: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """Errors of the windows beginning at ``starts``, predicted one batch at a time.

    Args:
        values: scaled sensor values, shape (n_rows, n_sensors).

    Returns:
        ``errors`` of shape (n_windows,) and per-sensor error shares of shape (n_windows, n_sensors).
    """
    errors = np.empty(len(starts), dtype=np.float32)
    shares = np.empty((len(starts), values.shape[1]), dtype=np.float32)
    _predict_into(model, values, starts, window_size, batch_size, progress, errors, shares, by_end_row=False)
    return errors, shares


def _predict_into(
    model: Reconstructor,
    values: np.ndarray,
    starts: np.ndarray,
    window_size: int,
    batch_size: int,
    progress: bool,
    errors: np.ndarray,
    shares: np.ndarray,
    by_end_row: bool,
) -> None:
    """Predict the windows beginning at ``starts`` a batch at a time; window ``i``'s error and
    per-sensor shares go to index ``i`` of ``errors`` and ``shares``, or, with ``by_end_row``,
    to the index of the window's last row.

    Only one batch of windows (batch_size, window_size, n_sensors) is copied out at a time.
    """
    n_sensors = values.shape[1]
    batches = range(0, len(starts), batch_size)
    show_bar = progress and sys.stderr.isatty()
    for number, lo in enumerate(tqdm(batches, desc="scoring", unit="batch", disable=not show_bar)):
        windows = gather_windows(values, starts[lo : lo + batch_size], window_size)
        rebuilt = np.asarray(model.predict_on_batch(windows))
        per_sensor = np.square(windows - rebuilt).sum(axis=1)  # (batch, n_sensors)
        total = per_sensor.sum(axis=1)
        where = starts[lo : lo + len(windows)] + (window_size - 1) if by_end_row else slice(lo, lo + len(windows))
        errors[where] = total / (window_size * n_sensors)
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
    _predict_into(model, values, starts, window_size, batch_size, progress, score, contributions, by_end_row=True)
    return RowScores(score=score, contributions=contributions, segment=segment)


def score_rows(bundle: ModelBundle, table: pd.DataFrame, progress: bool = False) -> RowScores:
    """Score every row of a validated, time-sorted table with a bundle: what ``score`` reports."""
    return score_table(
        bundle.model, bundle.scaler, table, bundle.window_size, bundle.max_gap_seconds, bundle.config.scoring.batch_size, progress=progress
    )


def flag_rows(bundle: ModelBundle, rows: RowScores, sources: np.ndarray) -> np.ndarray:
    """0/1 per row: the row belongs to an event (``report.assign_events`` with the bundle's policy)."""
    from pipeline.report import assign_events  # report imports this module

    source_code = pd.factorize(sources)[0]
    change = np.concatenate([[False], (source_code[1:] != source_code[:-1]) | (np.diff(rows.segment) != 0)])
    event = assign_events(rows.score, bundle.threshold.value, np.cumsum(change), bundle.config.events)
    return (event > 0).astype(np.int8)
