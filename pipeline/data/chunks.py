"""Validated chunks: files -> a sequence of validated pieces of rows, for scoring in bounded memory.

``score`` reads long files a chunk of rows at a time. A chunk is validated on its own
(``pipeline.data.ingest.validate``), so it must not need rows of another chunk to get the rows
one validation of everything would give. ``validated_chunks`` makes that so where it can and
checks it everywhere else, raising ``NotChunkable`` when it does not hold:

- a chunk of a file starts at a row where every sensor has a value, and the first clean row of
  every chunk but the first must have every value, so no forward-filled or held run of missing
  values crosses a chunk edge;
- every chunk's rows come strictly after the rows before it, so no duplicate, conflicting or
  out-of-order timestamp spans two chunks (the whole table would be sorted);
- a file's chunks read their timestamps in one format and hold the same slow sensors;
- no tall layout and no resampling (both need neighbouring rows of other chunks).

The caller then validates everything in one piece instead: the results are those of one pass
either way, only the memory differs.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq

from pipeline.config import IngestConfig
from pipeline.data.files import (
    PARQUET_SUFFIXES,
    RawSource,
    arrow_frame,
    csv_options,
    file_digest,
    is_type_change,
    read_source,
)
from pipeline.data.ingest import IngestResult, validate
from pipeline.errors import InputError
from pipeline.utc import utc_ns

PARQUET_BATCH_ROWS = 65_536
CHUNK_BLOCK_BYTES = 1 << 20


def read_ahead(chunks: Iterator[Chunk]) -> Iterator[Chunk]:
    """``chunks`` with the next one read and validated in a thread while the caller works on the
    current one (parsing and validation then overlap scoring and writing); its errors are raised here."""
    ahead: queue.Queue = queue.Queue(maxsize=1)
    stop = threading.Event()

    def produce() -> None:
        try:
            for chunk in chunks:
                while not stop.is_set():
                    try:
                        ahead.put(("chunk", chunk), timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            ahead.put(("end", None))
        except BaseException as exc:  # handed to the consumer, which raises it
            ahead.put(("error", exc))

    worker = threading.Thread(target=produce, name="read-ahead", daemon=True)
    worker.start()
    try:
        while True:
            kind, item = ahead.get()
            if kind == "end":
                return
            if kind == "error":
                raise item
            yield item
    finally:  # the caller stopped early, or is done: let the thread end, even if blocked on a full queue
        stop.set()
        while worker.is_alive():
            try:
                ahead.get(timeout=0.1)
            except queue.Empty:
                pass


class NotChunkable(Exception):
    """These files cannot be validated a chunk at a time with the result of one pass (the reason)."""


@dataclass
class Chunk:
    """Validated rows (of one file, or of all at once) and the digests of their files."""

    result: IngestResult
    digests: dict[str, str]


def validated_chunks(
    files: list[tuple[str, Path]],
    ingest: IngestConfig,
    sensors: list[str],
    timestamp_column: str,
    chunk_rows: int,
    dayfirst: bool | None = None,
    intervals: dict[str, float] | None = None,
) -> Iterator[Chunk]:
    """The files' rows as validated chunks of about ``chunk_rows`` raw rows, in the order given.

    Raises:
        NotChunkable: a chunk would not validate as in one pass (the module docstring's rules).
        InputError: a file cannot be read.
    """
    if ingest.layout == "tall" or ingest.resample:
        raise NotChunkable("a tall layout or ingest.resample needs the whole table")
    last_ns: int | None = None
    for name, path in files:
        digest = file_digest(path) if path.is_file() else ""  # a vanished file: read_source names it below
        first: IngestResult | None = None
        for source in _raw_chunks(name, path, ingest, sensors, timestamp_column, chunk_rows, digest):
            present = [s for s in sensors if s in source.frame.columns]
            complete = source.frame[present].notna().all(axis=1).to_numpy()  # before validation repairs anything
            try:
                result = validate([source], ingest, sensors, timestamp_column, dayfirst, intervals)
            except InputError as exc:  # e.g. every row of this chunk set aside: judge the whole input
                raise NotChunkable(str(exc)) from None
            times = utc_ns(result.table["timestamp"])
            if last_ns is not None and times[0] <= last_ns:
                raise NotChunkable(f"{name}: rows at or before earlier rows' times (from file row {source.row_offset + 1})")
            if first is None:
                first = result
            elif result.timestamp_formats != first.timestamp_formats or result.held_sensors != first.held_sensors:
                raise NotChunkable(f"{name}: timestamps or sensor rates read otherwise from file row {source.row_offset + 1}")
            first_clean = int(result.table["row"].iloc[0])
            if last_ns is not None and not complete[first_clean - source.row_offset]:
                # Its missing values would be filled from the rows before it in one pass.
                raise NotChunkable(f"{name}: file row {first_clean + 1}, the first clean row of a chunk, misses a value")
            last_ns = int(times.max())
            yield Chunk(result, {name: digest})


def _raw_chunks(
    name: str, path: Path, config: IngestConfig, sensors: list[str], timestamp_column: str, chunk_rows: int, digest: str
) -> Iterator[RawSource]:
    """Consecutive pieces of one file of ``chunk_rows`` to about twice as many rows, each
    starting at a row with every sensor present (a piece runs on until the next such row)."""
    if not path.is_file() or path.stat().st_size == 0:
        yield read_source(name, path, config)  # raises the one-line error
        return
    offset, held = 0, []
    for batch in _batches(path, config):
        held.append(batch)
        # Cut only with another chunk's worth behind the cut: a short last piece could measure
        # another sampling interval than all rows do (and hold other sensors).
        while sum(b.num_rows for b in held) >= 2 * chunk_rows:
            table = pa.Table.from_batches(held)
            cut = _cut_row(table, sensors, chunk_rows)
            if cut is None:  # no row with every sensor yet: read on
                break
            yield RawSource(name, arrow_frame(table.slice(0, cut), path), digest, row_offset=offset)
            offset += cut
            held = table.slice(cut).to_batches()
            del table
    table = pa.Table.from_batches(held) if held else None
    if table is None or table.num_rows == 0:
        if offset == 0:
            raise InputError(f"{path}: no data rows (header only)")
        return
    yield RawSource(name, arrow_frame(table, path), digest, row_offset=offset)


def _cut_row(table: pa.Table, sensors: list[str], chunk_rows: int) -> int | None:
    """The first row at or after ``chunk_rows`` where every sensor has a value (None: none yet)."""
    present = np.ones(table.num_rows - chunk_rows, dtype=bool)
    for sensor in sensors:
        if sensor in table.column_names:
            present &= pc.is_valid(table.column(sensor).slice(chunk_rows)).to_numpy(zero_copy_only=False)
    found = np.flatnonzero(present)
    return chunk_rows + int(found[0]) if found.size else None


def _batches(path: Path, config: IngestConfig) -> Iterator[pa.RecordBatch]:
    """The file's record batches as read, one at a time."""
    bad_rows: list[pa_csv.InvalidRow] = []
    try:
        if path.suffix.lower() in PARQUET_SUFFIXES:
            yield from pq.ParquetFile(path).iter_batches(batch_size=PARQUET_BATCH_ROWS)
            return
        options = csv_options(path, config, bad_rows)
        # Small blocks: what the reader holds ahead is a few blocks, beside the chunk.
        yield from pa_csv.open_csv(path, read_options=pa_csv.ReadOptions(block_size=CHUNK_BLOCK_BYTES), **options)
    except pa.ArrowInvalid as exc:
        if not bad_rows and is_type_change(exc):
            raise NotChunkable(f"{path}: a later block does not fit the column types of the first") from None
        read_source(path.name, path, config)  # raises the one-line error one read of the file gives
        raise
    except (pa.ArrowException, UnicodeDecodeError, OSError):
        read_source(path.name, path, config)
        raise
