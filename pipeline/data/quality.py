"""Data-quality report of a validated table: per-sensor figures and the ingest counts.

Flat-lined sensors and gaps are quality flags for the operator, separate from anomalies.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from pipeline.data.ingest import IngestResult
from pipeline.data.rates import missing_runs, sampling_interval_seconds

__all__ = ["flatline_runs", "quality_figures", "quality_report", "sampling_interval_seconds", "set_aside_warnings"]

# What may fix a file whose rows were mostly set aside, by the kind of the main reason.
SET_ASIDE_HINTS = {
    "missing value": "sensors logged at different rates? train on such data so each keeps its own interval, "
    "or set ingest.resample (e.g. '1min'); else raise ingest.max_fill_rows",
    "unparseable value": "check ingest.decimal and ingest.delimiter, or list the column in ingest.exclude_columns",
    "unparseable timestamp": "set ingest.timestamp_format (a strftime pattern) or ingest.dayfirst",
    "ambiguous or nonexistent local time": "set ingest.source_timezone to the file's zone, or export in UTC",
    "bad quality": "ingest.good_quality lists the quality values that mean good",
    "conflicting timestamp": "the export repeats times with other values (a clock change?); fix the export",
    "conflicting reading": "the export repeats readings with other values; fix the export",
    "late row": "put only rows after the last processed time in new files",
}


def flatline_runs(values: np.ndarray, min_rows: int) -> tuple[int, int]:
    """Number of runs of at least ``min_rows`` identical consecutive values, and the longest run."""
    if values.size < 2:
        return 0, int(values.size)
    same = np.concatenate([[False], values[1:] == values[:-1]])
    starts, lengths = missing_runs(same)
    lengths = lengths + 1  # a run of k equal steps spans k + 1 rows
    return int((lengths >= min_rows).sum()), int(lengths.max(initial=1))


def quality_report(result: IngestResult, flatline_rows: int, max_set_aside_share: float = 0.2) -> dict[str, Any]:
    """Summarise a validated table.

    Args:
        result: the ingest output.
        flatline_rows: a run of identical values at least this long is reported as flat-lined.
        max_set_aside_share: files with a larger share of rows set aside are listed (``set_aside_warnings``).

    Returns:
        A JSON-serialisable dict with ``rows`` (ingest counts), ``time`` (sampling interval,
        gaps, duplicate timestamps) and ``sensors`` (per-sensor figures).
    """
    table = result.table
    interval = sampling_interval_seconds(table["timestamp"])
    steps = table["timestamp"].diff().dt.total_seconds().to_numpy()[1:]
    gaps = steps[steps > 1.5 * interval]
    n_in = max(result.counts.get("rows_in", len(table)), 1)
    sensors = {}
    for column in result.sensors:
        values = table[column].to_numpy()
        n_flat, longest = flatline_runs(values, flatline_rows)
        sensors[column] = {
            "missing_share": result.missing_values.get(column, 0) / n_in,
            "filled_values": result.filled_values.get(column, 0),
            "held_values": result.held_values.get(column, 0),
            "interval_seconds": result.sensor_intervals.get(column),
            "flatline_runs": n_flat,
            "longest_flatline_rows": longest,
            "flatlined": n_flat > 0,
            # max == min, not std == 0: the std of a constant 0.1 is a rounding step, not 0.
            "constant": bool(np.nanmax(values) == np.nanmin(values)),
            "min": float(np.nanmin(values)),
            "max": float(np.nanmax(values)),
            "mean": float(np.nanmean(values)),
            "std": float(np.nanstd(values)),
        }
    return {
        # Every file read, also one whose rows were all set aside (its reasons are below).
        "sources": sorted(set(table["source"].unique()) | set(result.rejected["source"].unique())),  # not a Python object per row
        "timestamp_column": result.timestamp_column,
        "timestamp_formats": result.timestamp_formats,
        "set_aside_over_limit": set_aside_warnings(result, max_set_aside_share),
        "ignored_columns": result.ignored_columns,
        "rows": dict(result.counts),
        "quarantine_reasons": _reason_counts(result.rejected),
        "time": {
            "start": str(table["timestamp"].iloc[0]),
            "end": str(table["timestamp"].iloc[-1]),
            "sampling_interval_seconds": interval,
            "gaps_beyond_interval": int(gaps.size),
            "longest_gap_seconds": float(gaps.max(initial=0.0)),
            "duplicate_timestamps": int(result.counts.get("duplicate_rows", 0) + result.counts.get("conflicting_timestamp", 0)),
        },
        "sensors": sensors,
    }


def _reason_kinds(rejected: pd.DataFrame) -> pd.Series:
    # Group reasons by their kind (text before any column name, quoted value, row number or
    # explanation) to keep it short: "missing value", not "missing value in column" (cut mid-phrase).
    return rejected["status"].astype(str).str.replace(r"(?: in column)? '.*$| of .*$| \(.*$|:.*$", "", regex=True)


def _reason_counts(rejected: pd.DataFrame) -> dict[str, int]:
    return {str(k): int(v) for k, v in _reason_kinds(rejected).value_counts().items()}


def set_aside_warnings(result: IngestResult, max_share: float) -> list[str]:
    """One line per file with more than ``max_share`` of its rows set aside: the share, the main
    reason and a setting that may fix it. Rows merged by ``ingest.resample`` are not set aside."""
    rejected = result.rejected
    if rejected.empty:
        return []
    kinds = _reason_kinds(rejected)
    aside = kinds != "resampled"
    rows_in = result.table["source"].value_counts().add(rejected["source"].value_counts(), fill_value=0)
    lines = []
    for source, total in rows_in.items():
        mine = kinds[aside & (rejected["source"] == source).to_numpy()]
        if total == 0 or len(mine) / total <= max_share:
            continue
        counts = mine.value_counts()
        main, n_main = str(counts.index[0]), int(counts.iloc[0])
        hint = SET_ASIDE_HINTS.get(main, "see quarantine_reasons in quality.json")
        lines.append(
            f"{source}: {len(mine) / total:.0%} of its rows set aside ({len(mine)} of {int(total)}), more than "
            f"ingest.max_set_aside_share={max_share:g}; main reason: {main} ({n_main} rows); {hint}"
        )
    return lines


def quality_figures(report: dict[str, Any]) -> dict[str, float]:
    """Flat numeric figures of a quality report, for logging as metrics."""
    figures = {f"quality.{key}": float(value) for key, value in report["rows"].items()}
    figures["quality.gaps_beyond_interval"] = float(report["time"]["gaps_beyond_interval"])
    figures["quality.flatlined_sensors"] = float(sum(s["flatlined"] for s in report["sensors"].values()))
    figures["quality.constant_sensors"] = float(sum(s["constant"] for s in report["sensors"].values()))
    return figures
