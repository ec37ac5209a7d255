"""Sensors at different rates: each sensor's own sampling interval, sample-and-hold of a slower
sensor's readings, the repair of missing values, and resampling onto one grid (pure functions).

A sensor is *slower* than the table when its own interval (the median spacing of its readings)
exceeds ``SLOW_FACTOR`` times the table's (the median spacing of all rows). A slower sensor's
last reading holds until its next one for up to its own interval (``held``); readings missing for
longer than its interval x ``max_fill_rows`` are a gap, set aside as for any sensor. Sensors at
the table's rate keep the row rule: missing runs up to ``max_fill_rows`` rows are forward-filled.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from pipeline.utc import iso_utc, utc_ns

SLOW_FACTOR = 1.5  # own interval above this many table intervals: the sensor is sampled more slowly
MIN_READINGS = 10  # fewer readings tell no interval of their own (a gap in a short file is not a rate)


def missing_runs(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Start positions and lengths of the runs of True in a 1-D boolean array."""
    padded = np.concatenate([[False], mask, [False]]).astype(np.int8)
    edges = np.diff(padded)
    starts = np.flatnonzero(edges == 1)
    ends = np.flatnonzero(edges == -1)
    return starts, ends - starts


def sampling_interval_seconds(timestamps: pd.Series) -> float:
    """Median spacing of consecutive timestamps, in seconds (1.0 when it cannot be told)."""
    steps = timestamps.diff().dt.total_seconds().to_numpy()[1:]
    steps = steps[steps > 0]
    return float(np.median(steps)) if steps.size else 1.0


def sensor_intervals(table: pd.DataFrame, sensors: list[str]) -> dict[str, float]:
    """Each sensor's own sampling interval in seconds: the median spacing of the rows where it
    has a value (the table's interval for a sensor with fewer than ``MIN_READINGS`` readings)."""
    table_interval = sampling_interval_seconds(table["timestamp"])
    times = utc_ns(table["timestamp"])
    out = {}
    for column in sensors:
        read = times[table[column].notna().to_numpy()]
        steps = np.diff(read)
        steps = steps[steps > 0]
        out[column] = float(np.median(steps)) / 1e9 if steps.size >= MIN_READINGS - 1 else table_interval
    return out


def slower_sensors(intervals: dict[str, float], table_interval: float) -> dict[str, float]:
    """The sensors sampled more slowly than the table, with their own interval."""
    return {s: v for s, v in intervals.items() if v > SLOW_FACTOR * table_interval}


def repair_missing(
    table: pd.DataFrame, sensors: list[str], max_fill_rows: int, slow: dict[str, float] | None = None
) -> tuple[pd.DataFrame, pd.DataFrame, dict[str, int], dict[str, int], dict[str, int]]:
    """Hold slower sensors' readings, forward-fill short missing runs, set aside the rest.

    Args:
        table: sorted by time; NaN marks a missing value.
        sensors: the sensor columns.
        max_fill_rows: the longest missing run filled (rows; for a slower sensor, readings).
        slow: slower sensors and their own interval in seconds (``slower_sensors``).

    Returns:
        The table without the rows set aside (with a ``_repaired`` column), the rows set aside,
        and per sensor the values filled, missing and held.
    """
    slow = slow or {}
    n = len(table)
    too_long = np.zeros(n, dtype=bool)
    reasons = np.full(n, None, dtype=object)
    values: dict[str, np.ndarray] = {}
    fills: dict[str, np.ndarray] = {}
    holds: dict[str, np.ndarray] = {}
    missing = {}
    times = utc_ns(table["timestamp"]) if slow else None
    for column in sensors:
        mask = table[column].isna().to_numpy()
        missing[column] = int(mask.sum())
        if not missing[column]:
            continue
        values[column] = table[column].to_numpy(dtype=np.float64, copy=True)
        if column in slow:
            fills[column], holds[column] = _hold(values[column], mask, times, slow[column], max_fill_rows, column, reasons)
            too_long |= mask & ~fills[column] & ~holds[column]
            continue
        starts, lengths = missing_runs(mask)
        fill = np.zeros(n, dtype=bool)
        for start, length in zip(starts, lengths):
            if length <= max_fill_rows and start > 0:
                # The value just before the run (row start - 1 holds one: runs are maximal). Filling
                # here, not with ffill after dropping set-aside rows, keeps a fill from reaching
                # past a dropped row to an older value or to nothing (a NaN left in the table).
                values[column][start : start + length] = values[column][start - 1]
                fill[start : start + length] = True
            else:
                span = slice(start, start + length)
                why = "no earlier value" if start == 0 else f"{length} rows in a row, more than max_fill_rows={max_fill_rows}"
                reasons[span] = np.where(reasons[span] == None, f"missing value in column '{column}' ({why})", reasons[span])  # noqa: E711
                too_long[span] = True
        fills[column] = fill
    # Count fills only in rows that stay: a row set aside by a later column was not repaired.
    filled = {column: int((fills[column] & ~too_long).sum()) if column in fills else 0 for column in sensors}
    held = {column: int((holds[column] & ~too_long).sum()) if column in holds else 0 for column in sensors}
    repaired = np.logical_or.reduce([np.zeros(n, dtype=bool), *fills.values()]) & ~too_long
    # Copy-on-write: the new columns below never touch the caller's frame.
    out = table[~too_long] if too_long.any() else table.copy(deep=False)
    for column in values:
        out[column] = values[column][~too_long]
    out["_repaired"] = repaired[~too_long]
    out["_held"] = np.logical_or.reduce([np.zeros(n, dtype=bool), *holds.values()])[~too_long]
    gone = table[too_long]
    rejected = pd.DataFrame(
        {
            "source": gone["source"],
            "row": gone["row"],
            "timestamp": iso_utc(gone["timestamp"]),
            "status": reasons[too_long],
        }
    )
    return out.reset_index(drop=True), rejected, filled, missing, held


