"""``score`` a chunk at a time: validated chunks -> stream steps -> ``scores.csv`` rows, written as
they are decided, in bounded memory.

Each chunk goes through ``pipeline.detector.stream.advance`` as a scheduled batch would, and the
last through ``finish``: the same windows, scores, flags and event ids as one pass over all rows
(``advance`` carries the context rows, segments, held-back rows and the open event across each
edge). Rows are written in input order (per source, by file row): a decided or set-aside row
waits only until no held-back row comes before it. The quality report, the drift figures, the
events, the score plot's points and the top events' details are built up chunk by chunk; only
the last two chunks' rows are kept, for the event details.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import BinaryIO

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.data.chunks import Chunk
from pipeline.data.ingest import IngestResult
from pipeline.data.quality import QualitySummary
from pipeline.detector.bundle import ModelBundle
from pipeline.detector.drift import add_counts, batch_counts
from pipeline.detector.events import EventStats
from pipeline.detector.scoring import RowScores
from pipeline.detector.stream import Carry, StreamStep, advance, finish
from pipeline.reports import explain, plots
from pipeline.reports.tables import events_frame, scores_batches
from pipeline.tracking import DATASET_SAMPLE_ROWS
from pipeline.utc import utc_ns

PLOT_POINTS_PER_CHUNK = 2_000


@dataclass
class StreamTotals:
    """What a pass over the chunks leaves for the rest of the ``score`` job."""

    quality: QualitySummary
    drift_counts: dict = field(default_factory=dict)
    events: dict[int, EventStats] = field(default_factory=dict)
    details: list = field(default_factory=list)  # explain.EventDetail of the top events
    sample: pd.DataFrame | None = None  # the first clean rows, for the MLflow dataset
    digests: dict[str, str] = field(default_factory=dict)
    rows_clean: int = 0
    rows_scored: int = 0
    rows_flagged: int = 0
    chunks: int = 0
    plot_times: list = field(default_factory=list)
    plot_sources: list = field(default_factory=list)
    plot_scores: list = field(default_factory=list)

    def events_frame(self, bundle: ModelBundle, version: str, run_id: str) -> pd.DataFrame:
        return events_frame(list(self.events.values()), bundle.sensors, bundle.threshold.value, version, run_id)

    def plot_rows(self) -> tuple[pd.Series, pd.Series, np.ndarray]:
        """(timestamps, sources, scores) of the points kept for the score plot."""
        times = np.concatenate(self.plot_times) if self.plot_times else np.zeros(0, np.int64)
        sources = np.concatenate(self.plot_sources) if self.plot_sources else np.zeros(0, object)
        scores = np.concatenate(self.plot_scores) if self.plot_scores else np.zeros(0, np.float32)
        return pd.Series(pd.to_datetime(times, utc=True)), pd.Series(sources), scores


class ScoreStream:
    """One pass over validated chunks; ``batches`` yields the ``scores.csv`` record batches and
    fills ``totals`` (complete once ``batches`` is exhausted)."""

    def __init__(
        self,
        bundle: ModelBundle,
        chunks: Iterator[Chunk],
        source_order: list[str],
        quality: QualitySummary,
        validated: BinaryIO | None = None,
    ) -> None:
        self.bundle, self.chunks, self.source_order = bundle, chunks, source_order
        self.rank = {name: i for i, name in enumerate(source_order)}
        self.totals = StreamTotals(quality=quality)
        self.validated = validated
        self._writer: pq.ParquetWriter | None = None
        self._waiting: list[tuple[IngestResult, RowScores, np.ndarray]] = []
        self._recent: list[_Rows] = []

    def batches(self) -> Iterator[pa.RecordBatch]:
        try:
            yield from self._scored()
        finally:  # also when a chunk turns out not chunkable: the half-written file is thrown away
            if self._writer is not None:
                self._writer.close()

    def _scored(self) -> Iterator[pa.RecordBatch]:
        bundle, totals = self.bundle, self.totals
        carry = Carry.empty(bundle.sensors)
        sensors: list[str] = bundle.sensors
        timestamp_column = bundle.timestamp_column
        for chunk in self.chunks:
            result = chunk.result
            sensors, timestamp_column = result.sensors, result.timestamp_column
            totals.chunks += 1
            totals.digests.update(chunk.digests)
            self._take_in(result)
            step = advance(bundle, result.table, carry, bundle.config.events)
            yield from self._decided(step, result.rejected, sensors, timestamp_column)
            carry = step.carry
            del chunk, result, step
            pa.default_memory_pool().release_unused()  # Arrow keeps freed buffers for reuse otherwise
        step = finish(bundle, carry, bundle.config.events)
        yield from self._decided(step, None, sensors, timestamp_column)
        self._close_events(last=True)

    def _take_in(self, result: IngestResult) -> None:
        totals = self.totals
        totals.quality.add(result)
        counts = batch_counts(self.bundle.sensor_reference, result.table, self.bundle.sensors)
        totals.drift_counts = _added(totals.drift_counts, counts)
        totals.rows_clean += len(result.table)
        if totals.sample is None:
            totals.sample = result.table.head(DATASET_SAMPLE_ROWS)[["timestamp", *result.sensors]]
        if self.validated is not None:
            arrow = pa.Table.from_pandas(result.table, preserve_index=False)
            if self._writer is None:
                self._writer = pq.ParquetWriter(self.validated, arrow.schema)
            self._writer.write_table(arrow.cast(self._writer.schema))
        self._recent = [*self._recent[-1:], _Rows.of(result.table, len(self.bundle.sensors))]

    def _decided(
        self, step: StreamStep, rejected: pd.DataFrame | None, sensors: list[str], timestamp_column: str
    ) -> Iterator[pa.RecordBatch]:
        """Count and keep the step's decided rows, and yield the rows no held-back row precedes."""
        totals = self.totals
        totals.rows_scored += int(np.isfinite(step.score).sum())
        totals.rows_flagged += int((step.event > 0).sum())
        for stats in step.events:
            totals.events[stats.event_id] = stats
        pending = step.carry.pending
        held_ns, held_score = pending["timestamp_ns"].to_numpy(np.int64), pending["score"].to_numpy(np.float32)
        held_contributions = pending[[f"contrib_{s}" for s in self.bundle.sensors]].to_numpy(np.float32)
        for rows in self._recent:  # scores of held-back rows are known already, their events not yet
            rows.fill(step.timestamp_ns, step.score, step.contributions, step.event)
            rows.fill(held_ns, held_score, held_contributions, None)
        self._keep_plot_points(step)
        self._close_events(open_id=step.carry.open_event.event_id if step.carry.open_event else None)

        table = pd.DataFrame({"source": step.source, "row": step.row, "timestamp": pd.to_datetime(step.timestamp_ns, utc=True)})
        aside = rejected if rejected is not None else pd.DataFrame(columns=["source", "row", "timestamp", "status"])
        scores = RowScores(score=step.score, contributions=step.contributions, segment=step.segment)
        self._waiting.append((IngestResult(table, aside, sensors, timestamp_column), scores, step.event))
        frontier = None  # the last step (rejected None) writes everything left
        if rejected is not None and len(pending):
            rank = len(self.rank)
            frontier = min((self.rank.get(str(s), rank), int(r)) for s, r in zip(pending["source"], pending["row"]))
        yield from self._written_before(frontier, sensors, timestamp_column)

    def _written_before(self, frontier: tuple[int, int] | None, sensors: list[str], timestamp_column: str) -> Iterator:
        """The waiting rows before ``frontier`` (all when None) as record batches, in input order."""
        tables, asides, scores, contributions, segments, events = [], [], [], [], [], []
        keep = []
        for result, rows, event in self._waiting:
            ready = self._before(result.table, frontier)
            aside_ready = self._before(result.rejected, frontier)
            tables.append(result.table[ready])
            asides.append(result.rejected[aside_ready])
            scores.append(rows.score[ready])
            contributions.append(rows.contributions[ready])
            segments.append(rows.segment[ready])
            events.append(event[ready])
            if not ready.all() or not aside_ready.all():
                later = RowScores(rows.score[~ready], rows.contributions[~ready], rows.segment[~ready])
                rest = IngestResult(result.table[~ready], result.rejected[~aside_ready], sensors, timestamp_column)
                keep.append((rest, later, event[~ready]))
        self._waiting = keep
        table, aside = pd.concat(tables, ignore_index=True), pd.concat(asides, ignore_index=True)
        written = IngestResult(table, aside, sensors, timestamp_column)
        if len(written.table) + len(written.rejected) == 0:
            return
        rows = RowScores(np.concatenate(scores), np.concatenate(contributions), np.concatenate(segments))
        yield from scores_batches(written, rows, np.concatenate(events), self.bundle.threshold.value, self.source_order)

    def _before(self, frame: pd.DataFrame, frontier: tuple[int, int] | None) -> np.ndarray:
        if frontier is None or not len(frame):
            return np.ones(len(frame), dtype=bool)
        rank = frame["source"].astype(str).map(self.rank).fillna(len(self.rank)).to_numpy(np.int64)
        row = frame["row"].to_numpy(np.int64)
        return (rank < frontier[0]) | ((rank == frontier[0]) & (row < frontier[1]))

    def _keep_plot_points(self, step: StreamStep) -> None:
        # A few thousand per chunk (each bin's peak): the points of millions of rows, kept
        # whole, would grow with the rows; the plot reduces them again.
        times, scores = plots.peak_preserving(np.arange(len(step.score)), step.score, PLOT_POINTS_PER_CHUNK)
        self.totals.plot_times.append(step.timestamp_ns[times])
        self.totals.plot_sources.append(step.source[times])
        self.totals.plot_scores.append(scores)

    def _close_events(self, open_id: int | None = None, last: bool = False) -> None:
        """Details of the events no later row can extend that rank among the top ones so far,
        drawn from the rows of the last two chunks (an event longer than that shows its end)."""
        totals = self.totals
        ranked = sorted(totals.events.values(), key=lambda e: -e.peak_score)[: explain.TOP_EVENTS]
        done = {d.event_id for d in totals.details}
        closing = [e for e in ranked if e.event_id not in done and (last or e.event_id != open_id)]
        closing = [e for e in closing if any(rows.holds(e.event_id) for rows in self._recent)]
        if not closing:
            return
        table = pd.concat([rows.table for rows in self._recent], ignore_index=True)
        score = np.concatenate([rows.score for rows in self._recent])
        score[: self.bundle.window_size - 1] = np.nan  # their windows reach back before the rows kept
        scores = RowScores(
            score,
            np.concatenate([rows.contributions for rows in self._recent]),
            np.zeros(len(table), np.int64),
        )
        event = np.concatenate([rows.event for rows in self._recent])
        frame = pd.DataFrame({"event_id": [e.event_id for e in closing], "peak_score": [e.peak_score for e in closing]})
        fresh = explain.event_details(self.bundle, table, scores, event, frame, n=len(closing))
        kept = {e.event_id for e in ranked}
        totals.details = sorted([d for d in [*totals.details, *fresh] if d.event_id in kept], key=lambda d: -d.peak_score)


