"""One timestamp format per column: numeric dates such as ``02.01.2026`` are read day-first or
month-first as the whole column decides, never value by value.

``decide_format`` looks at every value of a text column once (pyarrow's regex kernel, no Python
object per value): a first field above 12 makes the column day-first, a second field above 12
month-first; values that fit both readings with nothing to decide stop with an ``InputError``
naming the settings that resolve it (``ingest.dayfirst``, ``ingest.timestamp_format``). Year-first
columns (ISO 8601 ``YYYY-MM-DD...``) are unambiguous and keep pandas' own reading.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from pipeline.config import IngestConfig
from pipeline.errors import InputError

# day-or-month, separator, month-or-day, same separator, year; then the time part.
NUMERIC_DATE = r"^\s*(?P<first>\d{1,2})(?P<sep>[./-])(?P<second>\d{1,2})[./-](?P<year>\d{2,4})(?P<rest>.*)$"
_NUMERIC_DATE = re.compile(NUMERIC_DATE)
_CLOCK_12H = re.compile(r"^(?P<lead>[ T]+)\d{1,2}:\d{2}(?P<seconds>:\d{2})?\s*[AaPp][Mm]$")
ISO_DATE = "%Y-%m-%d"


@dataclass(frozen=True)
class TimeFormat:
    """How a text timestamp column is read.

    ``pattern`` is the strftime pattern every value must fit (None: pandas' own inference, as
    for ISO 8601); ``dayfirst`` the order of a numeric date (None when it has none);
    ``described`` what the quality report shows.
    """

    pattern: str | None
    dayfirst: bool | None
    described: str


ISO_FORMAT = TimeFormat(None, None, "ISO 8601 (year first)")


def time_pattern(rest: str) -> str | None:
    """strftime pattern of what follows the date in a value (' 00:00' -> ' %H:%M'); None if unknown."""
    clock = _CLOCK_12H.match(rest)
    if clock:
        return f"{clock['lead']}%I:%M{':%S' if clock['seconds'] else ''} %p"
    from pandas.tseries.api import guess_datetime_format

    guessed = guess_datetime_format("2000-01-01" + rest)
    return guessed[len(ISO_DATE) :] if guessed and guessed.startswith(ISO_DATE) else None


def date_pattern(example: str, dayfirst: bool) -> str | None:
    """The strftime pattern of a numeric-date value read day-first or month-first."""
    found = _NUMERIC_DATE.match(example)
    if not found:
        return None
    rest = time_pattern(found["rest"])
    if rest is None:
        return None
    sep, year = found["sep"], "%Y" if len(found["year"]) == 4 else "%y"
    order = f"%d{sep}%m" if dayfirst else f"%m{sep}%d"
    return f"{order}{sep}{year}{rest}"


def decide_format(text: pd.Series, name: str, column: str, config: IngestConfig, dayfirst_hint: bool | None = None) -> TimeFormat:
    """The one format of a text timestamp column (stripped text, missing values as NA).

    Args:
        text: the column's values.
        name, column: file and column, for the error message.
        config: ``timestamp_format`` (used exactly) and ``dayfirst`` win over the data.
        dayfirst_hint: the order the model's training data showed, used only when the column's
            own values do not decide (a file of the 1st to 12th of a month).

    Raises:
        InputError: the values fit both readings, nothing decides, and no setting says which.
    """
    if config.timestamp_format:
        return TimeFormat(config.timestamp_format, None, f"{config.timestamp_format} (ingest.timestamp_format)")
    present = text.dropna()
    if present.empty or not _NUMERIC_DATE.match(str(present.iloc[0])):
        return ISO_FORMAT
    fields = pc.extract_regex(pa.array(present.to_numpy(dtype=object), type=pa.string()), NUMERIC_DATE)
    valid = fields.is_valid().to_numpy(zero_copy_only=False)
    first = _numbers(fields.field("first"), valid)
    second = _numbers(fields.field("second"), valid)
    values = present.to_numpy(dtype=object)
    day_first_rows, month_first_rows = np.flatnonzero(first > 12), np.flatnonzero(second > 12)
    if config.dayfirst is not None:
        dayfirst, why = config.dayfirst, "ingest.dayfirst"
        example = values[0]
    elif day_first_rows.size:
        dayfirst, example = True, values[day_first_rows[0]]
        why = f"'{example}' has a day above 12"
    elif month_first_rows.size:
        dayfirst, example = False, values[month_first_rows[0]]
        why = f"'{example}' has a day above 12"
    else:
        differ = np.flatnonzero((first != second) & valid)
        if differ.size == 0:  # day and month equal in every value: both readings agree
            dayfirst, example, why = True, values[0], "day and month are equal in every value"
        elif dayfirst_hint is not None:
            dayfirst, example, why = dayfirst_hint, values[0], "as in the model's training data"
        else:
            row = int(present.index[differ[0]]) + 1 if isinstance(present.index, pd.RangeIndex) else int(differ[0]) + 1
            example = values[differ[0]]
            raise InputError(
                f"{name}: column '{column}' (row {row}: '{example}'): dates fit both day-first and month-first "
                "and no value decides (none has a day above 12); set ingest.dayfirst: true (day first) or false "
                f"(month first), or ingest.timestamp_format (e.g. '{date_pattern(str(example), True) or '%d.%m.%Y %H:%M'}')"
            )
    pattern = date_pattern(str(example), dayfirst)
    if pattern is None:
        raise InputError(
            f"{name}: column '{column}': cannot tell the format of '{example}'; set ingest.timestamp_format (a strftime pattern)"
        )
    order = "day-first" if dayfirst else "month-first"
    return TimeFormat(pattern, dayfirst, f"{pattern} ({order}: {why})")


def _numbers(strings: pa.Array, valid: np.ndarray) -> np.ndarray:
    out = np.zeros(len(valid), dtype=np.int64)
    if valid.any():
        out[valid] = pc.cast(strings.filter(pa.array(valid)), pa.int64()).to_numpy()
    return out


def parse_with(text: pd.Series, time_format: TimeFormat, utc: bool) -> pd.Series:
    """Parse every value with the column's one format (a value that does not fit becomes NaT)."""
    return pd.to_datetime(text, format=time_format.pattern, errors="coerce", utc=utc)
