"""Ingest: raw CSV/Parquet files -> one validated sensor table, plus the rows set aside and why.

File reading (``pipeline.data.files``) is kept apart from this pure validation (``validate``),
so the rules can be tested on frames built in memory.

Rules, each counted in ``IngestResult.counts`` (nothing is dropped silently):
- timestamps become UTC; naive ones are read in ``ingest.source_timezone``; a row whose
  timestamp does not parse (or is ambiguous in local time) is set aside;
- a row with text in a sensor column is set aside ("unparseable value");
- an exact duplicate row (same timestamp and values) is set aside as a duplicate;
- rows that share a timestamp but disagree in values are all set aside ("conflicting timestamp"):
  there is no way to tell which one is right;
- rows are sorted by time (out-of-order rows counted);
- a run of missing values up to ``max_fill_rows`` long is forward-filled (counted as repaired);
  a longer run, or one with no earlier value, is set aside;
- a sensor sampled more slowly than the others holds its last reading until its next one
  (``pipeline.data.rates``, counted as held); with ``ingest.resample`` every sensor is first put
  on one grid;
- each text timestamp column is read in one format (``pipeline.data.timeformat``).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from pipeline.config import IngestConfig
from pipeline.data.columns import (
    FLOAT32_MAX,
    check_zone,
    detect_sensors,
    detect_timestamp_column,
    epoch_unit,
    is_epoch,
    parse_timestamps,
    to_float,
)
from pipeline.data.files import RawSource
from pipeline.data.rates import (
    missing_runs,
    repair_missing,
    resample_table,
    sampling_interval_seconds,
    sensor_intervals,
    slower_sensors,
)
from pipeline.data.timeformat import decide_format
from pipeline.errors import InputError
from pipeline.utc import iso_utc

log = logging.getLogger(__name__)


@dataclass
class IngestResult:
    """The validated table and everything set aside.

    ``table`` has columns ``source``, ``row`` (0-based data row in its file), ``timestamp``
    (UTC), one float column per sensor and ``label`` when a label column is configured;
    sorted by time. ``rejected`` has ``source``, ``row``, ``timestamp`` (as text) and
    ``status`` (the reason).
    """

    table: pd.DataFrame
    rejected: pd.DataFrame
    sensors: list[str]
    timestamp_column: str
    counts: dict[str, int] = field(default_factory=dict)
    filled_values: dict[str, int] = field(default_factory=dict)
    missing_values: dict[str, int] = field(default_factory=dict)
    ignored_columns: list[str] = field(default_factory=list)
    timestamp_formats: dict[str, str] = field(default_factory=dict)  # source -> how its timestamps were read
    dayfirst: bool | None = None  # the order the numeric dates were read in (None: no numeric dates)
    sensor_intervals: dict[str, float] = field(default_factory=dict)  # each sensor's own interval, seconds
    held_values: dict[str, int] = field(default_factory=dict)  # per sensor: missing values held (sample-and-hold)
    held_sensors: list[str] = field(default_factory=list)  # the sensors slower than the table, whose readings are held


__all__ = ["IngestResult", "missing_runs", "validate"]


def validate(
    sources: Iterable[RawSource],
    config: IngestConfig,
    sensors: list[str] | None = None,
    timestamp_column: str | None = None,
    dayfirst: bool | None = None,
    intervals: dict[str, float] | None = None,
) -> IngestResult:
    """Validate and merge raw sources into one sorted table (pure: no I/O).

    Args:
        sources: files as read, in the order given.
        config: ingest settings.
        sensors: the sensor columns to use (a trained model's); default from config or detected
            in the first source.
        timestamp_column: the timestamp column to use; default from config or detected.
        dayfirst: the date order a model was trained on, used for a file whose numeric dates
            fit both orders (unless ``ingest.dayfirst`` or ``ingest.timestamp_format`` is set).
        intervals: each sensor's own sampling interval in seconds (a model's); None measures
            them from the data (training). A sensor not in it is taken to be at the table's rate.

    Raises:
        InputError: a required column is missing, no timestamp or sensor column is found, or
            time zones are mixed.
    """
    # An unknown zone is a configuration error even when every timestamp carries its own offset.
    check_zone(config.source_timezone)
    # Sources are taken one at a time and let go once normalised, so that a caller passing a
    # generator never holds more than one raw file in memory.
    remaining = iter(sources)
    first = next(remaining, None)
    if first is None:
        raise InputError("no input files")
    _check_header(first)
    ts_col = timestamp_column or config.timestamp_column or detect_timestamp_column(first)
    sensors = list(sensors or config.sensors or detect_sensors(first, ts_col, config))
    first_name = first.name
    parts, rejected_parts, ignored = [], [], set()
    counts = {
        "rows_in": 0,
        "unparseable_timestamp": 0,
        "unparseable_value": 0,
        "unparseable_label": 0,
        "out_of_range_value": 0,
        "ambiguous_time": 0,
    }
    formats: dict[str, str] = {}
    orders: set[bool] = set()
    source = first
    del first
    while source is not None:
        _check_header(source)
        part, rejected, extra = _normalise(source, ts_col, sensors, config, counts, dayfirst, formats, orders)
        parts.append(part)
        rejected_parts.append(rejected)
        ignored |= extra
        source = next(remaining, None)
    table = parts[0].reset_index(drop=True) if len(parts) == 1 else pd.concat(parts, ignore_index=True)
    del parts
    rejected = pd.concat(rejected_parts, ignore_index=True)
    if ignored:
        log.warning("ignoring columns that are not sensors: %s", ", ".join(sorted(ignored)))

    table, dup_rejected = _drop_duplicates(table, sensors)
    counts["duplicate_rows"] = int((dup_rejected["status"].str.startswith("duplicate")).sum())
    counts["conflicting_timestamp"] = len(dup_rejected) - counts["duplicate_rows"]
    counts["out_of_order"] = _count_out_of_order(table)
    if not table["timestamp"].is_monotonic_increasing:
        table = table.sort_values("timestamp", kind="stable", ignore_index=True)
    merged = rejected.iloc[:0]
    if config.resample and len(table):
        table, merged = resample_table(table, sensors, config.resample, config.resample_aggregate)
    counts["rows_resampled"] = len(merged)
    measured = sensor_intervals(table, sensors) if len(table) else {}
    own = measured if intervals is None else {s: v for s, v in intervals.items() if s in sensors}
    slow = slower_sensors(own, sampling_interval_seconds(table["timestamp"])) if len(table) else {}
    table, nan_rejected, filled, missing, held = repair_missing(table, sensors, config.max_fill_rows, slow)
    counts["missing_run_too_long"] = len(nan_rejected)
    counts["rows_repaired"] = int(table.pop("_repaired").sum())
    counts["rows_held"] = int(table.pop("_held").sum())
    counts["held_values"] = sum(held.values())
    rejected = pd.concat([rejected, dup_rejected, merged, nan_rejected], ignore_index=True)
    counts["rows_clean"] = len(table) - counts["rows_repaired"]
    counts["rows_quarantined"] = len(rejected)
    if table.empty:
        reasons = rejected["status"].value_counts().head(3).to_dict()
        raise InputError(f"{first_name}: no usable rows left after validation ({reasons})")
    return IngestResult(
        table=table,
        rejected=rejected,
        sensors=sensors,
        timestamp_column=ts_col,
        counts=counts,
        filled_values=filled,
        missing_values=missing,
        ignored_columns=sorted(ignored),
        timestamp_formats=formats,
        dayfirst=orders.pop() if len(orders) == 1 else None,
        sensor_intervals=measured if intervals is None else {s: own.get(s, measured.get(s, 0.0)) for s in sensors},
        held_values=held,
        held_sensors=sorted(slow),
    )


def _check_header(source: RawSource) -> None:
    # Two columns of one name would make every later lookup return a frame, not a column.
    repeated = source.frame.columns[source.frame.columns.duplicated()]
    if len(repeated):
        raise InputError(f"{source.name}: column '{repeated[0]}' appears more than once in the header")


def _normalise(
    source: RawSource,
    ts_col: str,
    sensors: list[str],
    config: IngestConfig,
    counts: dict[str, int],
    dayfirst: bool | None,
    formats: dict[str, str],
    orders: set[bool],
) -> tuple[pd.DataFrame, pd.DataFrame, set[str]]:
    """One source -> (clean part, rejected rows, ignored column names)."""
    frame = source.frame
    n = len(frame)
    counts["rows_in"] += n
    wanted = [ts_col, *sensors] + ([config.label_column] if config.label_column else [])
    for column in wanted:
        if column not in frame.columns:
            kind = "timestamp" if column == ts_col else "label" if column == config.label_column else "sensor"
            raise InputError(f"{source.name}: {kind} column '{column}' not found (columns: {', '.join(map(str, frame.columns))})")
    ignored = {str(c) for c in frame.columns if c not in wanted and c not in config.exclude_columns}

    raw_ts = frame[ts_col]
    # Only a zone given in the config may resolve a file that mixes aware and naive timestamps.
    zone_given = "source_timezone" in config.model_fields_set
    time_format = None
    if pd.api.types.is_datetime64_any_dtype(raw_ts):
        formats[source.name] = "typed timestamps (ISO 8601 read by the CSV reader, or Parquet)"
    elif is_epoch(raw_ts):
        formats[source.name] = f"Unix time ({epoch_unit(raw_ts)})"
    else:
        time_format = decide_format(raw_ts.astype("string").str.strip(), source.name, ts_col, config, dayfirst)
        formats[source.name] = time_format.described
        if time_format.dayfirst is not None:
            orders.add(time_format.dayfirst)
    timestamps, ts_reason = parse_timestamps(raw_ts, source.name, ts_col, config.source_timezone, zone_given, time_format)
    reasons = pd.Series(ts_reason, index=frame.index, dtype=object)
    unparseable = int(reasons.str.startswith("unparseable timestamp", na=False).sum())
    counts["unparseable_timestamp"] += unparseable
    counts["ambiguous_time"] += int(reasons.notna().sum()) - unparseable

    columns = {"source": source.name, "row": source.data_rows(), "timestamp": timestamps}
    for column in sensors:
        values, bad = to_float(frame[column], config.decimal)
        columns[column] = values
        if bad.any():
            bad_rows = bad & reasons.isna().to_numpy()
            counts["unparseable_value"] += int(bad_rows.sum())
            texts = frame[column].astype(str)
            reasons[bad_rows] = "unparseable value '" + texts[bad_rows].str.slice(0, 40) + f"' in column '{column}'"
        # inf, or a number too large to score in float32, would poison the row's window silently.
        huge = (np.abs(values) > FLOAT32_MAX) & reasons.isna().to_numpy()
        if huge.any():
            counts["out_of_range_value"] += int(huge.sum())
            texts = frame[column].astype(str)
            reasons[huge] = "out-of-range value '" + texts[huge].str.slice(0, 40) + f"' in column '{column}'"
    if config.label_column:
        labels, bad = to_float(frame[config.label_column], config.decimal)
        columns["label"] = labels
        # Counted like any other reason and quoting the value, as for sensors.
        bad_rows = bad & reasons.isna().to_numpy()
        counts["unparseable_label"] += int(bad_rows.sum())
        texts = frame[config.label_column].astype(str)
        reasons[bad_rows] = "unparseable label '" + texts[bad_rows].str.slice(0, 40) + f"' in column '{config.label_column}'"

    part = pd.DataFrame(columns, copy=False)  # share the raw frame's float columns, no copy
    rejected_mask = reasons.notna().to_numpy()
    rejected = pd.DataFrame(
        {
            "source": source.name,
            "row": part["row"][rejected_mask],
            # As in scores.csv (UTC ISO 8601) where it parsed, else the text as read.
            "timestamp": iso_utc(timestamps[rejected_mask]).fillna(raw_ts[rejected_mask].astype(str)),
            "status": reasons[rejected_mask].astype(str),
        }
    )
    if source.set_aside is not None and len(source.set_aside):  # rows reading set aside (a tall file's readings)
        counts["rows_in"] += len(source.set_aside)
        rejected = pd.concat([rejected, source.set_aside], ignore_index=True)
    for key, value in source.counts.items():
        counts[key] = counts.get(key, 0) + value
    return (part[~rejected_mask] if rejected_mask.any() else part), rejected, ignored


def _drop_duplicates(table: pd.DataFrame, sensors: list[str]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Set aside exact duplicates (keep the first) and rows whose timestamp has rival values."""
    value_columns = ["timestamp", *sensors] + (["label"] if "label" in table else [])
    shared_time = table["timestamp"].duplicated(keep=False).to_numpy()
    # Only rows that share a timestamp can be duplicates or conflicts: do the costly work on those.
    suspects = table[shared_time]
    exact_in = suspects.duplicated(subset=value_columns, keep="first").to_numpy()
    conflict_in = suspects["timestamp"][~exact_in].duplicated(keep=False).to_numpy()
    groups = suspects.groupby(value_columns, sort=False, dropna=False)
    first_row, first_source = groups["row"].transform("first"), groups["source"].transform("first")
    duplicates = suspects[exact_in]
    conflicting = suspects[~exact_in][conflict_in]
    rejected = pd.concat(
        [
            pd.DataFrame(
                {
                    "source": duplicates["source"],
                    "row": duplicates["row"],
                    "timestamp": iso_utc(duplicates["timestamp"]),
                    "status": "duplicate of " + first_source[exact_in] + " row " + (first_row[exact_in] + 1).astype(str),
                }
            ),
            pd.DataFrame(
                {
                    "source": conflicting["source"],
                    "row": conflicting["row"],
                    "timestamp": iso_utc(conflicting["timestamp"]),
                    "status": "conflicting timestamp: other rows have the same time with different values",
                }
            ),
        ],
        ignore_index=True,
    )
    if rejected.empty:
        return table, rejected
    gone = np.zeros(len(table), dtype=bool)
    suspect_rows = np.flatnonzero(shared_time)
    gone[suspect_rows[exact_in]] = True
    gone[suspect_rows[~exact_in][conflict_in]] = True
    return table[~gone], rejected


def _count_out_of_order(table: pd.DataFrame) -> int:
    """Rows whose timestamp is earlier than a row before them in the same file."""
    earlier_max = table.groupby("source", sort=False)["timestamp"].cummax().groupby(table["source"]).shift()
    return int((table["timestamp"] < earlier_max).sum())
