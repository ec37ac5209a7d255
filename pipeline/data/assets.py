"""Fleets: which asset each row belongs to, asset ids made safe, and each asset's normal periods.

An asset id comes from data (an asset column, or the first folder level under an input
folder), so it is never trusted as a name on disk or in the registry:

- an id that is empty (after trimming white space) or longer than ``MAX_ASSET_ID`` characters
  is refused: its rows are set aside with the reason (``asset_problem``);
- any other id is kept as written in every table (``asset`` columns, tags), and ``asset_key``
  gives the name used for registry entries and artifacts: the id itself when it is made only
  of ASCII letters, digits, ``.``, ``_`` and ``-`` (is not ``.`` or ``..`` and has at most
  ``MAX_KEY`` characters), else its first 48 safe characters with every other run replaced by
  ``_``, followed by ``~`` and 8 hex digits of the id's sha256 (``~`` never appears in a plain
  key, so two ids never share a key).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.data.files import RawSource
from pipeline.errors import InputError
from pipeline.utc import utc_ns

MAX_ASSET_ID = 128
MAX_KEY = 64  # longer ids are cut and given the hash
_SAFE = re.compile(r"[A-Za-z0-9._-]+")
_UNSAFE_RUN = re.compile(r"[^A-Za-z0-9._-]+")


def asset_problem(asset: object) -> str | None:
    """Why an asset id cannot be used, or None when it can."""
    text = "" if asset is None or (isinstance(asset, float) and np.isnan(asset)) else str(asset).strip()
    if not text:
        return "empty asset id"
    if len(text) > MAX_ASSET_ID:
        return f"asset id longer than {MAX_ASSET_ID} characters"
    return None


def asset_key(asset: str) -> str:
    """A name for the asset that is safe in a path, an artifact name and a registered model name."""
    if _SAFE.fullmatch(asset) and asset not in (".", "..") and len(asset) <= MAX_KEY:
        return asset
    stem = _UNSAFE_RUN.sub("_", asset).strip(".") or "_"
    return f"{stem[:48]}~{hashlib.sha256(asset.encode()).hexdigest()[:8]}"


@dataclass
class AssetSplit:
    """Raw sources regrouped by asset, and the rows no asset could be named for."""

    sources: dict[str, list[RawSource]]  # asset -> its pieces of the input files, in file order
    rejected: pd.DataFrame  # source, row, timestamp (as text), status; asset in column "asset"


def split_by_column(sources: Iterable[RawSource], column: str) -> AssetSplit:
    """Rows of many assets in one table: each file's rows regrouped by the value of ``column``.

    Raises:
        InputError: a file has no such column.
    """
    by_asset: dict[str, list[RawSource]] = {}
    rejected = []
    for source in sources:
        if column not in source.frame.columns:
            raise InputError(
                f"{source.name}: asset column '{column}' not found (columns: {', '.join(map(str, source.frame.columns))})"
            )
        ids = source.frame[column]
        rows = source.data_rows()
        text = ids.astype("string").str.strip()
        problems = text.map(asset_problem, na_action=None).where(ids.notna(), "empty asset id")
        bad = problems.notna().to_numpy()
        if bad.any():
            rejected.append(
                pd.DataFrame(
                    {
                        "asset": text[bad].fillna("").to_numpy(dtype=object),
                        "source": source.name,
                        "row": rows[bad],
                        "timestamp": "",
                        "status": problems[bad].to_numpy(dtype=object),
                    }
                )
            )
        frame = source.frame.drop(columns=[column])
        keep = ~bad
        for asset, positions in pd.Series(np.flatnonzero(keep)).groupby(text[keep].to_numpy(), sort=False):
            picked = positions.to_numpy()
            piece = frame.iloc[picked].reset_index(drop=True)
            by_asset.setdefault(str(asset), []).append(RawSource(source.name, piece, source.digest, row_numbers=rows[picked]))
    return AssetSplit(by_asset, _rejected_frame(rejected))


def split_by_folder(files: list[tuple[str, Path]]) -> tuple[dict[str, list[tuple[str, Path]]], list[tuple[str, str]]]:
    """One folder per asset: a file named ``ASSET/...`` (relative to an input folder) belongs to ASSET.

    Returns:
        asset -> its files in name order, and (file, reason) for the files no asset names.
    """
    by_asset: dict[str, list[tuple[str, Path]]] = {}
    unplaced = []
    for name, path in files:
        parts = Path(name).parts
        if len(parts) < 2:
            unplaced.append((name, "not in an asset folder (with --asset-folders, files go in <input>/<asset>/)"))
            continue
        problem = asset_problem(parts[0])
        if problem:
            unplaced.append((name, problem))
            continue
        by_asset.setdefault(parts[0].strip(), []).append((name, path))
    return by_asset, unplaced


def _rejected_frame(parts: list[pd.DataFrame]) -> pd.DataFrame:
    return pd.concat(parts, ignore_index=True) if parts else empty_rejected()


def empty_rejected() -> pd.DataFrame:
    """No set-aside rows: the columns ``asset, source, row, timestamp, status``."""
    return pd.DataFrame({c: pd.Series([], dtype=object) for c in ("asset", "source", "timestamp", "status")}).assign(
        row=pd.Series([], dtype=np.int64)
    )[["asset", "source", "row", "timestamp", "status"]]


@dataclass(frozen=True)
class NormalPeriods:
    """Each asset's normal periods: UTC nanoseconds [start, end)."""

    periods: dict[str, list[tuple[int, int]]]

    def for_asset(self, asset: str) -> list[tuple[int, int]]:
        return self.periods.get(asset, [])

    def mask(self, asset: str, timestamps: pd.Series) -> np.ndarray | None:
        """Whether each timestamp lies in a period of the asset; None when it has none."""
        spans = self.for_asset(asset)
        if not spans:
            return None
        ns = utc_ns(timestamps)
        inside = np.zeros(len(ns), dtype=bool)
        for start, end in spans:
            inside |= (ns >= start) & (ns < end)
        return inside


def read_normal_periods(path: Path) -> NormalPeriods:
    """A CSV ``asset,start,end`` (ISO 8601, UTC unless an offset is given), several rows per asset allowed.

    Raises:
        InputError: the file is missing, lacks a column, or a row does not parse (file, row, column named).
    """
    if not path.is_file():
        raise InputError(f"--normal-periods {path}: file not found")
    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise InputError(f"{path}: not a readable CSV ({str(exc).splitlines()[0]})") from None
    missing = [c for c in ("asset", "start", "end") if c not in frame.columns]
    if missing:
        raise InputError(f"{path}: column '{missing[0]}' not found (expected asset,start,end)")
    periods: dict[str, list[tuple[int, int]]] = {}
    for row, record in enumerate(frame.itertuples(index=False), start=1):
        asset = str(record.asset).strip()
        bounds = []
        for column in ("start", "end"):
            value = getattr(record, column)
            try:
                stamp = pd.Timestamp(value)
                if pd.isna(stamp):
                    raise ValueError
            except ValueError:
                raise InputError(f"{path}: row {row}, column '{column}': cannot parse '{value}' as a timestamp") from None
            bounds.append((stamp.tz_localize("UTC") if stamp.tzinfo is None else stamp.tz_convert("UTC")).value)
        if asset_problem(asset) or bounds[0] >= bounds[1]:
            why = asset_problem(asset) or "start is not before end"
            raise InputError(f"{path}: row {row}: {why}")
        periods.setdefault(asset, []).append((bounds[0], bounds[1]))
    return NormalPeriods(periods)