@dataclass
class _Rows:
    """A chunk's clean rows with their scores and events as they get decided (for event details)."""

    table: pd.DataFrame
    ns: np.ndarray
    score: np.ndarray
    contributions: np.ndarray
    event: np.ndarray

    @classmethod
    def of(cls, table: pd.DataFrame, n_sensors: int) -> _Rows:
        n = len(table)
        return cls(
            table=table.reset_index(drop=True),
            ns=utc_ns(table["timestamp"]),
            score=np.full(n, np.nan, np.float32),
            contributions=np.full((n, n_sensors), np.nan, np.float32),
            event=np.zeros(n, np.int64),
        )

    def fill(self, ns: np.ndarray, score: np.ndarray, contributions: np.ndarray, event: np.ndarray | None) -> None:
        at = np.searchsorted(self.ns, ns)
        found = (at < self.ns.size) & (self.ns[np.minimum(at, self.ns.size - 1)] == ns)
        at = at[found]
        self.score[at], self.contributions[at] = score[found], contributions[found]
        if event is not None:
            self.event[at] = event[found]

    def holds(self, event_id: int) -> bool:
        return bool((self.event == event_id).any())


def _added(total: dict, counts: dict) -> dict:
    return {sensor: add_counts(total[sensor], c) if sensor in total else c for sensor, c in counts.items()}