def _hold(
    values: np.ndarray,
    mask: np.ndarray,
    times: np.ndarray,
    interval: float,
    max_fill_rows: int,
    column: str,
    reasons: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """Sample-and-hold of one slower sensor, in place on ``values``; returns (filled, held) masks.

    A missing cell within ``interval`` of the last reading is held; one later is filled when the
    readings around it are at most ``interval x (max_fill_rows + 1)`` apart (at most
    ``max_fill_rows`` readings missed), else set aside (its reason written into ``reasons``).
    """
    n = values.size
    step = int(round(interval * 1e9))
    index = np.arange(n)
    last = np.maximum.accumulate(np.where(~mask, index, -1))
    following = np.minimum.accumulate(np.where(~mask, index, n)[::-1])[::-1]
    has_last = last >= 0
    t_last = np.where(has_last, times[np.maximum(last, 0)], 0)
    # A run at the end: as if the next reading came one interval after the last row.
    t_next = np.where(following < n, times[np.minimum(following, n - 1)], times[-1] + step)
    age = times - t_last
    held = mask & has_last & (age < step)
    later = mask & has_last & ~held
    filled = later & (t_next - t_last <= step * (max_fill_rows + 1))
    keep = held | filled
    values[keep] = values[last[keep]]
    no_earlier = mask & ~has_last
    reasons[no_earlier & (reasons == None)] = f"missing value in column '{column}' (no earlier value)"  # noqa: E711
    gap = later & ~filled
    if gap.any():
        missed = (t_next[gap] - t_last[gap] - step) / 1e9
        why = [
            f"missing value in column '{column}' (no reading for {m:.0f} s, more than max_fill_rows={max_fill_rows} "
            f"x its interval of {interval:.0f} s)"
            for m in missed
        ]
        where = np.flatnonzero(gap)
        free = reasons[where] == None  # noqa: E711
        reasons[where[free]] = np.asarray(why, dtype=object)[free]
    return filled, held


def resample_table(
    table: pd.DataFrame, sensors: list[str], rule: str, aggregate: str | dict[str, str]
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Put a sorted table on one grid of step ``rule``: one row per bin holding readings.

    Each sensor's readings in a bin are aggregated (``mean`` or ``last``, per sensor when
    ``aggregate`` is a mapping; NaN when it has none there); a label is the bin's largest. The
    bin's row keeps the ``source`` and ``row`` of its first input row; the other input rows of
    the bin are returned as merged, with the bin they went into as their status.
    """
    bins = table["timestamp"].dt.floor(rule)
    start = np.concatenate([[True], bins.to_numpy()[1:] != bins.to_numpy()[:-1]])
    group = np.cumsum(start) - 1
    grouped = table.groupby(group, sort=False)
    out = {
        "source": table["source"].to_numpy()[start],
        "row": table["row"].to_numpy()[start],
        "timestamp": bins[start].reset_index(drop=True),
    }
    for column in sensors:
        how = aggregate.get(column, "mean") if isinstance(aggregate, dict) else aggregate
        out[column] = getattr(grouped[column], how)().to_numpy(dtype=np.float64)
    if "label" in table:
        out["label"] = grouped["label"].max().to_numpy(dtype=np.float64)
    binned = pd.DataFrame(out)
    merged = table[~start]
    into = iso_utc(bins[~start])
    rejected = pd.DataFrame(
        {
            "source": merged["source"],
            "row": merged["row"],
            "timestamp": iso_utc(merged["timestamp"]),
            "status": f"resampled: merged into the {rule} row at " + into,
        }
    )
    return binned, rejected
