"""Loading a fleet: files -> each asset's validated stream, and the rows no asset is named for.

Each asset is validated on its own, as one stream: its own sort order, duplicates, gaps and
repairs; one asset's rows never change another's.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import pickle
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from pipeline.config import IngestConfig
from pipeline.data.assets import empty_rejected, split_by_column, split_by_folder
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

    def problems(self) -> list[str]:
        """One line per file no asset is named for, and one for the rows whose asset id cannot be used."""
        lines = [f"{name}: {reason}" for name, reason in self.unplaced]
        if len(self.rejected):
            lines.append(f"{len(self.rejected)} row(s) set aside: {self.rejected['status'].value_counts().to_dict()}")
        return lines


def read_fleet(files: list[tuple[str, Path]], ingest: IngestConfig) -> FleetInput:
    """Read the files and regroup their rows by asset (``regroup``); a file that cannot be read is
    listed in ``unplaced`` with the reason, the other files go on."""
    unreadable: list[tuple[str, str]] = []
    raw = [r for r in (_read(name, path, ingest, unreadable) for name, path in files) if r is not None]
    fleet = regroup(raw, ingest)
    fleet.unplaced[:0] = unreadable
    fleet.sources = [name for name, _ in files]
    return fleet


def fleet_waves(
    files: list[tuple[str, Path]], ingest: IngestConfig, assets_per_wave: int, only: Iterable[str] | None = None
) -> Iterator[FleetInput]:
    """The fleet's input a few assets at a time, in asset order (each wave a ``FleetInput``; the
    first also carries the rows and files no asset is named for). ``only``: these assets alone.

    Memory follows the wave, not the fleet. With asset folders a wave reads only its own files.
    With an asset column every file must be read before any asset is complete, so each file is
    read once, split by asset and its pieces spilled to a private temporary folder; a wave reads
    its assets' pieces back. Peak memory: the largest file, or the largest wave.
    """
    with tempfile.TemporaryDirectory(prefix="fleet-pieces-") as spill:
        layout = _folder_layout(files) if ingest.asset_folders else _spilled_layout(files, ingest, Path(spill))
        assets = sorted(layout.files if only is None else set(layout.files) & set(only))
        for start in range(0, max(len(assets), 1), assets_per_wave):
            wave = layout.wave(assets[start : start + assets_per_wave], ingest)
            if start == 0:
                wave.unplaced[:0] = layout.unplaced
                wave.rejected = layout.rejected
            yield wave


def read_asset(files: list[tuple[str, Path]], ingest: IngestConfig, asset: str) -> list[RawSource] | None:
    """One asset's rows of the files (None when they hold none), without holding the others'."""
    with contextlib.closing(fleet_waves(files, ingest, 1, only=[asset])) as waves:
        return next(waves).pieces.get(asset)


@dataclass
class _Layout:
    """Where each asset's rows are: its files (asset folders) or its spilled pieces (an asset column)."""

    files: dict[str, list]  # asset -> [(name, path)] of its files, or the paths of its spilled pieces
    unplaced: list[tuple[str, str]]
    rejected: pd.DataFrame
    digests: dict[str, str]
    sources: list[str]
    spilled: bool

    def wave(self, assets: list[str], ingest: IngestConfig) -> FleetInput:
        if not self.spilled:
            wave = read_fleet([f for asset in assets for f in self.files[asset]], ingest)
            wave.sources = self.sources
            return wave
        pieces = {asset: [_load_piece(path) for path in self.files[asset]] for asset in assets}
        return FleetInput(pieces, empty_rejected(), [], self.digests, self.sources)


def _folder_layout(files: list[tuple[str, Path]]) -> _Layout:
    by_folder, unplaced = split_by_folder(files)
    return _Layout(by_folder, unplaced, empty_rejected(), {}, [name for name, _ in files], spilled=False)


def _spilled_layout(files: list[tuple[str, Path]], ingest: IngestConfig, spill: Path) -> _Layout:
    """Read each file once, split it by asset and spill the pieces: only one file is held at a time."""
    unplaced: list[tuple[str, str]] = []
    by_asset: dict[str, list[Path]] = {}
    rejected, digests, numbers = [], {}, itertools.count()
    for name, path in files:
        source = _read(name, path, ingest, unplaced)
        if source is None:
            continue
        split = regroup([source], ingest)
        unplaced += split.unplaced
        rejected.append(split.rejected)
        digests.update(split.digests)
        for asset, pieces in split.pieces.items():
            for piece in pieces:
                target = spill / f"{next(numbers)}.pickle"
                # Pickled, not Arrow: a raw piece holds columns as read (mixed text and numbers
                # before validation), which must come back exactly; the file is ours and temporary.
                target.write_bytes(pickle.dumps(piece, protocol=pickle.HIGHEST_PROTOCOL))
                by_asset.setdefault(asset, []).append(target)
    rejected = pd.concat([f for f in rejected if len(f)] or [empty_rejected()], ignore_index=True)
    return _Layout(by_asset, unplaced, rejected, digests, [name for name, _ in files], spilled=True)


def _load_piece(path: Path) -> RawSource:
    return pickle.loads(path.read_bytes())


def regroup(sources: list[RawSource], ingest: IngestConfig) -> FleetInput:
    """Files as read -> their rows by asset (``ingest.asset_column`` or ``ingest.asset_folders``; pure).

    A file that lacks the asset column, or lies in no asset folder, is listed in ``unplaced``.
    """
    digests = {source.name: source.digest for source in sources}
    names = [source.name for source in sources]
    if ingest.asset_folders:
        by_folder, unplaced = split_by_folder([(source.name, Path(source.name)) for source in sources])
        by_name = {source.name: source for source in sources}
        pieces = {asset: [by_name[name] for name, _ in asset_files] for asset, asset_files in by_folder.items()}
        return FleetInput(pieces, empty_rejected(), unplaced, digests, names)
    usable, unplaced = [], []
    for source in sources:
        if ingest.asset_column in source.frame.columns:
            usable.append(source)
        else:
            unplaced.append((source.name, f"asset column '{ingest.asset_column}' not found"))
    split = split_by_column(usable, ingest.asset_column)
    return FleetInput(split.sources, split.rejected, unplaced, digests, names)


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
