"""Column roles and parsing: which column holds the time, which hold sensors, and how text
becomes UTC timestamps and floats (pure functions on pandas columns)."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd

from pipeline.config import IngestConfig
from pipeline.data.files import RawSource
from pipeline.data.timeformat import TimeFormat, parse_with
from pipeline.errors import InputError

# Column names that hold labels rather than measurements; never auto-detected as sensors.
LABEL_LIKE_NAMES = {"anomaly", "anomalies", "label", "labels", "is_anomaly", "changepoint", "target", "fault"}
_TZ_SUFFIX = re.compile(r"(?:Z|[+-]\d{2}:?\d{2})$")
FLOAT32_MAX = float(np.finfo(np.float32).max)
# A text column counts as a sensor column when at least this share of its values are numbers.
NUMERIC_SHARE = 0.9
# A text column counts as the timestamp column when more than this share of its values parse as
# datetimes: one unparseable timestamp must set aside its row, not hide the whole column.
TIMESTAMP_SHARE = 0.5


def check_zone(zone: str) -> None:
    try:
        pd.Timestamp("2000-01-01").tz_localize(zone)
    except Exception as exc:  # unknown zone name (zoneinfo, pytz and dateutil raise different types)
        raise InputError(f"ingest.source_timezone: unknown time zone '{zone}' ({exc})") from None


# Unix time in s, ms, us or ns between 1973 and 2286, told apart by magnitude.
EPOCH_UNITS = [(1e17, "ns"), (1e14, "us"), (1e11, "ms"), (1e8, "s")]
EPOCH_NAME_HINTS = ("time", "date", "epoch")


def epoch_unit(values: pd.Series) -> str:
    magnitude = float(np.nanmedian(np.abs(values.to_numpy(dtype=np.float64))))
    return next((unit for floor, unit in EPOCH_UNITS if magnitude >= floor), "s")


def is_epoch(values: pd.Series) -> bool:
    """A numeric column whose values look like Unix time (seconds to nanoseconds since 1970)."""
    if not pd.api.types.is_numeric_dtype(values) or pd.api.types.is_bool_dtype(values) or values.notna().sum() == 0:
        return False
    return float(np.nanmin(np.abs(values.to_numpy(dtype=np.float64)))) >= 1e8


def detect_timestamp_column(source: RawSource) -> str:
    for column in source.frame.columns:
        values = source.frame[column]
        if pd.api.types.is_datetime64_any_dtype(values):
            return column
        if any(hint in str(column).lower() for hint in EPOCH_NAME_HINTS) and is_epoch(values):
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


def detect_sensors(source: RawSource, ts_col: str, config: IngestConfig) -> list[str]:
    skip = {ts_col, config.label_column, *config.exclude_columns}
    sensors = [
        column
        for column in source.frame.columns
        if column not in skip
        and str(column).strip().lower() not in LABEL_LIKE_NAMES
        and is_numeric_column(source.frame[column], config.decimal)
    ]
    if not sensors:
        raise InputError(f"{source.name}: no numeric sensor column (columns: {', '.join(map(str, source.frame.columns))})")
    return sensors


def is_numeric_column(values: pd.Series, decimal: str = ".") -> bool:
    if pd.api.types.is_bool_dtype(values):
        return False
    if pd.api.types.is_numeric_dtype(values):
        return True
    if pd.api.types.is_string_dtype(values) or values.dtype == object:
        present = values.dropna()
        if present.empty:
            return False
        parsed = pd.to_numeric(decimal_point(present, decimal), errors="coerce")
        return parsed.notna().mean() >= NUMERIC_SHARE
    return False


def decimal_point(values: pd.Series, decimal: str) -> pd.Series:
    """Text values with a decimal comma rewritten to a point (pyarrow keeps a column with any text
    as text, so its numbers still carry the comma)."""
    if decimal == ".":
        return values
    return values.astype("string").str.replace(decimal, ".", regex=False)


def to_float(values: pd.Series, decimal: str = ".") -> tuple[np.ndarray, np.ndarray]:
    """Column -> (float64 values, mask of cells that held text that is not a number)."""
    if pd.api.types.is_bool_dtype(values):
        return values.astype(float).to_numpy(), np.zeros(len(values), dtype=bool)
    if pd.api.types.is_numeric_dtype(values):
        if values.dtype == np.float64:
            return values.to_numpy(), np.zeros(len(values), dtype=bool)  # a view, not a copy
        return values.to_numpy(dtype=np.float64, na_value=np.nan), np.zeros(len(values), dtype=bool)
    parsed = pd.to_numeric(decimal_point(values, decimal), errors="coerce").astype(np.float64)
    bad = (parsed.isna() & values.notna()).to_numpy()
    return parsed.to_numpy(), bad


def parse_timestamps(
    values: pd.Series,
    name: str,
    column: str,
    zone: str,
    zone_given: bool = False,
    time_format: TimeFormat | None = None,
) -> tuple[pd.Series, np.ndarray]:
    """Raw timestamp column -> (UTC timestamps, reason per row or None).

    A column mixing timestamps with and without a time zone is an error, unless ``zone_given``
    (``ingest.source_timezone`` set in the config): then the naive ones are read in ``zone``.
    A text column is read with ``time_format`` (``pipeline.data.timeformat.decide_format``) when
    it has a pattern: a value that does not fit it is set aside, never read another way.
    """
    reasons = np.full(len(values), None, dtype=object)
    pattern = time_format.pattern if time_format is not None else None
    unparseable = "unparseable timestamp" + (f": does not fit the column's format '{pattern}'" if pattern else "")
    if pd.api.types.is_datetime64_any_dtype(values):
        parsed = values
        aware = parsed.dt.tz is not None
    elif is_epoch(values):  # Unix time is UTC by definition
        parsed = pd.to_datetime(values, unit=epoch_unit(values), utc=True, errors="coerce")
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
            check_zone(zone)
            naive = (~has_zone & text.notna()).to_numpy()
            parsed = pd.Series(pd.NaT, index=text.index, dtype="datetime64[ns, UTC]")
            parsed[has_zone.to_numpy()] = pd.to_datetime(
                text[has_zone.to_numpy()],
                errors="coerce",
                utc=True,
                format="mixed",
                dayfirst=bool(time_format and time_format.dayfirst),
            )
            local = pd.to_datetime(
                text[naive], errors="coerce", format="mixed", dayfirst=bool(time_format and time_format.dayfirst)
            )
            localized = local.dt.tz_localize(zone, ambiguous="NaT", nonexistent="NaT")
            parsed[naive] = localized.dt.tz_convert("UTC")
            reasons[np.flatnonzero(naive)[(local.notna() & localized.isna()).to_numpy()]] = (
                f"ambiguous or nonexistent local time in {zone}"
            )
        elif pattern:
            parsed = parse_with(text, time_format, utc=aware)
        else:
            parsed = pd.to_datetime(text, errors="coerce", utc=aware)
            if parsed.isna().sum() > text.isna().sum():  # formats differ row to row
                parsed = pd.to_datetime(text, errors="coerce", utc=aware, format="mixed")
    if not aware:
        check_zone(zone)
        parsed = parsed.dt.tz_localize(zone, ambiguous="NaT", nonexistent="NaT")
        ambiguous = parsed.isna().to_numpy() & values.notna().to_numpy()
        if pattern and not pd.api.types.is_datetime64_any_dtype(values):
            ambiguous &= parse_with(values.astype("string").str.strip(), time_format, utc=False).notna().to_numpy()
        elif not pd.api.types.is_datetime64_any_dtype(values):
            ambiguous &= pd.to_datetime(values.astype("string"), errors="coerce", format="mixed").notna().to_numpy()
        reasons[ambiguous] = f"ambiguous or nonexistent local time in {zone}"
    parsed = parsed.dt.tz_convert("UTC").dt.as_unit("ns")
    reasons[parsed.isna().to_numpy() & (reasons == None)] = unparseable  # noqa: E711
    return parsed, reasons
