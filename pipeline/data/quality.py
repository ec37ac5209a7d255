"""Data-quality report of a validated table: per-sensor figures and the ingest counts.

Flat-lined sensors and gaps are quality flags for the operator, separate from anomalies.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from pipeline.data.ingest import IngestResult, missing_runs


def sampling_interval_seconds(timestamps: pd.Series) -> float:
    """Median spacing of consecutive timestamps, in seconds (1.0 when it cannot be told)."""
    steps = timestamps.diff().dt.total_seconds().to_numpy()[1:]
    steps = steps[steps > 0]
    return float(np.median(steps)) if steps.size else 1.0


def flatline_runs(values: np.ndarray, min_rows: int) -> tuple[int, int]:
    """Number of runs of at least ``min_rows`` identical consecutive values, and the longest run."""
    if values.size < 2:
        return 0, int(values.size)
    same = np.concatenate([[False], values[1:] == values[:-1]])
    starts, lengths = missing_runs(same)
    lengths = lengths + 1  # a run of k equal steps spans k + 1 rows
    return int((lengths >= min_rows).sum()), int(lengths.max(initial=1))


def quality_report(result: IngestResult, flatline_rows: int) -> dict[str, Any]:
    """Summarise a validated table.

    Args:
        result: the ingest output.
        flatline_rows: a run of identical values at least this long is reported as flat-lined.

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
        "sources": sorted(set(table["source"]) | set(result.rejected["source"])),
        "timestamp_column": result.timestamp_column,
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


def _reason_counts(rejected: pd.DataFrame) -> dict[str, int]:
    # Group reasons by their kind (text before any column name, quoted value, row number or
    # explanation) to keep it short: "missing value", not "missing value in column" (cut mid-phrase).
    kinds = rejected["status"].astype(str).str.replace(r"(?: in column)? '.*$| of .*$| \(.*$|:.*$", "", regex=True)
    return {str(k): int(v) for k, v in kinds.value_counts().items()}


def quality_figures(report: dict[str, Any]) -> dict[str, float]:
    """Flat numeric figures of a quality report, for logging as metrics."""
    figures = {f"quality.{key}": float(value) for key, value in report["rows"].items()}
    figures["quality.gaps_beyond_interval"] = float(report["time"]["gaps_beyond_interval"])
    figures["quality.flatlined_sensors"] = float(sum(s["flatlined"] for s in report["sensors"].values()))
    figures["quality.constant_sensors"] = float(sum(s["constant"] for s in report["sensors"].values()))
    return figures
