"""The one atomic writer: every file goes through a temporary file in its folder, is flushed,
fsynced and renamed into place, so no reader ever sees a partial file."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import BinaryIO

import pandas as pd
import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq

from pipeline.store.checkpoints import checkpoint

PARQUET_ROW_GROUP = 1_000_000  # rows converted to Arrow and written at a time


@contextlib.contextmanager
def atomic_file(path: Path, before_rename: str | None = None) -> Iterator[BinaryIO]:
    """A binary handle whose content replaces ``path`` only when the block ends without error.

    ``before_rename`` names a test checkpoint between the complete temporary file and the rename.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    handle = tempfile.NamedTemporaryFile(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp", delete=False)
    tmp = Path(handle.name)
    try:
        with handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        if before_rename:
            checkpoint(before_rename)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # temporary files are owner-only; reports are for readers too
        os.replace(tmp, path)
        fsync_dir(path.parent)
    finally:
        tmp.unlink(missing_ok=True)


def write_bytes(data: bytes, path: Path, before_rename: str | None = None) -> Path:
    with atomic_file(path, before_rename) as handle:
        handle.write(data)
    return path


def write_text(text: str, path: Path) -> Path:
    return write_bytes(text.encode(), path)


def write_csv_batches(batches: Iterable[pa.RecordBatch], schema: pa.Schema, path: Path) -> Path:
    """Record batches, produced one at a time, as one CSV (only one batch's text is held)."""
    with atomic_file(path) as handle:
        with pa_csv.CSVWriter(handle, schema, write_options=pa_csv.WriteOptions(quoting_style="needed")) as writer:
            for batch in batches:
                writer.write_batch(batch)
    return path


def write_parquet_batches(batches: Iterable[pa.RecordBatch], schema: pa.Schema, path: Path) -> Path:
    """Record batches, produced one at a time, as one Parquet file (one row group per batch)."""
    with atomic_file(path) as handle:
        with pq.ParquetWriter(handle, schema) as writer:
            for batch in batches:
                writer.write_batch(batch)
    return path


def write_table_batches(batches: Iterable[pa.RecordBatch], schema: pa.Schema, path: Path, output_format: str = "csv") -> Path:
    """``write_csv_batches`` or ``write_parquet_batches`` by ``output_format`` ("csv" or "parquet")."""
    if output_format == "parquet":
        return write_parquet_batches(batches, schema, path)
    return write_csv_batches(batches, schema, path)


def write_csv(frame: pd.DataFrame | pa.Table, path: Path) -> Path:
    table = frame if isinstance(frame, pa.Table) else pa.Table.from_pandas(frame, preserve_index=False)
    return write_csv_batches(table.to_batches(), table.schema, path)


def write_parquet(frame: pd.DataFrame, path: Path) -> Path:
    """A frame as Parquet, converting one row group at a time (bounds the Arrow copy)."""
    with atomic_file(path) as handle:
        first = pa.Table.from_pandas(frame.iloc[:PARQUET_ROW_GROUP], preserve_index=False)
        with pq.ParquetWriter(handle, first.schema) as writer:
            writer.write_table(first)
            del first
            for lo in range(PARQUET_ROW_GROUP, len(frame), PARQUET_ROW_GROUP):
                chunk = frame.iloc[lo : lo + PARQUET_ROW_GROUP]
                writer.write_table(pa.Table.from_pandas(chunk, schema=writer.schema, preserve_index=False))
    return path


def fsync_dir(folder: Path) -> None:
    """Make a rename in ``folder`` durable."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def remove_temporary_files(folder: Path) -> int:
    """Delete the ``.<name>.*.tmp`` files a killed writer left in ``folder``; returns how many."""
    removed = 0
    if folder.is_dir():
        for tmp in folder.glob(".*.tmp"):
            tmp.unlink(missing_ok=True)
            removed += 1
    return removed
