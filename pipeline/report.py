"""Report: per-row scores -> events -> the ``scores.csv`` and ``anomalies.csv`` tables.

Event policy (``events`` config):
1. a row exceeds when its score is above the threshold;
2. runs of exceeding rows shorter than ``min_event_rows`` are dropped (one-row blips);
3. kept runs at most ``merge_gap_rows`` rows apart are merged into one event (the rows between
   become part of it).
Events never cross a gap in time (the ``groups`` passed in); the runner treats the files of one
call as consecutive pieces of one stream, so an event may run on from one file into the next.
"""

from __future__ import annotations

from collections.abc import Iterator

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
            # Take the flagged rows before converting: the whole column as Python objects is
            # hundreds of MB at millions of rows.
            "source": table["source"].iloc[flagged].to_numpy(),
            "timestamp": table["timestamp"].iloc[flagged].to_numpy(),
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


SCORES_BATCH_ROWS = 500_000  # rows per record batch of scores.csv (bounds the text held at once)


def format_utc(timestamps: pd.Series) -> pa.Array:
    """UTC timestamps as ISO 8601 text ('2026-01-31T12:00:00Z'), quickly, for millions of rows."""
    nanoseconds = _utc_nanoseconds(timestamps)
    return _format_nanoseconds(nanoseconds, _text_unit(nanoseconds))


def _utc_nanoseconds(timestamps: pd.Series) -> np.ndarray:
    """Nanoseconds since the epoch (UTC) of a tz-aware or naive-UTC series, a view where possible."""
    return timestamps.dt.as_unit("ns").array.asi8


def _text_unit(nanoseconds: np.ndarray) -> str:
    """The coarsest of 's', 'ms', 'us' that shows every timestamp exactly (once for a whole table)."""
    for unit, step in (("s", 1_000_000_000), ("ms", 1_000_000)):
        if not np.any(nanoseconds % step):
            return unit
    return "us"


def _format_nanoseconds(nanoseconds: np.ndarray, unit: str) -> pa.Array:
    array = pa.array(nanoseconds, pa.int64()).cast(pa.timestamp("ns", tz="UTC"))
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
    in ``status``; scored rows have an empty ``status``. ``scores_batches`` yields the same
    rows a batch at a time, for writing long tables without holding all their text.
    """
    batches = list(scores_batches(result, rows, event, threshold, source_order))
    return pa.Table.from_batches(batches, schema=scores_schema(result.sensors))


def scores_schema(sensors: list[str]) -> pa.Schema:
    """Column names and types of the ``scores.csv`` table."""
    fields = [
        ("source", pa.string()), ("timestamp", pa.string()), ("score", pa.float32()), ("threshold", pa.float64()),
        ("anomaly", pa.int8()), ("event_id", pa.int64()),
    ]  # fmt: skip
    fields += [(f"contrib_{sensor}", pa.float32()) for sensor in sensors]
    return pa.schema(fields + [("status", pa.string())])


def scores_batches(
    result: IngestResult,
    rows: RowScores,
    event: np.ndarray,
    threshold: float,
    source_order: list[str],
    batch_rows: int = SCORES_BATCH_ROWS,
) -> Iterator[pa.RecordBatch]:
    """The rows of ``scores_table`` as record batches of at most ``batch_rows`` rows, in order.

    Only the output order (one int64 per row) and one batch of text are built at a time.
    """
    table, rejected = result.table, result.rejected
    n_clean, n_rejected = len(table), len(rejected)
    schema = scores_schema(result.sensors)
    # Sources as codes into one list of names, ranked by the order the sources were given.
    clean_codes, clean_names = pd.factorize(table["source"])
    rejected_codes, rejected_names = pd.factorize(rejected["source"])
    names = list(dict.fromkeys([*map(str, clean_names), *map(str, rejected_names)]))
    index = {name: i for i, name in enumerate(names)}
    source_code = np.concatenate(
        [
            np.asarray([index[str(n)] for n in clean_names], dtype=np.int64)[clean_codes] if n_clean else np.zeros(0, np.int64),
            np.asarray([index[str(n)] for n in rejected_names], dtype=np.int64)[rejected_codes] if n_rejected else np.zeros(0, np.int64),
        ]
    )
    given = {name: i for i, name in enumerate(source_order)}
    rank = np.asarray([given.get(name, len(source_order)) for name in names], dtype=np.int64)
    row = np.concatenate([table["row"].to_numpy(dtype=np.int64), rejected["row"].to_numpy(dtype=np.int64)])
    key = rank[source_code] * (int(row.max(initial=0)) + 1) + row  # (source rank, row) as one sortable number
    order = np.argsort(key, kind="stable")
    del key, row
    names_array = pa.array(names, pa.string())

    nanoseconds = _utc_nanoseconds(table["timestamp"])
    unit = _text_unit(nanoseconds)
    rejected_time = pa.array(rejected["timestamp"].astype(str).to_numpy(), pa.string())
    rejected_status = pa.array(rejected["status"].to_numpy(dtype=object), pa.string())
    n_sensors = len(result.sensors)

    for lo in range(0, n_clean + n_rejected, batch_rows):
        pick = order[lo : lo + batch_rows]
        m = len(pick)
        clean = pick < n_clean
        n_set_aside = m - int(clean.sum())
        score = np.full(m, np.nan, dtype=np.float32)
        contributions = np.full((m, n_sensors), np.nan, dtype=np.float32, order="F")  # columns contiguous
        event_id = np.zeros(m, dtype=np.int64)
        if n_set_aside == 0:  # the usual case: no set-aside row in this batch
            at = pick
            score[:] = rows.score[at]
            contributions[:] = rows.contributions[at]
            event_id[:] = event[at]
            timestamps = _format_nanoseconds(nanoseconds[at], unit)
            status = pa.nulls(m, pa.string())
        else:
            at = pick[clean]
            aside = pick[~clean] - n_clean
            score[clean] = rows.score[at]
            contributions[clean] = rows.contributions[at]
            event_id[clean] = event[at]
            # Text columns: clean rows first, then set-aside ones, put back in output order.
            position = np.empty(m, dtype=np.int64)
            position[clean] = np.arange(m - n_set_aside)
            position[~clean] = np.arange(m - n_set_aside, m)
            position = pa.array(position)
            timestamps = pa.concat_arrays([_format_nanoseconds(nanoseconds[at], unit), rejected_time.take(pa.array(aside))]).take(position)
            status = pa.concat_arrays([pa.nulls(m - n_set_aside, pa.string()), rejected_status.take(pa.array(aside))]).take(position)
        flagged = event_id > 0
        columns = [
            names_array.take(pa.array(source_code[pick])),
            timestamps,
            pa.array(score, from_pandas=True),
            pa.array(np.full(m, threshold, dtype=np.float64)),
            pa.array(flagged.astype(np.int8)),
            pa.array(event_id, mask=~flagged),
        ]
        columns += [pa.array(contributions[:, i], from_pandas=True) for i in range(n_sensors)]
        yield pa.RecordBatch.from_arrays(columns + [status], schema=schema)
