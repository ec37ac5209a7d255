"""Reading sensor files: folders expanded into files, each CSV or Parquet file read with pyarrow.

``read_source`` returns every column as read; ``pipeline.data.ingest.validate`` applies the rules.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq

from pipeline.config import IngestConfig
from pipeline.data.tall import pivot_tall
from pipeline.errors import InputError

log = logging.getLogger(__name__)

DATA_SUFFIXES = {".csv", ".txt", ".tsv", ".parquet", ".pq"}
PARQUET_SUFFIXES = {".parquet", ".pq"}
NULL_MARKERS = ["", "NA", "N/A", "NaN", "nan", "NULL", "null", "None", "#N/A", "-nan"]
STREAM_BLOCK_BYTES = 8 << 20


@dataclass(frozen=True)
class RawSource:
    """One file as read: every column, rows in file order."""

    name: str
    frame: pd.DataFrame
    digest: str
    row_offset: int = 0  # file row of the frame's first row (the new rows of an appended file)
    row_numbers: np.ndarray | None = None  # file row of each frame row, when not consecutive (a pivoted tall file)
    set_aside: pd.DataFrame | None = None  # rows set aside while reading (``source, row, timestamp, status``)
    counts: dict[str, int] = field(default_factory=dict)  # what reading counted (a tall file's readings)

    def data_rows(self) -> np.ndarray:
        """The 0-based data row in its file of each row of ``frame``."""
        return self.row_numbers if self.row_numbers is not None else np.arange(len(self.frame), dtype=np.int64) + self.row_offset


def file_rows(source: RawSource) -> int:
    """Data rows of the file read (readings of a tall file), counting the rows skipped before it."""
    if "tall_readings" in source.counts:
        return source.counts["tall_readings"]
    return source.row_offset + len(source.frame)


def skip_rows(source: RawSource, rows: int) -> RawSource:
    """The source without its first ``rows`` file rows (already processed rows of an appended file).

    For a pivoted tall file: the wide rows whose first reading is later, the readings set aside
    later, and the reading counts recounted from those.
    """
    if source.row_numbers is None:
        frame = source.frame.iloc[rows:].reset_index(drop=True)
        return RawSource(source.name, frame, source.digest, row_offset=rows, counts=source.counts)
    keep = source.row_numbers >= rows
    aside = source.set_aside[source.set_aside["row"] >= rows].reset_index(drop=True)
    kinds = {
        "bad_quality": "bad quality",
        "duplicate_readings": "duplicate reading",
        "conflicting_readings": "conflicting reading",
    }
    counts = {key: int(aside["status"].str.startswith(text).sum()) for key, text in kinds.items()}
    counts["tall_readings"] = source.counts.get("tall_readings", 0)
    return RawSource(
        source.name,
        source.frame[keep].reset_index(drop=True),
        source.digest,
        row_numbers=source.row_numbers[keep],
        set_aside=aside,
        counts=counts,
    )


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
        raise InputError(
            f"{path}: cannot be read as {'Parquet' if path.suffix.lower() in PARQUET_SUFFIXES else 'CSV'}: {message}"
        ) from None
    if table.num_rows == 0:
        raise InputError(f"{path}: no data rows (header only)")
    if config.layout == "tall":  # one row per reading: pivoted on the Arrow columns, never cell by cell
        frame, row_numbers, set_aside, counts = pivot_tall(table, name, config)
        del table
        return RawSource(name, frame, file_digest(path), row_numbers=row_numbers, set_aside=set_aside, counts=counts)
    return RawSource(name=name, frame=arrow_frame(table, path), digest=file_digest(path))


def arrow_frame(table: pa.Table, path: Path) -> pd.DataFrame:
    """An Arrow table as read from ``path`` -> a pandas frame of its columns (the Arrow buffers are let go)."""
    try:
        frame = table.to_pandas(split_blocks=True, self_destruct=True)
    except (pa.ArrowException, UnicodeDecodeError) as exc:  # e.g. a Latin-1 header: not UTF-8
        raise InputError(f"{path}: cannot be read: {str(exc).splitlines()[0]} (save the file as UTF-8)") from None
    # A Parquet file written from a frame indexed by time keeps that index as pandas metadata;
    # make it a column again, or the timestamp column would not be found.
    if not isinstance(frame.index, pd.RangeIndex) or frame.index.name is not None:
        frame = frame.reset_index()
    return frame


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
    options = csv_options(path, config, bad_rows)
    # Stream block by block: reading the whole file at once holds the raw text and the parsed
    # columns together (about 4x the file's size at the peak).
    try:
        reader = pa_csv.open_csv(path, read_options=pa_csv.ReadOptions(block_size=STREAM_BLOCK_BYTES), **options)
        return pa.Table.from_batches(list(reader), schema=reader.schema)
    except pa.ArrowInvalid as exc:
        if bad_rows or not is_type_change(exc):
            raise
    # The streaming reader fixes column types from the first block; a later block holds text in
    # a column that looked numeric. Read the whole file at once, which types columns on all rows.
    return pa_csv.read_csv(path, **options)


def is_type_change(exc: pa.ArrowInvalid) -> bool:
    """A later block of a streamed CSV does not fit the column types the first block gave."""
    return "conversion error" in str(exc)


def csv_options(path: Path, config: IngestConfig, bad_rows: list[pa_csv.InvalidRow]) -> dict:
    """pyarrow's parse and convert options for a CSV file (its delimiter sniffed from the header);
    rows with the wrong number of fields are appended to ``bad_rows``.

    Raises:
        InputError: binary content or no header.
    """
    with path.open("rb") as handle:
        head = handle.read(64 * 1024)
    if b"\x00" in head:
        raise InputError(f"{path}: binary content, not a CSV text file")
    header_line = head.decode("utf-8", errors="replace").splitlines()[0] if head.strip() else ""
    if not header_line.strip():
        raise InputError(f"{path}: file is empty")
    delimiter = config.delimiter or sniff_delimiter(header_line)
    return dict(
        parse_options=pa_csv.ParseOptions(delimiter=delimiter, invalid_row_handler=lambda row: bad_rows.append(row) or "error"),
        convert_options=pa_csv.ConvertOptions(decimal_point=config.decimal, null_values=NULL_MARKERS, strings_can_be_null=True),
    )
