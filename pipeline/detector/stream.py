"""Stream: what one scheduled batch hands to the next, so that cutting a series into batches
changes no score and no flag (pure functions, no I/O; ``pipeline.store.state`` stores the carry).

Three things cross a batch edge:

- **context**: the last ``context_rows`` clean rows (raw sensor values), put in front of the
  next batch so that its first rows get the same windows as in one run over the whole series;
- **segments**: gap-free stretches are numbered over the whole stream, so an event policy that
  never crosses a gap sees the same stretches;
- **events**: a row's flag can depend on rows after it (a run above the threshold counts only
  once it is ``min_event_rows`` long; rows between two runs at most ``merge_gap_rows`` apart join
  the event). Rows whose flag the data so far cannot decide are *held back* (not written) and
  decided with the next batch: at most ``min_event_rows - 1 + max(merge_gap_rows, release_rows - 1)``
  rows (the hysteresis's ``release_rows``: a dip after an event may still end short). The last
  event is carried (its id and running figures), so an event in progress at a batch edge keeps
  its id and grows in the next batch, and event ids stay unique over the stream.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from pipeline.config import EventsConfig
from pipeline.data.ingest import IngestResult
from pipeline.detector.events import EventStats, decide_events, event_stats
from pipeline.detector.scoring import RowScores, score_rows
from pipeline.utc import iso_ns, iso_utc, utc_ns

if TYPE_CHECKING:
    from pipeline.detector.bundle import ModelBundle

log = logging.getLogger(__name__)

PENDING_BASE = ["source", "row", "timestamp_ns", "score", "segment"]


@dataclass
class Carry:
    """What a batch leaves for the next batch of its stream.

    ``context`` has columns ``timestamp`` (UTC) and one float column per sensor: the last
    clean rows, raw values. ``pending`` has ``PENDING_BASE`` plus ``contrib_<sensor>`` columns:
    scored rows not written yet. ``open_event`` is the last event when later rows may still
    extend it, with ``open_segment`` its segment.
    """

    sensors: list[str]
    context: pd.DataFrame
    last_segment: int | None = None
    last_timestamp_ns: int | None = None
    pending: pd.DataFrame | None = None
    open_event: EventStats | None = None
    open_segment: int | None = None
    next_event_id: int = 1
    model_version: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def empty(cls, sensors: list[str]) -> Carry:
        context = pd.DataFrame(
            {
                "timestamp": pd.Series([], dtype="datetime64[ns, UTC]"),
                **{s: pd.Series([], dtype=float) for s in sensors},
            }
        )
        return cls(sensors=list(sensors), context=context, pending=empty_pending(sensors))

    def for_sensors(self, sensors: list[str]) -> Carry:
        """This carry for a model on ``sensors``: itself, or, for other sensors, a fresh start
        that keeps the stream's event ids, segment numbers and last time."""
        if self.sensors == list(sensors):
            return self
        log.warning("the model's sensors differ from the stream's so far: no context carried into this batch")
        fresh = Carry.empty(sensors)
        fresh.next_event_id, fresh.last_segment = self.next_event_id, self.last_segment
        fresh.last_timestamp_ns = self.last_timestamp_ns
        return fresh

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: floats are written with ``repr`` precision, so they read back exactly."""
        pending = self.pending if self.pending is not None else empty_pending(self.sensors)
        return {
            "sensors": self.sensors,
            "context": {
                "timestamp_ns": self.context["timestamp"].dt.as_unit("ns").array.asi8.tolist(),
                "values": {s: self.context[s].astype(float).tolist() for s in self.sensors},
            },
            "last_segment": self.last_segment,
            "last_timestamp_ns": self.last_timestamp_ns,
            "pending": {column: pending[column].tolist() for column in pending.columns},
            "open_event": self.open_event.to_dict() if self.open_event else None,
            "open_segment": self.open_segment,
            "next_event_id": self.next_event_id,
            "model_version": self.model_version,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Carry:
        sensors = list(data["sensors"])
        context = pd.DataFrame(
            {
                "timestamp": pd.to_datetime(
                    np.asarray(data["context"]["timestamp_ns"], dtype=np.int64),
                    utc=True,
                ),
                **{s: np.asarray(data["context"]["values"][s], dtype=np.float64) for s in sensors},
            }
        )
        pending = pd.DataFrame(data["pending"]) if data["pending"] else empty_pending(sensors)
        if pending.empty:
            pending = empty_pending(sensors)
        return cls(
            sensors=sensors,
            context=context,
            last_segment=data["last_segment"],
            last_timestamp_ns=data["last_timestamp_ns"],
            pending=pending,
            open_event=EventStats.from_dict(data["open_event"]) if data["open_event"] else None,
            open_segment=data["open_segment"],
            next_event_id=int(data["next_event_id"]),
            model_version=data.get("model_version"),
        )


def empty_pending(sensors: list[str]) -> pd.DataFrame:
    columns: dict[str, Any] = {
        "source": pd.Series([], dtype=object),
        "row": pd.Series([], dtype=np.int64),
        "timestamp_ns": pd.Series([], dtype=np.int64),
        "score": pd.Series([], dtype=np.float64),
        "segment": pd.Series([], dtype=np.int64),
    }
    columns.update({f"contrib_{s}": pd.Series([], dtype=np.float64) for s in sensors})
    return pd.DataFrame(columns)


def _no_scores(n_sensors: int) -> RowScores:
    return RowScores(np.zeros(0, np.float32), np.zeros((0, n_sensors), np.float32), np.zeros(0, np.int64))


def global_segments(segment_ext: np.ndarray, n_context: int, last_segment: int | None) -> np.ndarray:
    """Segment numbers of a batch's rows over the whole stream.

    Args:
        segment_ext: segment per row of context + batch, as ``features.segment_ids`` numbers them.
        n_context: context rows in front.
        last_segment: the stream's segment number of the last row before this batch.
    """
    batch = segment_ext[n_context:].astype(np.int64)
    if last_segment is None:
        return batch - (batch[0] if batch.size else 0)
    if n_context == 0:  # no context to compare with (a new sensor set): start a new stretch
        return last_segment + 1 + batch - (batch[0] if batch.size else 0)
    return last_segment + (batch - int(segment_ext[n_context - 1]))


def set_aside_late(result: IngestResult, last_timestamp_ns: int | None) -> IngestResult:
    """The batch without rows at or before the stream's last processed time: they join the
    set-aside rows as ``late row`` (their neighbours were already scored) and are counted."""
    table, counts = result.table, {**result.counts, "late_rows": 0}
    late = utc_ns(table["timestamp"]) <= last_timestamp_ns if last_timestamp_ns is not None and len(table) else None
    if late is None or not late.any():
        return replace(result, counts=counts)
    last = iso_ns(last_timestamp_ns)
    gone = table[late]
    reason = f"late row: not after the last processed time {last}"
    aside = pd.DataFrame(
        {"source": gone["source"], "row": gone["row"], "timestamp": iso_utc(gone["timestamp"]), "status": reason}
    )
    n_late = int(late.sum())
    counts.update(
        late_rows=n_late, rows_clean=counts["rows_clean"] - n_late, rows_quarantined=counts["rows_quarantined"] + n_late
    )
    log.warning("%d row(s) at or before the last processed time %s set aside as late", n_late, last)
    rejected = pd.concat([result.rejected, aside], ignore_index=True)
    return replace(result, table=table[~late].reset_index(drop=True), rejected=rejected, counts=counts)


@dataclass
class StreamStep:
    """What one batch decided: the rows written now, in time order (held-back rows of earlier
    batches first), with their scores and events, the events they touched, and the next carry.

    ``source``, ``row``, ``timestamp_ns``, ``score``, ``segment``, ``event`` have shape
    (n_decided,); ``contributions`` (n_decided, n_sensors).
    """

    source: np.ndarray
    row: np.ndarray
    timestamp_ns: np.ndarray
    score: np.ndarray
    contributions: np.ndarray
    segment: np.ndarray
    event: np.ndarray
    events: list[EventStats]  # every event the decided rows touch, with its figures so far
    carry: Carry
    rows_from_earlier_batches: int
    rows_held: int


def advance(
    bundle: ModelBundle,
    table: pd.DataFrame,
    carry: Carry,
    events: EventsConfig,
    batch_size: int | None = None,
    ending_stream: bool = False,
) -> StreamStep:
    """Score and decide one batch of clean rows (time-sorted, after ``carry``'s last time).

    The carried context rows give the first rows their full windows; held-back rows of the
    previous batch are decided with this one; an event open at the last batch edge goes on.
    With ``ending_stream`` no row follows this batch: every row is decided (``finish``).
    """
    sensors = bundle.sensors
    context = carry.context
    n_ctx = len(context)
    rows = table[["timestamp", *sensors]]
    ext = pd.concat([context, rows], ignore_index=True) if n_ctx else rows
    scored = score_rows(bundle, ext, batch_size, progress=True) if len(ext) else _no_scores(len(sensors))
    segment = global_segments(scored.segment, n_ctx, carry.last_segment)

    # Held-back rows, then this batch's rows.
    pending = carry.pending if carry.pending is not None else empty_pending(sensors)
    n_pending = len(pending)
    contrib_columns = [f"contrib_{s}" for s in sensors]
    score = np.concatenate([pending["score"].to_numpy(np.float32), scored.score[n_ctx:]])
    all_segment = np.concatenate([pending["segment"].to_numpy(np.int64), segment])
    pending_contrib = pending[contrib_columns].to_numpy(np.float32).reshape(n_pending, len(sensors))
    contributions = np.concatenate([pending_contrib, scored.contributions[n_ctx:]])
    source = np.concatenate([pending["source"].to_numpy(object), table["source"].to_numpy(object)])
    row = np.concatenate([pending["row"].to_numpy(np.int64), table["row"].to_numpy(np.int64)])
    ns = np.concatenate([pending["timestamp_ns"].to_numpy(np.int64), utc_ns(table["timestamp"])])
    threshold = bundle.threshold.value
    open_id = carry.open_event.event_id if carry.open_event else None
    decision = decide_events(score, all_segment, threshold, events, open_id, carry.open_segment, carry.next_event_id)
    k = len(score) if ending_stream else decision.n_decided
    event = decision.event[:k]

    # Running figures of the events touched, continuing the carried one.
    stats = event_stats(event, score[:k], contributions[:k], ns[:k], source[:k])
    if carry.open_event is not None and carry.open_event.event_id in stats:
        stats[open_id] = carry.open_event.merged(stats[open_id])
    open_event = None
    if decision.open_event_id is not None:
        open_event = stats.get(decision.open_event_id) or (carry.open_event if open_id == decision.open_event_id else None)

    held = pd.DataFrame(
        {
            "source": source[k:],
            "row": row[k:],
            "timestamp_ns": ns[k:],
            "score": score[k:].astype(np.float64),
            "segment": all_segment[k:],
        }
    )
    for i, column in enumerate(contrib_columns):
        held[column] = contributions[k:, i].astype(np.float64)
    tail = ext.iloc[max(0, len(ext) - bundle.context_rows) :].reset_index(drop=True) if bundle.context_rows else ext.iloc[:0]
    next_carry = Carry(
        sensors=sensors,
        context=tail,
        last_segment=int(segment[-1]) if segment.size else carry.last_segment,
        last_timestamp_ns=int(ns[n_pending:].max()) if len(table) else carry.last_timestamp_ns,
        pending=held,
        open_event=open_event,
        open_segment=int(all_segment[-1]) if open_event is not None else None,
        next_event_id=decision.next_event_id,
        model_version=carry.model_version,
    )
    return StreamStep(
        source=source[:k],
        row=row[:k],
        timestamp_ns=ns[:k],
        score=score[:k],
        contributions=contributions[:k],
        segment=all_segment[:k],
        event=event,
        events=sorted(stats.values(), key=lambda e: e.event_id),
        carry=next_carry,
        rows_from_earlier_batches=min(k, n_pending),
        rows_held=len(held),
    )


def finish(bundle: ModelBundle, carry: Carry, events: EventsConfig) -> StreamStep:
    """Decide the held-back rows as the end of the stream (``score``'s last chunk): no later row
    can extend an event any more, so every row gets the flag one pass over the whole series gives."""
    no_rows = carry.context.iloc[:0].assign(source=pd.Series([], dtype=object), row=pd.Series([], dtype=np.int64))
    return advance(bundle, no_rows, carry, events, ending_stream=True)
