"""Explain events: what the model expected against what the sensors did, and who drove the error.

Pure functions over a scored table; the plots (``plots.event_detail``) and the run description
use them so a reviewer sees, for the top events, per-sensor shares of the error and the
reconstructed ("expected") signals beside the measured ones.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from threadpoolctl import threadpool_limits

from pipeline.detector.bundle import ModelBundle
from pipeline.detector.scoring import RowScores
from pipeline.features.windows import gather_windows

TOP_EVENTS = 3


@dataclass
class EventDetail:
    """One event with the rows around it (``n`` context rows of its source, ``k`` sensors).

    ``actual`` and ``expected`` have shape (n, k) in sensor units; ``expected`` is the model's
    reconstruction of the last step of the window ending at each row (NaN where no full window
    ends). ``shares`` is the mean share of the error per sensor over the event's rows, shape (k,).
    """

    event_id: int
    source: str
    peak_score: float
    timestamps: pd.Series
    actual: np.ndarray
    expected: np.ndarray
    in_event: np.ndarray
    shares: np.ndarray
    sensors: list[str]


def top_events(events: pd.DataFrame, n: int = TOP_EVENTS) -> pd.DataFrame:
    """The ``n`` events with the highest peak score, highest first."""
    return events.sort_values("peak_score", ascending=False, kind="stable").head(n)


def event_details(
    bundle: ModelBundle, table: pd.DataFrame, rows: RowScores, event: np.ndarray, events: pd.DataFrame, n: int = TOP_EVENTS
) -> list[EventDetail]:
    """Details of the top ``n`` events, with one window of context rows either side."""
    window = bundle.window_size
    mean, scale = np.asarray(bundle.scaler.mean), np.asarray(bundle.scaler.scale)
    source = table["source"].to_numpy()
    details = []
    for event_id in top_events(events, n)["event_id"]:
        members = np.flatnonzero(event == event_id)
        lo, hi = max(int(members[0]) - 2 * window, 0), min(int(members[-1]) + 2 * window, len(table) - 1)
        context = np.arange(lo, hi + 1)
        context = context[source[context] == source[members[0]]]
        # Rows the context's windows reach back to: scale only that slice of the table.
        first = max(int(context[0]) - window + 1, 0)
        part = table.iloc[first : int(context[-1]) + 1]
        values = bundle.scaler.transform_frame(part)
        expected = np.full((len(context), len(bundle.sensors)), np.nan)
        scored = np.isfinite(rows.score[context])
        if scored.any():
            starts = context[scored] - window + 1 - first
            centred = bundle.scaler.centred_mask
            with threadpool_limits(limits=1, user_api="blas"):  # small products: a busy 2-thread BLAS is many times slower
                rebuilt = np.asarray(bundle.model.predict_on_batch(gather_windows(values, starts, window, centred)))[:, -1, :]
            if centred is not None:  # the model rebuilt these sensors' windows about their own mean
                rebuilt[:, centred] += gather_windows(values, starts, window)[:, :, centred].mean(axis=1)
            expected[scored] = rebuilt * scale + mean
        details.append(
            EventDetail(
                event_id=int(event_id),
                source=str(source[members[0]]),
                peak_score=float(np.nanmax(rows.score[members])),
                timestamps=table["timestamp"].iloc[context].reset_index(drop=True),
                actual=table[bundle.sensors].iloc[context].to_numpy(dtype=np.float64),  # the context rows only
                expected=expected,
                in_event=event[context] == event_id,
                shares=np.nanmean(rows.contributions[members], axis=0),
                sensors=list(bundle.sensors),
            )
        )
    return details
