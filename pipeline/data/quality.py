"""Data-quality report of a validated table: per-sensor figures and the ingest counts.

Flat-lined sensors and gaps are quality flags for the operator, separate from anomalies.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from pipeline.data.ingest import IngestResult
from pipeline.data.rates import sampling_interval_seconds
from pipeline.utc import utc_ns

__all__ = [
    "QualitySummary",
    "flatline_runs",
    "quality_figures",
    "quality_report",
    "sampling_interval_seconds",
    "set_aside_warnings",
]

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
    runs = _Runs().add(values, min_rows)
    return runs.closed(min_rows)


@dataclass
class _Runs:
    """Runs of identical consecutive values of one sensor, over chunks in time order: the runs
    ended so far and the run still open at the last value."""

    last: float | None = None
    open_rows: int = 0
    long_runs: int = 0
    longest: int = 1

    def add(self, values: np.ndarray, min_rows: int) -> _Runs:
        if values.size == 0:
            return self
        carried = self.last is not None
        v = np.concatenate([[self.last], values]) if carried else values
        bounds = np.concatenate([[0], np.flatnonzero(v[1:] != v[:-1]) + 1, [v.size]])  # NaN never equals: its own run
        lengths = np.diff(bounds)
        if carried:
            lengths[0] += self.open_rows - 1
        ended = lengths[:-1]
        self.long_runs += int((ended >= max(min_rows, 2)).sum())
        self.longest = max(self.longest, int(lengths.max()))
        self.last, self.open_rows = v[-1], int(lengths[-1])
        return self

    def closed(self, min_rows: int) -> tuple[int, int]:
        """(runs of at least ``min_rows``, longest run) once no more values come."""
        return self.long_runs + int(self.open_rows >= max(min_rows, 2)), self.longest


@dataclass
class _Moments:
    """Count, mean, sum of squared deviations (merged as Chan et al.), minimum and maximum of one sensor."""

    n: int = 0
    mean: float = 0.0
    m2: float = 0.0
    low: float = np.inf
    high: float = -np.inf

    def add(self, values: np.ndarray) -> None:
        values = values[~np.isnan(values)]
        if values.size == 0:
            return
        n, mean = values.size, float(values.mean())
        m2 = float(((values - mean) ** 2).sum())
        total = self.n + n
        delta = mean - self.mean
        self.mean += delta * n / total
        self.m2 += m2 + delta * delta * self.n * n / total
        self.n = total
        self.low, self.high = min(self.low, float(values.min())), max(self.high, float(values.max()))


class QualitySummary:
    """The data-quality report built up from validated pieces of one stream in time order (the
    chunks ``score`` reads), with what one ``quality_report`` of them all together gives."""

    def __init__(self, flatline_rows: int, max_set_aside_share: float = 0.2) -> None:
        self.flatline_rows, self.max_share = flatline_rows, max_set_aside_share
        self.first: IngestResult | None = None
        self.counts: dict[str, int] = {}
        self.filled: dict[str, int] = {}
        self.missing: dict[str, int] = {}
        self.held: dict[str, int] = {}
        self.formats: dict[str, str] = {}
        self.ignored: set[str] = set()
        self.start = self.end = None
        self.last_ns: int | None = None
        self.steps: dict[int, int] = {}  # step between consecutive rows (ns) -> how many
        self.runs: dict[str, _Runs] = {}
        self.moments: dict[str, _Moments] = {}
        self.rows_of: dict[str, int] = {}  # rows read per source
        self.aside_of: dict[tuple[str, str], int] = {}  # (source, kind of reason) -> rows set aside
        self.reasons: dict[str, int] = {}

    def add(self, result: IngestResult) -> QualitySummary:
        self.first = self.first or result
        for mine, theirs in (
            (self.counts, result.counts),
            (self.filled, result.filled_values),
            (self.missing, result.missing_values),
            (self.held, result.held_values),
        ):
            for key, value in theirs.items():
                mine[key] = mine.get(key, 0) + value
        self.formats.update(result.timestamp_formats)
        self.ignored |= set(result.ignored_columns)
        table = result.table
        if len(table):
            times = utc_ns(table["timestamp"])
            self.start = self.start if self.start is not None else table["timestamp"].iloc[0]
            self.end = table["timestamp"].iloc[-1]
            steps = np.diff(np.concatenate([[self.last_ns], times]) if self.last_ns is not None else times)
            self.last_ns = int(times[-1])
            for step, n in zip(*np.unique(steps, return_counts=True)):
                self.steps[int(step)] = self.steps.get(int(step), 0) + int(n)
            for column in result.sensors:
                values = table[column].to_numpy(dtype=np.float64)
                self.runs.setdefault(column, _Runs()).add(values, self.flatline_rows)
                self.moments.setdefault(column, _Moments()).add(values)
        for source, n in table["source"].value_counts(sort=False).items():
            self.rows_of[str(source)] = self.rows_of.get(str(source), 0) + int(n)
        rejected = result.rejected
        if len(rejected):
            kinds = _reason_kinds(rejected)
            for source, n in rejected["source"].value_counts(sort=False).items():
                self.rows_of[str(source)] = self.rows_of.get(str(source), 0) + int(n)
            for (source, kind), n in kinds.groupby([rejected["source"].astype(str), kinds], sort=False).size().items():
                self.aside_of[(source, kind)] = self.aside_of.get((source, kind), 0) + int(n)
            for kind, n in kinds.value_counts(sort=False).items():
                self.reasons[str(kind)] = self.reasons.get(str(kind), 0) + int(n)
        return self

    def interval(self) -> float:
        """Median spacing of consecutive rows, seconds (``sampling_interval_seconds`` of them all)."""
        positive = sorted((step, n) for step, n in self.steps.items() if step > 0)
        if not positive:
            return 1.0
        values = np.array([step for step, _ in positive], dtype=np.float64) / 1e9
        cumulative = np.cumsum([n for _, n in positive])
        total = int(cumulative[-1])
        lower = values[np.searchsorted(cumulative, (total - 1) // 2 + 1)]
        upper = values[np.searchsorted(cumulative, total // 2 + 1)]
        return float((lower + upper) / 2)

    def report(self) -> dict[str, Any]:
        """``quality_report``'s dict."""
        first = self.first
        interval = self.interval()
        gaps = {step / 1e9: n for step, n in self.steps.items() if step / 1e9 > 1.5 * interval}
        n_in = max(self.counts.get("rows_in", 0), 1)
        sensors = {}
        for column in first.sensors:
            runs, moments = self.runs.get(column, _Runs()), self.moments.get(column, _Moments())
            n_flat, longest = runs.closed(self.flatline_rows) if runs.last is not None else (0, 0)
            sensors[column] = {
                "missing_share": self.missing.get(column, 0) / n_in,
                "filled_values": self.filled.get(column, 0),
                "held_values": self.held.get(column, 0),
                "interval_seconds": first.sensor_intervals.get(column),
                "flatline_runs": n_flat,
                "longest_flatline_rows": longest,
                "flatlined": n_flat > 0,
                # max == min, not std == 0: the std of a constant 0.1 is a rounding step, not 0.
                "constant": bool(moments.high == moments.low),
                "min": moments.low if moments.n else float("nan"),
                "max": moments.high if moments.n else float("nan"),
                "mean": moments.mean if moments.n else float("nan"),
                "std": float(np.sqrt(moments.m2 / moments.n)) if moments.n else float("nan"),
            }
        return {
            # Every file read, also one whose rows were all set aside (its reasons are below).
            "sources": sorted(self.rows_of),
            "timestamp_column": first.timestamp_column,
            "timestamp_formats": self.formats,
            "set_aside_over_limit": self._warnings(),
            "ignored_columns": sorted(self.ignored),
            "rows": dict(self.counts),
            "quarantine_reasons": dict(sorted(self.reasons.items(), key=lambda kv: -kv[1])),
            "time": {
                "start": str(self.start),
                "end": str(self.end),
                "sampling_interval_seconds": interval,
                "gaps_beyond_interval": int(sum(gaps.values())),
                "longest_gap_seconds": float(max(gaps, default=0.0)),
                "duplicate_timestamps": int(self.counts.get("duplicate_rows", 0) + self.counts.get("conflicting_timestamp", 0)),
            },
            "sensors": sensors,
        }

    def _warnings(self) -> list[str]:
        """``set_aside_warnings`` of the pieces together."""
        lines = []
        for source in sorted(self.rows_of):
            total = self.rows_of[source]
            kinds = {kind: n for (s, kind), n in self.aside_of.items() if s == source and kind != "resampled"}
            aside = sum(kinds.values())
            if total == 0 or aside / total <= self.max_share:
                continue
            main = max(kinds, key=kinds.get)  # the first of equal counts, as value_counts gives
            hint = SET_ASIDE_HINTS.get(main, "see quarantine_reasons in quality.json")
            lines.append(
                f"{source}: {aside / total:.0%} of its rows set aside ({aside} of {int(total)}), more than "
                f"ingest.max_set_aside_share={self.max_share:g}; main reason: {main} ({kinds[main]} rows); {hint}"
            )
        return lines


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
    return QualitySummary(flatline_rows, max_set_aside_share).add(result).report()


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
