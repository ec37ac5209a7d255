"""Score: model + scaler + threshold + validated table -> per-row scores and sensor contributions.

A row's score is the error (``pipeline.detector.window_error``) of the window ending at that
row: causal, one score per row. With ``smoothing_rows`` k > 1 the score is the trailing mean of
the last k window errors (a finite, causal filter): a row's score then depends on
``window_size - 1 + k - 1`` earlier rows. Rows without that much history in their segment get
NaN. A sensor's contribution is its share of the window's error, so a row's contributions add
up to 1.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from pipeline.config import EventsConfig
from pipeline.detector.events import assign_events
from pipeline.detector.window_error import (
    ErrorNormaliser,
    ErrorRule,
    Reconstructor,
    predicted_energy,
    smooth_trailing,
    window_scores,
)
from pipeline.features.scaler import Scaler
from pipeline.features.windows import segment_ids, window_starts
from pipeline.utc import utc_ns

if TYPE_CHECKING:
    from pipeline.detector.bundle import ModelBundle


def rule_for(bundle: ModelBundle) -> ErrorRule:
    """How the bundle turns residuals into errors: its centred sensors, scoring settings and normaliser."""
    return ErrorRule.from_config(bundle.config.scoring, bundle.scaler.centred_mask, normaliser_for(bundle))


def normaliser_for(bundle: ModelBundle) -> ErrorNormaliser | None:
    """The bundle's error normaliser, or ``None`` when it has no per-sensor error scale."""
    if bundle.error_scale is None:
        return None
    rate = np.asarray(bundle.drift_rate if bundle.drift_rate is not None else np.zeros(len(bundle.error_scale)), dtype=np.float64)
    reference = pd.Timestamp(bundle.drift_reference).value if bundle.drift_reference else 0
    return ErrorNormaliser(
        np.asarray(bundle.error_scale, dtype=np.float64), rate, bundle.config.scoring.drift_allowance, reference
    )


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
    rule: ErrorRule,
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
    for lo, energy in predicted_energy(model, values, starts, window_size, batch_size, rule, progress):
        ends = starts[lo : lo + len(energy)] + (window_size - 1)
        score[ends], contributions[ends] = window_scores(energy, window_size, rule, None if times_ns is None else times_ns[ends])
    if smoothing_rows > 1:
        score = smooth_trailing(score, smoothing_rows, segment)
    return RowScores(score=score, contributions=contributions, segment=segment)


def score_rows(bundle: ModelBundle, table: pd.DataFrame, batch_size: int | None = None, progress: bool = False) -> RowScores:
    """Score every row of a validated, time-sorted table with a bundle: what ``score`` reports.

    Everything but ``batch_size`` (windows per prediction, default the bundle's) is the bundle's:
    its threshold was calibrated on scores formed that way.
    """
    return score_table(
        bundle.model,
        bundle.scaler,
        table,
        bundle.window_size,
        bundle.max_gap_seconds,
        batch_size or bundle.config.scoring.batch_size,
        rule_for(bundle),
        bundle.config.scoring.smoothing_rows,
        progress,
    )


def flag_events(bundle: ModelBundle, rows: RowScores, events: EventsConfig | None = None) -> np.ndarray:
    """Event number per row (0 = not flagged) under the bundle's threshold and event policy.

    The rows are one stream (the files of one call are consecutive pieces of it): an event may
    run on from one file into the next, never across a gap in time. ``events`` overrides the
    bundle's policy (the scheduled run may change it between batches).
    """
    return assign_events(rows.score, bundle.threshold.value, rows.segment, events or bundle.config.events)
