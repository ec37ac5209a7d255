"""Report: per-row scores -> events -> the ``scores.csv`` and ``anomalies.csv`` tables.

Event policy (``events`` config):
1. a row exceeds when its score is above the threshold;
2. runs of exceeding rows shorter than ``min_event_rows`` are dropped (one-row blips);
3. kept runs at most ``merge_gap_rows`` rows apart are merged into one event (the rows between
   become part of it).
Events never cross a change of source file or a gap in time.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from pipeline.config import EventsConfig
from pipeline.ingest import IngestResult
from pipeline.score import RowScores

EVENT_COLUMNS = [
    "event_id", "source", "start", "end", "n_rows", "peak_score", "mean_score",
    "threshold", "top_sensors", "model_version", "run_id",
]  # fmt: skip
TOP_SENSORS = 3


def assign_events(score: np.ndarray, threshold: float, groups: np.ndarray, config: EventsConfig) -> np.ndarray:
    """Event number per row (1, 2, ...; 0 = not flagged).

    Args:
        score: per-row scores in time order, NaN where unscored; shape (n_rows,).
        groups: per-row key; an event never spans two keys (source and segment).
    """
    n = score.size
    exceeds = np.nan_to_num(score, nan=-np.inf) > threshold
    new_group = np.concatenate([[True], groups[1:] != groups[:-1]]) if n else np.zeros(0, bool)
    previous = np.concatenate([[False], exceeds[:-1]])
    following = np.concatenate([exceeds[1:], [False]])
    next_new_group = np.concatenate([new_group[1:], [True]])
    starts = np.flatnonzero(exceeds & (~previous | new_group))
    ends = np.flatnonzero(exceeds & (~following | next_new_group))
    keep = ends - starts + 1 >= config.min_event_rows
    starts, ends = starts[keep], ends[keep]
    event = np.zeros(n, dtype=np.int64)
    number = 0
    last_end = -1
    for start, end in zip(starts, ends):
        mergeable = number and start - last_end - 1 <= config.merge_gap_rows and groups[start] == groups[last_end]
        if not mergeable:
            number += 1
            start_fill = start
        else:
            start_fill = last_end + 1
        event[start_fill : end + 1] = number
        last_end = end
    return event


def top_sensors(shares: np.ndarray, sensors: list[str], k: int = TOP_SENSORS) -> str:
    """'a (41%); b (22%)' for the ``k`` sensors with the largest mean share of the error."""
    order = np.argsort(-shares)[:k]
    return "; ".join(f"{sensors[i]} ({shares[i]:.0%})" for i in order)


def summarise_events(
    table: pd.DataFrame,
    rows: RowScores,
    event: np.ndarray,
    threshold: float,
    sensors: list[str],
    model_version: str,
    run_id: str,
) -> pd.DataFrame:
    """One row per event, columns ``EVENT_COLUMNS``; times are UTC."""
    flagged = np.flatnonzero(event)
    if flagged.size == 0:
        return pd.DataFrame(columns=EVENT_COLUMNS)
    frame = pd.DataFrame(
        {
            "event_id": event[flagged],
            "source": table["source"].to_numpy()[flagged],
            "timestamp": table["timestamp"].to_numpy()[flagged],
            "score": rows.score[flagged],
        }
    )
    grouped = frame.groupby("event_id", sort=True)
    summary = grouped.agg(
        source=("source", "first"),
        start=("timestamp", "min"),
        end=("timestamp", "max"),
        n_rows=("score", "size"),
        peak_score=("score", "max"),
        mean_score=("score", "mean"),
    ).reset_index()
    shares = pd.DataFrame(np.nan_to_num(rows.contributions[flagged]), columns=sensors)
    mean_shares = shares.groupby(frame["event_id"].to_numpy()).mean()
    summary["top_sensors"] = [top_sensors(mean_shares.loc[e].to_numpy(), sensors) for e in summary["event_id"]]
    summary["threshold"] = threshold
    summary["model_version"] = model_version
    summary["run_id"] = run_id
    for column in ("start", "end"):
        summary[column] = pd.to_datetime(summary[column], utc=True).dt.strftime("%Y-%m-%dT%H:%M:%S.%fZ").str.replace(r"\.000000Z$", "Z", regex=True)
    return summary[EVENT_COLUMNS]


def format_utc(timestamps: pd.Series) -> pa.Array:
    """UTC timestamps as ISO 8601 text ('2026-01-31T12:00:00Z'), quickly, for millions of rows."""
    array = pa.array(timestamps)
    whole_seconds = timestamps.dt.as_unit("ns").astype("int64") % 1_000_000_000 == 0
    unit = "s" if bool(whole_seconds.all()) else "ms"
    return pc.strftime(array.cast(pa.timestamp(unit, tz="UTC"), safe=False), format="%Y-%m-%dT%H:%M:%SZ")


def scores_table(
    result: IngestResult,
    rows: RowScores,
    event: np.ndarray,
    threshold: float,
    source_order: list[str],
) -> pa.Table:
    """The ``scores.csv`` table: one row per input row, in input order per source.

    Rows that ingest set aside keep their row with an empty score, ``anomaly`` 0 and the reason
    in ``status``; scored rows have an empty ``status``.
    """
    table, rejected = result.table, result.rejected
    n_clean, n_rejected = len(table), len(rejected)
    rank = {name: i for i, name in enumerate(source_order)}
    source = np.concatenate([table["source"].to_numpy(dtype=object), rejected["source"].to_numpy(dtype=object)])
    row = np.concatenate([table["row"].to_numpy(), rejected["row"].to_numpy()])
    order = np.lexsort((row, pd.Series(source).map(rank).to_numpy()))
    timestamps = pa.concat_arrays([format_utc(table["timestamp"]), pa.array(rejected["timestamp"].astype(str).to_numpy(), pa.string())])
    empty_float = np.full(n_rejected, np.nan, dtype=np.float32)
    score = np.concatenate([rows.score, empty_float])
    flagged = np.concatenate([event > 0, np.zeros(n_rejected, bool)])
    event_id = np.concatenate([event, np.zeros(n_rejected, np.int64)])
    columns = {
        "source": pa.array(source[order], pa.string()),
        "timestamp": timestamps.take(pa.array(order)),
        "score": pa.array(score[order], from_pandas=True),
        "threshold": pa.array(np.full(len(order), threshold)),
        "anomaly": pa.array(flagged[order].astype(np.int8)),
        "event_id": pa.array(event_id[order], mask=~flagged[order]),
    }
    for i, sensor in enumerate(result.sensors):
        contrib = np.concatenate([rows.contributions[:, i], empty_float])
        columns[f"contrib_{sensor}"] = pa.array(contrib[order], from_pandas=True)
    status = np.concatenate([np.full(n_clean, None, dtype=object), rejected["status"].to_numpy(dtype=object)])
    columns["status"] = pa.array(status[order], pa.string())
    return pa.table(columns)
