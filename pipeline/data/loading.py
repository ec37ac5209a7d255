"""Loading: files -> validated table + data-quality report, one file in memory at a time."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa

from pipeline.config import IngestConfig
from pipeline.data.files import RawSource, read_source
from pipeline.data.ingest import IngestResult, validate
from pipeline.data.quality import quality_report

log = logging.getLogger(__name__)


@dataclass
class LoadedInput:
    result: IngestResult
    quality: dict[str, Any]
    digests: dict[str, str]  # source name -> sha256 of the file
    sources: list[str]  # in the order given


def load_input(
    files: list[tuple[str, Path]],
    ingest: IngestConfig,
    sensors: list[str] | None = None,
    timestamp_column: str | None = None,
    dayfirst: bool | None = None,
    intervals: dict[str, float] | None = None,
) -> LoadedInput:
    """Read, validate and quality-check files (``(source name, path)`` pairs from ``discover_files``).

    ``sensors`` and ``timestamp_column`` fix the columns (a model's); ``None`` detects them.
    ``dayfirst`` and ``intervals`` are a model's date order and per-sensor intervals
    (``pipeline.data.ingest.validate``); ``None`` decides and measures them from the data.
    """
    result, digests = read_validated(files, ingest, sensors, timestamp_column, dayfirst, intervals)
    report = quality_report(result, ingest.flatline_rows, ingest.max_set_aside_share)
    counts = result.counts
    log.info(
        "ingested %d rows from %d file(s): %d clean, %d repaired, %d set aside",
        counts["rows_in"],
        len(files),
        counts["rows_clean"],
        counts["rows_repaired"],
        counts["rows_quarantined"],
    )
    return LoadedInput(result, report, digests, [name for name, _ in files])


def read_validated(
    files: list[tuple[str, Path]],
    ingest: IngestConfig,
    sensors: list[str] | None = None,
    timestamp_column: str | None = None,
    dayfirst: bool | None = None,
    intervals: dict[str, float] | None = None,
) -> tuple[IngestResult, dict[str, str]]:
    """``load_input`` without the quality report: the validated files and their digests."""
    digests: dict[str, str] = {}

    def one_at_a_time() -> Iterator[RawSource]:  # validate lets go of each raw file once it is normalised
        for name, path in files:
            source = read_source(name, path, ingest)
            digests[name] = source.digest
            yield source
            del source
            # Arrow's allocator keeps freed buffers for reuse; hand them back to the system.
            pa.default_memory_pool().release_unused()

    result = validate(
        one_at_a_time(), ingest, sensors=sensors, timestamp_column=timestamp_column, dayfirst=dayfirst, intervals=intervals
    )
    return result, digests
