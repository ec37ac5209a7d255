"""Loading a fleet: files -> each asset's validated stream, and the rows no asset is named for.

Each asset is validated on its own, as one stream: its own sort order, duplicates, gaps and
repairs; one asset's rows never change another's.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from pipeline.config import IngestConfig
from pipeline.data.assets import split_by_column, split_by_folder
from pipeline.data.files import RawSource, read_source
from pipeline.data.ingest import validate
from pipeline.data.loading import LoadedInput
from pipeline.data.quality import quality_report
from pipeline.errors import InputError

log = logging.getLogger(__name__)


@dataclass
class FleetInput:
    """The raw input regrouped by asset."""

    pieces: dict[str, list[RawSource]]  # asset -> its rows of each file, in file order
    rejected: pd.DataFrame  # rows whose asset id cannot be used: asset, source, row, timestamp, status
    unplaced: list[tuple[str, str]] = field(default_factory=list)  # (file, reason): files unread or no asset names
    digests: dict[str, str] = field(default_factory=dict)  # source name -> sha256 of the file
    sources: list[str] = field(default_factory=list)  # in the order given

    @property
    def assets(self) -> list[str]:
        return sorted(self.pieces)


def read_fleet(files: list[tuple[str, Path]], ingest: IngestConfig) -> FleetInput:
    """Read the files and regroup their rows by asset (``ingest.asset_column`` or ``ingest.asset_folders``).

    A file that cannot be read, or lacks the asset column, is listed in ``unplaced`` with the
    reason; the other files go on.
    """
    names = [name for name, _ in files]
    unplaced: list[tuple[str, str]] = []
    if ingest.asset_folders:
        by_folder, unplaced = split_by_folder(files)
        pieces: dict[str, list[RawSource]] = {}
        for asset, asset_files in by_folder.items():
            read = [r for r in (_read(name, path, ingest, unplaced) for name, path in asset_files) if r is not None]
            if read:
                pieces[asset] = read
        digests = {piece.name: piece.digest for asset_pieces in pieces.values() for piece in asset_pieces}
        return FleetInput(pieces, split_by_column([], "").rejected, unplaced, digests, names)
    raw = [r for r in (_read(name, path, ingest, unplaced) for name, path in files) if r is not None]
    usable = []
    for source in raw:
        if ingest.asset_column in source.frame.columns:
            usable.append(source)
        else:
            unplaced.append((source.name, f"asset column '{ingest.asset_column}' not found"))
    split = split_by_column(usable, ingest.asset_column)
    return FleetInput(split.sources, split.rejected, unplaced, {r.name: r.digest for r in usable}, names)


def _read(name: str, path: Path, ingest: IngestConfig, unplaced: list[tuple[str, str]]) -> RawSource | None:
    try:
        return read_source(name, path, ingest)
    except InputError as exc:
        head, sep, rest = str(exc).partition(": ")
        unplaced.append((name, rest if sep and head.endswith(name) else str(exc)))
        return None


def validate_asset(
    asset: str,
    pieces: list[RawSource],
    ingest: IngestConfig,
    sensors: list[str] | None = None,
    timestamp_column: str | None = None,
    **hints,
) -> LoadedInput:
    """One asset's rows as one validated stream with its quality report (``hints``: a model's, as ``validate`` takes them).

    Raises:
        InputError: naming the asset, when its rows cannot make a stream (a column missing, no usable row).
    """
    try:
        result = validate(pieces, ingest, sensors=sensors, timestamp_column=timestamp_column, **hints)
    except InputError as exc:
        raise InputError(f"asset {asset}: {exc}") from None
    return LoadedInput(
        result, quality_report(result, ingest.flatline_rows), {p.name: p.digest for p in pieces}, [p.name for p in pieces]
    )


def set_aside_whole(asset: str, pieces: list[RawSource], reason: str) -> pd.DataFrame:
    """Every row of an asset that cannot be scored, as set-aside rows with the reason."""
    frames = [
        pd.DataFrame({"asset": asset, "source": p.name, "row": p.data_rows(), "timestamp": "", "status": reason}) for p in pieces
    ]
    return (
        pd.concat(frames, ignore_index=True)
        if frames
        else pd.DataFrame(columns=["asset", "source", "row", "timestamp", "status"])
    )
