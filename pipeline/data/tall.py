"""Tall (historian) exports: one row per reading (``timestamp, tag, value[, quality]``) pivoted to
the wide table, one row per timestamp and one column per tag.

The pivot works on the file's Arrow columns (read block by block) with dictionary codes and NumPy
arrays: one integer per reading and one Python object per timestamp, never one per cell. Readings
that cannot be used are set aside with the reason and counted, as rows of a wide file are:

- a quality flag not in ``ingest.good_quality`` ("bad quality");
- an empty or unparseable value, or an empty timestamp;
- the same tag, time and value again ("duplicate reading", kept once);
- the same tag and time with other values ("conflicting reading": all of them; the cell is then
  missing, and repaired or set aside by the missing-value rules).

A timestamp none of whose readings is usable gets no wide row.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from pipeline.config import IngestConfig
from pipeline.errors import InputError

NUMBER = r"^\s*[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?\s*$"


def pivot_tall(table: pa.Table, name: str, config: IngestConfig) -> tuple[pd.DataFrame, np.ndarray, pd.DataFrame, dict[str, int]]:
    """A tall file's readings -> (wide frame, file row of each wide row, readings set aside, counts).

    The wide frame has the timestamp column (as read) and one float64 column per tag, in order of
    first appearance; a wide row's file row is that of its timestamp's first usable reading.

    Raises:
        InputError: a configured column is missing.
    """
    tag_col, value_col, quality_col = config.tag_column, config.value_column, config.quality_column
    roles = [c for c in (tag_col, value_col, quality_col) if c]
    for role, column in (("tag", tag_col), ("value", value_col), ("quality", quality_col)):
        if column and column not in table.column_names:
            raise InputError(
                f"{name}: {role} column '{column}' not found (ingest.layout is tall; columns: {', '.join(table.column_names)})"
            )
    others = [c for c in table.column_names if c not in roles]
    ts_col = config.timestamp_column or (others[0] if others else None)
    if ts_col is None or ts_col not in table.column_names:
        raise InputError(f"{name}: timestamp column '{ts_col}' not found (columns: {', '.join(table.column_names)})")

    n = table.num_rows
    status = np.full(n, None, dtype=object)
    counts = {"tall_readings": n, "bad_quality": 0, "duplicate_readings": 0, "conflicting_readings": 0}

    tags = pc.dictionary_encode(pc.cast(table[tag_col], pa.string())).combine_chunks()
    tag_names = [str(t) for t in tags.dictionary.to_pylist()]
    tag_code = tags.indices.to_numpy(zero_copy_only=False)
    tag_missing = ~tags.is_valid().to_numpy(zero_copy_only=False)
    tag_code = np.where(tag_missing, 0, tag_code).astype(np.int64)
    tag_text = np.asarray(tag_names + [""], dtype=object)[np.where(tag_missing, len(tag_names), tag_code)]

    stamps = pc.dictionary_encode(table[ts_col]).combine_chunks()
    ts_code = stamps.indices.to_numpy(zero_copy_only=False)
    ts_missing = ~stamps.is_valid().to_numpy(zero_copy_only=False)
    ts_code = np.where(ts_missing, 0, ts_code).astype(np.int64)

    values, value_bad, value_missing = _values(table[value_col], config.decimal)

    def aside(mask: np.ndarray, reason) -> None:
        free = mask & (status == None)  # noqa: E711
        status[free] = reason[free] if isinstance(reason, np.ndarray) else reason

    aside(ts_missing, "unparseable timestamp (empty)")
    aside(tag_missing, "missing tag")
    if quality_col:
        flags = pc.utf8_lower(pc.utf8_trim_whitespace(pc.cast(table[quality_col], pa.string())))
        good = pc.is_in(flags, value_set=pa.array([g.strip().lower() for g in config.good_quality])).to_numpy(
            zero_copy_only=False
        )
        good &= flags.is_valid().to_numpy(zero_copy_only=False)
        bad = ~good & (status == None)  # noqa: E711
        flag_text = pc.cast(table[quality_col], pa.string()).to_numpy(zero_copy_only=False)
        aside(bad, _quality_reasons(bad, flag_text, tag_text))
        counts["bad_quality"] = int(bad.sum())
    unparseable = value_bad & (status == None)  # noqa: E711
    if unparseable.any():
        raw_values = pc.cast(table[value_col], pa.string()).to_numpy(zero_copy_only=False)
        reasons = np.full(n, None, dtype=object)
        where = np.flatnonzero(unparseable)
        reasons[where] = [f"unparseable value '{str(raw_values[i])[:40]}' of tag '{tag_text[i]}'" for i in where]
        aside(unparseable, reasons)
    counts["unparseable_value"] = int(unparseable.sum())
    empty = value_missing & (status == None)  # noqa: E711
    counts["missing_reading"] = int(empty.sum())
    aside(empty, "missing value (empty reading)")

    # Duplicates and conflicts among the usable readings: sort by (timestamp, tag, value).
    usable = np.flatnonzero(status == None)  # noqa: E711
    key = ts_code[usable] * max(len(tag_names), 1) + tag_code[usable]
    order = usable[np.lexsort((usable, values[usable], key))]
    key_sorted = ts_code[order] * max(len(tag_names), 1) + tag_code[order]
    same_key = np.concatenate([[False], key_sorted[1:] == key_sorted[:-1]])
    same_value = same_key & np.concatenate([[False], values[order][1:] == values[order][:-1]])
    group = np.cumsum(~same_key) - 1
    distinct = np.bincount(group, weights=(~same_value).astype(np.int64)) if order.size else np.zeros(0)
    first_of_value = order[~same_value][np.cumsum(~same_value) - 1]
    conflicting = ~same_value & (distinct[group] > 1)
    status[order[same_value]] = np.asarray(
        [f"duplicate reading: same tag, time and value as row {r + 1}" for r in first_of_value[same_value]], dtype=object
    )
    status[order[conflicting]] = "conflicting reading: other readings of this tag at this time have other values"
    counts["duplicate_readings"] = int(same_value.sum())
    counts["conflicting_readings"] = int(conflicting.sum())

    kept = np.flatnonzero(status == None)  # noqa: E711
    # Wide rows: timestamps with a usable reading, in order of their first usable reading.
    first_row = np.full(len(stamps.dictionary), n, dtype=np.int64)
    np.minimum.at(first_row, ts_code[kept], kept)
    used = np.flatnonzero(first_row < n)
    used = used[np.argsort(first_row[used], kind="stable")]
    position = np.full(len(stamps.dictionary), -1, dtype=np.int64)
    position[used] = np.arange(used.size)
    wide = np.full((used.size, len(tag_names)), np.nan)
    wide[position[ts_code[kept]], tag_code[kept]] = values[kept]
    frame = pd.DataFrame({ts_col: stamps.dictionary.take(pa.array(used)).to_pandas()})
    for i, tag in enumerate(tag_names):
        frame[tag] = wide[:, i]

    aside_rows = np.flatnonzero(status != None)  # noqa: E711
    ts_text = pc.cast(table[ts_col], pa.string()).take(pa.array(aside_rows)).to_pandas() if aside_rows.size else []
    set_aside = pd.DataFrame(
        {
            "source": name,
            "row": aside_rows.astype(np.int64),
            "timestamp": pd.Series(ts_text, dtype=object).fillna("").to_numpy(dtype=object),
            "status": status[aside_rows].astype(str),
        }
    )
    counts["unparseable_timestamp"] = int(ts_missing.sum())
    return frame, first_row[used], set_aside, counts


def _quality_reasons(bad: np.ndarray, flags: np.ndarray, tags: np.ndarray) -> np.ndarray:
    reasons = np.full(bad.size, None, dtype=object)
    where = np.flatnonzero(bad)
    reasons[where] = [f"bad quality '{flags[i]}' of tag '{tags[i]}' (not in ingest.good_quality)" for i in where]
    return reasons


def _values(column: pa.ChunkedArray, decimal: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Readings as float64, with masks of unparseable text and of empty values."""
    if pa.types.is_integer(column.type) or pa.types.is_floating(column.type):
        values = pc.cast(column, pa.float64()).to_numpy()
        missing = np.isnan(values)
        return values, np.zeros(values.size, dtype=bool), missing
    text = pc.utf8_trim_whitespace(pc.cast(column, pa.string()))
    if decimal != ".":
        text = pc.replace_substring(text, decimal, ".")
    missing = ~text.is_valid().to_numpy(zero_copy_only=False) | (pc.utf8_length(text).to_numpy(zero_copy_only=False) == 0)
    numeric = pc.match_substring_regex(text, NUMBER).to_numpy(zero_copy_only=False)
    numeric = np.where(missing, False, numeric).astype(bool)
    values = np.full(len(text), np.nan)
    if numeric.any():
        values[numeric] = pc.cast(text.filter(pa.array(numeric)), pa.float64()).to_numpy()
    return values, ~numeric & ~missing, missing
