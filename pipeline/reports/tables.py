"""The report tables: per-row scores and events -> the ``scores.csv`` and ``anomalies.csv`` tables.

Events themselves are decided in ``pipeline.detector.events``; this module only lays them out.
Times are written by the one UTC formatter (``pipeline.utc``).
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pandas as pd
import pyarrow as pa

from pipeline.data.ingest import IngestResult
from pipeline.detector.events import EventStats
from pipeline.detector.scoring import RowScores
from pipeline.utc import format_utc, iso_ns, utc_ns

EVENT_COLUMNS = [
    "event_id",
    "source",
    "start",
    "end",
    "n_rows",
    "peak_score",
    "mean_score",
    "threshold",
    "top_sensors",
    "model_version",
    "run_id",
]
TOP_SENSORS = 3


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
        summary[column] = format_utc(utc_ns(summary[column])).to_numpy(zero_copy_only=False)
    return summary[EVENT_COLUMNS]


SCORES_BATCH_ROWS = 500_000  # rows per record batch of scores.csv (bounds the text held at once)


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
        ("source", pa.string()),
        ("timestamp", pa.string()),
        ("score", pa.float32()),
        ("threshold", pa.float64()),
        ("anomaly", pa.int8()),
        ("event_id", pa.int64()),
    ]
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
            np.asarray([index[str(n)] for n in rejected_names], dtype=np.int64)[rejected_codes]
            if n_rejected
            else np.zeros(0, np.int64),
        ]
    )
    given = {name: i for i, name in enumerate(source_order)}
    rank = np.asarray([given.get(name, len(source_order)) for name in names], dtype=np.int64)
    row = np.concatenate([table["row"].to_numpy(dtype=np.int64), rejected["row"].to_numpy(dtype=np.int64)])
    key = rank[source_code] * (int(row.max(initial=0)) + 1) + row  # (source rank, row) as one sortable number
    order = np.argsort(key, kind="stable")
    del key, row
    names_array = pa.array(names, pa.string())

    nanoseconds = utc_ns(table["timestamp"])
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
            timestamps = format_utc(nanoseconds[at])
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
            timestamps = pa.concat_arrays([format_utc(nanoseconds[at]), rejected_time.take(pa.array(aside))]).take(position)
            status = pa.concat_arrays([pa.nulls(m - n_set_aside, pa.string()), rejected_status.take(pa.array(aside))]).take(
                position
            )
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


def events_frame(
    stats: list[EventStats],
    sensors: list[str],
    threshold: float,
    model_version: str,
    run_id: str,
) -> pd.DataFrame:
    """``anomalies.csv`` rows (``report.EVENT_COLUMNS``) of events' running figures."""
    from pipeline.reports.tables import EVENT_COLUMNS

    rows = []
    for s in sorted(stats, key=lambda e: e.event_id):
        rows.append(
            {
                "event_id": s.event_id,
                "source": s.source,
                "start": iso_ns(s.start_ns),
                "end": iso_ns(s.end_ns),
                "n_rows": s.n_rows,
                "peak_score": s.peak_score,
                "mean_score": s.score_sum / s.n_rows,
                "threshold": threshold,
                "top_sensors": top_sensors(np.asarray(s.share_sum) / s.n_rows, sensors),
                "model_version": model_version,
                "run_id": run_id,
            }
        )
    return pd.DataFrame(rows, columns=EVENT_COLUMNS)
