"""UTC time as the reports write it: one formatter for every timestamp the product prints.

A timestamp is written as ISO 8601 in UTC with a ``Z``, in the coarsest of whole seconds,
milliseconds or microseconds that shows it exactly: ``2026-01-31T12:00:00Z``,
``2026-01-31T12:00:00.250Z``, ``2026-01-31T12:00:00.000125Z``.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

NAT = np.iinfo(np.int64).min  # pandas' NaT as int64 nanoseconds
_UNITS = (("s", 1_000_000_000), ("ms", 1_000_000), ("us", 1_000))


def utc_ns(timestamps: pd.Series) -> np.ndarray:
    """Nanoseconds since the epoch (UTC) of a datetime column, as int64 (NaT as ``NAT``)."""
    series = pd.to_datetime(timestamps, utc=True)
    return series.dt.as_unit("ns").array.asi8.astype(np.int64, copy=False)


def format_utc(nanoseconds: np.ndarray) -> pa.Array:
    """ISO 8601 UTC text of int64 nanoseconds since the epoch (``NAT`` becomes null), shape (n,).

    Vectorised for millions of rows: one pyarrow pass per precision present.
    """
    ns = np.asarray(nanoseconds, dtype=np.int64)
    missing = ns == NAT
    unit = np.full(ns.size, len(_UNITS) - 1, dtype=np.int8)
    for i in reversed(range(len(_UNITS) - 1)):
        unit[ns % _UNITS[i][1] == 0] = i
    if ns.size == 0 or (not missing.any() and (unit == unit[0]).all()):  # the usual case: one pass
        return _strftime(ns, _UNITS[unit[0]][0] if ns.size else "s", None)
    parts, position = [], np.empty(ns.size, dtype=np.int64)
    done = 0
    for i, (name, _) in enumerate(_UNITS):
        pick = np.flatnonzero(unit == i)
        if pick.size:
            parts.append(_strftime(ns[pick], name, missing[pick]))
            position[pick] = np.arange(done, done + pick.size)
            done += pick.size
    return pa.concat_arrays(parts).take(pa.array(position))


def _strftime(ns: np.ndarray, unit: str, missing: np.ndarray | None) -> pa.Array:
    array = pa.array(ns, pa.int64(), mask=missing).cast(pa.timestamp("ns", tz="UTC"))
    return pc.strftime(array.cast(pa.timestamp(unit, tz="UTC"), safe=False), format="%Y-%m-%dT%H:%M:%SZ")


def iso_utc(timestamps: pd.Series) -> pd.Series:
    """A datetime column as ISO 8601 UTC text (``format_utc``), NaT as missing, same index."""
    text = format_utc(utc_ns(timestamps)).to_pandas()
    return pd.Series(text.to_numpy(dtype=object), index=timestamps.index)


def iso_ns(nanoseconds: int) -> str:
    """One timestamp (int nanoseconds since the epoch) as ISO 8601 UTC text."""
    return format_utc(np.asarray([nanoseconds], dtype=np.int64))[0].as_py()
