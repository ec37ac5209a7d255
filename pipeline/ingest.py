"""Ingest: raw CSV/Parquet files -> one validated sensor table, plus the rows set aside and why.

File reading (``discover_files``, ``read_source``) is kept apart from the pure validation
(``validate``) so the rules can be tested on frames built in memory.

Rules, each counted in ``IngestResult.counts`` (nothing is dropped silently):
- timestamps become UTC; naive ones are read in ``ingest.source_timezone``; a row whose
  timestamp does not parse (or is ambiguous in local time) is set aside;
- a row with text in a sensor column is set aside ("unparseable value");
- an exact duplicate row (same timestamp and values) is set aside as a duplicate;
- rows that share a timestamp but disagree in values are all set aside ("conflicting timestamp"):
  there is no way to tell which one is right;
- rows are sorted by time (out-of-order rows counted);
- a run of missing values up to ``max_fill_rows`` long is forward-filled (counted as repaired);
  a longer run, or one with no earlier value, is set aside.
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq

from pipeline.config import IngestConfig
from pipeline.errors import InputError

log = logging.getLogger(__name__)

DATA_SUFFIXES = {".csv", ".txt", ".tsv", ".parquet", ".pq"}
PARQUET_SUFFIXES = {".parquet", ".pq"}
# Column names that hold labels rather than measurements; never auto-detected as sensors.
LABEL_LIKE_NAMES = {"anomaly", "anomalies", "label", "labels", "is_anomaly", "changepoint", "target", "fault"}
NULL_MARKERS = ["", "NA", "N/A", "NaN", "nan", "NULL", "null", "None", "#N/A", "-nan"]
_TZ_SUFFIX = re.compile(r"(?:Z|[+-]\d{2}:?\d{2})$")
STREAM_BLOCK_BYTES = 8 << 20
FLOAT32_MAX = float(np.finfo(np.float32).max)
# A text column counts as a sensor column when at least this share of its values are numbers.
NUMERIC_SHARE = 0.9
# A text column counts as the timestamp column when more than this share of its values parse as
# datetimes: one unparseable timestamp must set aside its row, not hide the whole column.
TIMESTAMP_SHARE = 0.5


@dataclass(frozen=True)
class RawSource:
    """One file as read: every column, rows in file order."""

    name: str
    frame: pd.DataFrame
    digest: str
    row_offset: int = 0  # file row of the frame's first row (the new rows of an appended file)


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


def discover_files(paths: list[str | Path]) -> list[tuple[str, Path]]:
    """Expand files and folders into ``(source name, path)`` pairs, folders recursively.

    The source name is the path relative to a given folder, or the file name of a given file.

    Raises:
        InputError: a path does not exist, or a folder holds no data file.
    """
    found: list[tuple[str, Path]] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in DATA_SUFFIXES)
            if not files:
                raise InputError(f"{path}: no CSV or Parquet files in this folder")
            found += [(p.relative_to(path).as_posix(), p) for p in files]
        elif path.is_file():
            found.append((path.name, path))
        else:
            raise InputError(f"{path}: file not found")
    names = [name for name, _ in found]
    if len(set(names)) < len(names):  # same file name in two places: use the paths as given
        found = [(str(p), p) for _, p in found]
    return found


def file_digest(path: Path) -> str:
    sha = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            sha.update(chunk)
    return sha.hexdigest()


def sniff_delimiter(header_line: str) -> str:
    """The most frequent of , ; tab | in the header line (comma when none occurs)."""
    counts = {d: header_line.count(d) for d in (",", ";", "\t", "|")}
    best = max(counts, key=counts.get)
    return best if counts[best] > 0 else ","


def read_source(name: str, path: Path, config: IngestConfig) -> RawSource:
    """Read one CSV or Parquet file with pyarrow.

    Raises:
        InputError: the file is empty, truncated, binary or otherwise unreadable.
    """
    # A file that vanished between discovery and reading is bad input, not a raw traceback.
    if not path.is_file():
        raise InputError(f"{path}: file not found")
    if path.stat().st_size == 0:
        raise InputError(f"{path}: file is empty")
    bad_rows: list[pa_csv.InvalidRow] = []
    try:
        if path.suffix.lower() in PARQUET_SUFFIXES:
            table = pq.read_table(path)
        else:
            table = _read_csv(path, config, bad_rows)
    except (pa.ArrowException, UnicodeDecodeError, OSError) as exc:
        if bad_rows:  # a truncated or malformed row: name its line, not just pyarrow's text
            raise InputError(_describe_bad_row(path, bad_rows[0])) from None
        message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise InputError(f"{path}: cannot be read as {'Parquet' if path.suffix.lower() in PARQUET_SUFFIXES else 'CSV'}: {message}") from None
    if table.num_rows == 0:
        raise InputError(f"{path}: no data rows (header only)")
    try:
        frame = table.to_pandas(split_blocks=True, self_destruct=True)
    except (pa.ArrowException, UnicodeDecodeError) as exc:  # e.g. a Latin-1 header: not UTF-8
        raise InputError(f"{path}: cannot be read: {str(exc).splitlines()[0]} (save the file as UTF-8)") from None
    # A Parquet file written from a frame indexed by time keeps that index as pandas metadata;
    # make it a column again, or the timestamp column would not be found.
    if not isinstance(frame.index, pd.RangeIndex) or frame.index.name is not None:
        frame = frame.reset_index()
    return RawSource(name=name, frame=frame, digest=file_digest(path))


def _describe_bad_row(path: Path, row: pa_csv.InvalidRow) -> str:
    """One line naming the file line of a row with the wrong number of fields."""
    line = None
    with path.open("rb") as handle:  # pyarrow does not number rows when reading in parallel
        for number, raw in enumerate(handle, start=1):
            if raw.rstrip(b"\r\n").decode("utf-8", errors="replace") == row.text:
                line = number
                break
    where = f"line {line}" if line is not None else "a row"
    return (
        f"{path}: {where}: expected {row.expected_columns} fields, got {row.actual_columns} "
        f"(truncated or malformed row: '{row.text[:60]}')"
    )


def _read_csv(path: Path, config: IngestConfig, bad_rows: list[pa_csv.InvalidRow]) -> pa.Table:
    with path.open("rb") as handle:
        head = handle.read(64 * 1024)
    if b"\x00" in head:
        raise InputError(f"{path}: binary content, not a CSV text file")
    header_line = head.decode("utf-8", errors="replace").splitlines()[0] if head.strip() else ""
    if not header_line.strip():
        raise InputError(f"{path}: file is empty")
    delimiter = config.delimiter or sniff_delimiter(header_line)
    options = dict(
        parse_options=pa_csv.ParseOptions(delimiter=delimiter, invalid_row_handler=lambda row: bad_rows.append(row) or "error"),
        convert_options=pa_csv.ConvertOptions(decimal_point=config.decimal, null_values=NULL_MARKERS, strings_can_be_null=True),
    )
    # Stream block by block: reading the whole file at once holds the raw text and the parsed
    # columns together (about 4x the file's size at the peak).
    try:
        reader = pa_csv.open_csv(path, read_options=pa_csv.ReadOptions(block_size=STREAM_BLOCK_BYTES), **options)
        return pa.Table.from_batches(list(reader), schema=reader.schema)
    except pa.ArrowInvalid as exc:
        if bad_rows or "conversion error" not in str(exc):
            raise
    # The streaming reader fixes column types from the first block; a later block holds text in
    # a column that looked numeric. Read the whole file at once, which types columns on all rows.
    return pa_csv.read_csv(path, **options)


def validate(
    sources: Iterable[RawSource],
    config: IngestConfig,
    sensors: list[str] | None = None,
    timestamp_column: str | None = None,
) -> IngestResult:
    """Validate and merge raw sources into one sorted table (pure: no I/O).

    Args:
        sources: files as read, in the order given.
        config: ingest settings.
        sensors: the sensor columns to use (a trained model's); default from config or detected
            in the first source.
        timestamp_column: the timestamp column to use; default from config or detected.

    Raises:
        InputError: a required column is missing, no timestamp or sensor column is found, or
            time zones are mixed.
    """
    # An unknown zone is a configuration error even when every timestamp carries its own offset.
    _check_zone(config.source_timezone)
    # Sources are taken one at a time and let go once normalised, so that a caller passing a
    # generator never holds more than one raw file in memory.
    remaining = iter(sources)
    first = next(remaining, None)
    if first is None:
        raise InputError("no input files")
    _check_header(first)
    ts_col = timestamp_column or config.timestamp_column or _detect_timestamp_column(first)
    sensors = list(sensors or config.sensors or _detect_sensors(first, ts_col, config))
    first_name = first.name
    parts, rejected_parts, ignored = [], [], set()
    counts = {"rows_in": 0, "unparseable_timestamp": 0, "unparseable_value": 0, "unparseable_label": 0, "out_of_range_value": 0, "ambiguous_time": 0}
    source = first
    del first
    while source is not None:
        _check_header(source)
        part, rejected, extra = _normalise(source, ts_col, sensors, config, counts)
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
    table, nan_rejected, filled, missing = _repair_missing(table, sensors, config.max_fill_rows)
    counts["missing_run_too_long"] = len(nan_rejected)
    counts["rows_repaired"] = int(table.pop("_repaired").sum())
    rejected = pd.concat([rejected, dup_rejected, nan_rejected], ignore_index=True)
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
    )


def iso_utc(timestamps: pd.Series) -> pd.Series:
    """UTC timestamps as ISO 8601 text: whole seconds '2026-01-31T12:00:00Z', else with ms or µs."""
    micro = timestamps.dt.strftime("%Y-%m-%dT%H:%M:%S.%f")
    text = micro.str.replace(r"\.000000$", "", regex=True).str.replace(r"(\.\d{3})000$", r"\1", regex=True)
    return text + "Z"


def _check_header(source: RawSource) -> None:
    # Two columns of one name would make every later lookup return a frame, not a column.
    repeated = source.frame.columns[source.frame.columns.duplicated()]
    if len(repeated):
        raise InputError(f"{source.name}: column '{repeated[0]}' appears more than once in the header")


def _check_zone(zone: str) -> None:
    try:
        pd.Timestamp("2000-01-01").tz_localize(zone)
    except Exception as exc:  # unknown zone name (zoneinfo, pytz and dateutil raise different types)
        raise InputError(f"ingest.source_timezone: unknown time zone '{zone}' ({exc})") from None


# Unix time in s, ms, us or ns between 1973 and 2286, told apart by magnitude.
EPOCH_UNITS = [(1e17, "ns"), (1e14, "us"), (1e11, "ms"), (1e8, "s")]
EPOCH_NAME_HINTS = ("time", "date", "epoch")


def _epoch_unit(values: pd.Series) -> str:
    magnitude = float(np.nanmedian(np.abs(values.to_numpy(dtype=np.float64))))
    return next((unit for floor, unit in EPOCH_UNITS if magnitude >= floor), "s")


def _is_epoch(values: pd.Series) -> bool:
    """A numeric column whose values look like Unix time (seconds to nanoseconds since 1970)."""
    if not pd.api.types.is_numeric_dtype(values) or pd.api.types.is_bool_dtype(values) or values.notna().sum() == 0:
        return False
    return float(np.nanmin(np.abs(values.to_numpy(dtype=np.float64)))) >= 1e8


def _detect_timestamp_column(source: RawSource) -> str:
    for column in source.frame.columns:
        values = source.frame[column]
        if pd.api.types.is_datetime64_any_dtype(values):
            return column
        if any(hint in str(column).lower() for hint in EPOCH_NAME_HINTS) and _is_epoch(values):
            return column
        if pd.api.types.is_string_dtype(values) or values.dtype == object:
            sample = values.dropna().astype(str).head(50)
            # Not ``.all()``: one bad timestamp (text kept by pyarrow) is set aside as its row later.
            if len(sample) and pd.to_datetime(sample, errors="coerce", format="mixed", utc=True).notna().mean() > TIMESTAMP_SHARE:
                return column
    raise InputError(
        f"{source.name}: no timestamp column (no column parses as datetimes); "
        "name it with --timestamp-column or ingest.timestamp_column"
    )


def _detect_sensors(source: RawSource, ts_col: str, config: IngestConfig) -> list[str]:
    skip = {ts_col, config.label_column, *config.exclude_columns}
    sensors = [
        column
        for column in source.frame.columns
        if column not in skip
        and str(column).strip().lower() not in LABEL_LIKE_NAMES
        and _is_numeric_column(source.frame[column], config.decimal)
    ]
    if not sensors:
        raise InputError(
            f"{source.name}: no numeric sensor column (columns: {', '.join(map(str, source.frame.columns))})"
        )
    return sensors


def _is_numeric_column(values: pd.Series, decimal: str = ".") -> bool:
    if pd.api.types.is_bool_dtype(values):
        return False
    if pd.api.types.is_numeric_dtype(values):
        return True
    if pd.api.types.is_string_dtype(values) or values.dtype == object:
        present = values.dropna()
        if present.empty:
            return False
        parsed = pd.to_numeric(_decimal_point(present, decimal), errors="coerce")
        return parsed.notna().mean() >= NUMERIC_SHARE
    return False


def _normalise(
    source: RawSource, ts_col: str, sensors: list[str], config: IngestConfig, counts: dict[str, int]
) -> tuple[pd.DataFrame, pd.DataFrame, set[str]]:
    """One source -> (clean part, rejected rows, ignored column names)."""
    frame = source.frame
    n = len(frame)
    counts["rows_in"] += n
    wanted = [ts_col, *sensors] + ([config.label_column] if config.label_column else [])
    for column in wanted:
        if column not in frame.columns:
            kind = "timestamp" if column == ts_col else "label" if column == config.label_column else "sensor"
            raise InputError(
                f"{source.name}: {kind} column '{column}' not found "
                f"(columns: {', '.join(map(str, frame.columns))})"
            )
    ignored = {str(c) for c in frame.columns if c not in wanted and c not in config.exclude_columns}

    raw_ts = frame[ts_col]
    # Only a zone given in the config may resolve a file that mixes aware and naive timestamps.
    zone_given = "source_timezone" in config.model_fields_set
    timestamps, ts_reason = _parse_timestamps(raw_ts, source.name, ts_col, config.source_timezone, zone_given)
    reasons = pd.Series(ts_reason, index=frame.index, dtype=object)
    counts["unparseable_timestamp"] += int((reasons == "unparseable timestamp").sum())
    counts["ambiguous_time"] += int(reasons.notna().sum()) - int((reasons == "unparseable timestamp").sum())

    columns = {"source": source.name, "row": np.arange(n, dtype=np.int64) + source.row_offset, "timestamp": timestamps}
    for column in sensors:
        values, bad = _to_float(frame[column], config.decimal)
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
        labels, bad = _to_float(frame[config.label_column], config.decimal)
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
    return (part[~rejected_mask] if rejected_mask.any() else part), rejected, ignored


def _decimal_point(values: pd.Series, decimal: str) -> pd.Series:
    """Text values with a decimal comma rewritten to a point (pyarrow keeps a column with any text
    as text, so its numbers still carry the comma)."""
    if decimal == ".":
        return values
    return values.astype("string").str.replace(decimal, ".", regex=False)


def _to_float(values: pd.Series, decimal: str = ".") -> tuple[np.ndarray, np.ndarray]:
    """Column -> (float64 values, mask of cells that held text that is not a number)."""
    if pd.api.types.is_bool_dtype(values):
        return values.astype(float).to_numpy(), np.zeros(len(values), dtype=bool)
    if pd.api.types.is_numeric_dtype(values):
        if values.dtype == np.float64:
            return values.to_numpy(), np.zeros(len(values), dtype=bool)  # a view, not a copy
        return values.to_numpy(dtype=np.float64, na_value=np.nan), np.zeros(len(values), dtype=bool)
    parsed = pd.to_numeric(_decimal_point(values, decimal), errors="coerce").astype(np.float64)
    bad = (parsed.isna() & values.notna()).to_numpy()
    return parsed.to_numpy(), bad


def _parse_timestamps(values: pd.Series, name: str, column: str, zone: str, zone_given: bool = False) -> tuple[pd.Series, np.ndarray]:
    """Raw timestamp column -> (UTC timestamps, reason per row or None).

    A column mixing timestamps with and without a time zone is an error, unless ``zone_given``
    (``ingest.source_timezone`` set in the config): then the naive ones are read in ``zone``.
    """
    reasons = np.full(len(values), None, dtype=object)
    if pd.api.types.is_datetime64_any_dtype(values):
        parsed = values
        aware = parsed.dt.tz is not None
    elif _is_epoch(values):  # Unix time is UTC by definition
        parsed = pd.to_datetime(values, unit=_epoch_unit(values), utc=True, errors="coerce")
        aware = True
    else:
        text = values.astype("string").str.strip()
        has_zone = text.str.contains(_TZ_SUFFIX, na=False)
        aware = bool(has_zone.any())
        mixed = aware and not has_zone[text.notna()].all()
        if mixed and not zone_given:
            row = int(np.flatnonzero(~has_zone.to_numpy() & text.notna().to_numpy())[0])
            raise InputError(
                f"{name}: column '{column}' mixes timestamps with and without a time zone "
                f"(row {row + 1}: '{text.iloc[row]}'); make them consistent, or set ingest.source_timezone "
                "to the zone of the ones without"
            )
        if mixed:
            _check_zone(zone)
            naive = (~has_zone & text.notna()).to_numpy()
            parsed = pd.Series(pd.NaT, index=text.index, dtype="datetime64[ns, UTC]")
            parsed[has_zone.to_numpy()] = pd.to_datetime(text[has_zone.to_numpy()], errors="coerce", utc=True, format="mixed")
            local = pd.to_datetime(text[naive], errors="coerce", format="mixed")
            localized = local.dt.tz_localize(zone, ambiguous="NaT", nonexistent="NaT")
            parsed[naive] = localized.dt.tz_convert("UTC")
            reasons[np.flatnonzero(naive)[(local.notna() & localized.isna()).to_numpy()]] = f"ambiguous or nonexistent local time in {zone}"
        else:
            parsed = pd.to_datetime(text, errors="coerce", utc=aware)
            if parsed.isna().sum() > text.isna().sum():  # formats differ row to row
                parsed = pd.to_datetime(text, errors="coerce", utc=aware, format="mixed")
    if not aware:
        _check_zone(zone)
        parsed = parsed.dt.tz_localize(zone, ambiguous="NaT", nonexistent="NaT")
        ambiguous = parsed.isna().to_numpy() & values.notna().to_numpy()
        if not pd.api.types.is_datetime64_any_dtype(values):
            ambiguous &= pd.to_datetime(values.astype("string"), errors="coerce", format="mixed").notna().to_numpy()
        reasons[ambiguous] = f"ambiguous or nonexistent local time in {zone}"
    parsed = parsed.dt.tz_convert("UTC").dt.as_unit("ns")
    reasons[parsed.isna().to_numpy() & (reasons == None)] = "unparseable timestamp"  # noqa: E711
    return parsed, reasons


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


def missing_runs(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Start positions and lengths of the runs of True in a 1-D boolean array."""
    padded = np.concatenate([[False], mask, [False]]).astype(np.int8)
    edges = np.diff(padded)
    starts = np.flatnonzero(edges == 1)
    ends = np.flatnonzero(edges == -1)
    return starts, ends - starts


def _repair_missing(
    table: pd.DataFrame, sensors: list[str], max_fill_rows: int
) -> tuple[pd.DataFrame, pd.DataFrame, dict[str, int], dict[str, int]]:
    """Forward-fill short missing runs; set aside rows in long ones or with no earlier value."""
    n = len(table)
    too_long = np.zeros(n, dtype=bool)
    reasons = np.full(n, None, dtype=object)
    values: dict[str, np.ndarray] = {}
    fills: dict[str, np.ndarray] = {}
    missing = {}
    for column in sensors:
        mask = table[column].isna().to_numpy()
        missing[column] = int(mask.sum())
        if not missing[column]:
            continue
        values[column] = table[column].to_numpy(dtype=np.float64, copy=True)
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
    repaired = np.logical_or.reduce([np.zeros(n, dtype=bool), *fills.values()]) & ~too_long
    # Copy-on-write: the new columns below never touch the caller's frame.
    out = table[~too_long] if too_long.any() else table.copy(deep=False)
    for column in values:
        out[column] = values[column][~too_long]
    out["_repaired"] = repaired[~too_long]
    gone = table[too_long]
    rejected = pd.DataFrame(
        {
            "source": gone["source"],
            "row": gone["row"],
            "timestamp": iso_utc(gone["timestamp"]),
            "status": reasons[too_long],
        }
    )
    return out.reset_index(drop=True), rejected, filled, missing
