"""Stream: what one scheduled batch hands to the next, so that cutting a series into batches
changes no score and no flag (pure functions, no I/O; ``pipeline.state`` stores it).

Three things cross a batch edge:

- **context**: the last ``context_rows`` clean rows (raw sensor values), put in front of the
  next batch so that its first rows get the same windows as in one run over the whole series;
- **segments**: gap-free stretches are numbered over the whole stream, so an event policy that
  never crosses a gap sees the same stretches;
- **events**: a row's flag can depend on rows after it (a run above the threshold counts only
  once it is ``min_event_rows`` long; rows between two runs at most ``merge_gap_rows`` apart join
  the event). Rows whose flag the data so far cannot decide are *held back* (not written) and
  decided with the next batch: at most ``min_event_rows - 1 + merge_gap_rows`` rows. The last
  event is carried (its id and running figures), so an event in progress at a batch edge keeps
  its id and grows in the next batch, and event ids stay unique over the stream.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from pipeline.config import EventsConfig
from pipeline.report import assign_events, top_sensors


@dataclass
class EventStats:
    """Running figures of one event over the rows written so far."""

    event_id: int
    source: str
    start_ns: int
    end_ns: int
    n_rows: int
    peak_score: float
    score_sum: float
    share_sum: list[float]

    def merged(self, other: EventStats) -> EventStats:
        """This event extended by later rows of the same event."""
        return EventStats(
            event_id=self.event_id,
            source=self.source,
            start_ns=min(self.start_ns, other.start_ns),
            end_ns=max(self.end_ns, other.end_ns),
            n_rows=self.n_rows + other.n_rows,
            peak_score=max(self.peak_score, other.peak_score),
            score_sum=self.score_sum + other.score_sum,
            share_sum=[a + b for a, b in zip(self.share_sum, other.share_sum)],
        )

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> EventStats:
        return cls(**data)


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
        return cls(
            sensors=list(sensors), context=context, pending=empty_pending(sensors)
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: floats are written with ``repr`` precision, so they read back exactly."""
        pending = (
            self.pending if self.pending is not None else empty_pending(self.sensors)
        )
        return {
            "sensors": self.sensors,
            "context": {
                "timestamp_ns": self.context["timestamp"]
                .dt.as_unit("ns")
                .array.asi8.tolist(),
                "values": {
                    s: self.context[s].astype(float).tolist() for s in self.sensors
                },
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
                **{
                    s: np.asarray(data["context"]["values"][s], dtype=np.float64)
                    for s in sensors
                },
            }
        )
        pending = (
            pd.DataFrame(data["pending"]) if data["pending"] else empty_pending(sensors)
        )
        if pending.empty:
            pending = empty_pending(sensors)
        return cls(
            sensors=sensors,
            context=context,
            last_segment=data["last_segment"],
            last_timestamp_ns=data["last_timestamp_ns"],
            pending=pending,
            open_event=EventStats.from_dict(data["open_event"])
            if data["open_event"]
            else None,
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


def global_segments(
    segment_ext: np.ndarray, n_context: int, last_segment: int | None
) -> np.ndarray:
    """Segment numbers of a batch's rows over the whole stream.

    Args:
        segment_ext: segment per row of context + batch, as ``features.segment_ids`` numbers them.
        n_context: context rows in front.
        last_segment: the stream's segment number of the last row before this batch.
    """
    batch = segment_ext[n_context:].astype(np.int64)
    if last_segment is None:
        return batch - (batch[0] if batch.size else 0)
    if (
        n_context == 0
    ):  # no context to compare with (a new sensor set): start a new stretch
        return last_segment + 1 + batch - (batch[0] if batch.size else 0)
    return last_segment + (batch - int(segment_ext[n_context - 1]))


@dataclass
class EventDecision:
    """Events of the rows a batch can decide.

    ``event`` holds global event ids (0 = not flagged) for the first ``n_decided`` rows; the rest
    are held back. ``open_event_id`` is the last event when later rows may still extend it.
    """

    event: np.ndarray
    n_decided: int
    open_event_id: int | None
    next_event_id: int


def decide_events(
    score: np.ndarray,
    groups: np.ndarray,
    threshold: float,
    config: EventsConfig,
    open_event_id: int | None,
    open_segment: int | None,
    next_event_id: int,
) -> EventDecision:
    """Assign events to rows that follow a carried state, as ``report.assign_events`` would over
    the whole stream.

    Args:
        score: scores of the held-back rows of earlier batches, then this batch's rows; (n,).
        groups: their segment numbers over the stream; (n,).
        open_event_id, open_segment: the carried last event (None when there is none).
    """
    n = score.size
    synthetic = open_event_id is not None
    if synthetic:
        # The carried event stands in as a kept run of min_event_rows rows ending just before
        # row 0: a run continuing it, or a run close enough to merge, behaves as in one run.
        m = config.min_event_rows
        score_all = np.concatenate([np.full(m, np.inf), score.astype(np.float64)])
        groups_all = np.concatenate(
            [np.full(m, open_segment, dtype=np.int64), groups.astype(np.int64)]
        )
    else:
        m = 0
        score_all, groups_all = score.astype(np.float64), groups.astype(np.int64)
    local = assign_events(score_all, threshold, groups_all, config)
    local_rows = local[m:]

    # Local event numbers -> global ids: the carried event keeps its id, new ones count on.
    mapping: dict[int, int] = {}
    number = next_event_id
    for value in np.unique(local_rows[local_rows > 0]):
        if synthetic and value == 1:
            mapping[1] = int(open_event_id)
        else:
            mapping[int(value)] = number
            number += 1
    event = np.zeros(n, dtype=np.int64)
    for value, gid in mapping.items():
        event[local_rows == value] = gid

    n_decided, open_id = _undecided_from(
        score, groups, threshold, config, event, synthetic, open_event_id, open_segment
    )
    return EventDecision(
        event=event, n_decided=n_decided, open_event_id=open_id, next_event_id=number
    )


def _undecided_from(
    score, groups, threshold, config, event, synthetic, open_event_id, open_segment
) -> tuple[int, int | None]:
    """First row whose flag later rows could still change, and the event they could extend."""
    n = score.size
    if n == 0:
        return 0, open_event_id
    exceeds = np.nan_to_num(score.astype(np.float64), nan=-np.inf) > threshold
    last_group = groups[-1]
    in_group = np.flatnonzero(groups != last_group)
    group_start = int(in_group[-1]) + 1 if in_group.size else 0
    if exceeds[-1]:
        if (
            event[-1] != 0
        ):  # a kept run still going on: decided, and the next rows may extend it
            return n, int(event[-1])
        below = np.flatnonzero(~exceeds[group_start:])
        candidate = group_start + (
            int(below[-1]) + 1 if below.size else 0
        )  # a short run that may grow
    else:
        candidate = n
    flagged = np.flatnonzero(event[group_start:candidate] != 0)
    if flagged.size:
        last_end = group_start + int(flagged[-1])
        last_id = int(event[last_end])
    elif synthetic and group_start == 0 and open_segment == last_group:
        last_end, last_id = -1, int(open_event_id)
    else:
        return candidate, None
    if (
        candidate <= last_end + config.merge_gap_rows + 1
    ):  # a run starting there could still merge
        return last_end + 1, last_id
    return candidate, None


def event_stats(
    event: np.ndarray,
    score: np.ndarray,
    contributions: np.ndarray,
    timestamp_ns: np.ndarray,
    source: np.ndarray,
) -> dict[int, EventStats]:
    """Figures of each event over the given (written) rows, keyed by event id."""
    stats: dict[int, EventStats] = {}
    flagged = np.flatnonzero(event)
    if flagged.size == 0:
        return stats
    ids = event[flagged]
    order = np.argsort(ids, kind="stable")
    flagged, ids = flagged[order], ids[order]
    bounds = np.flatnonzero(np.diff(ids)) + 1
    for rows in np.split(flagged, bounds):
        scores = score[rows].astype(np.float64)
        shares = np.nan_to_num(contributions[rows].astype(np.float64)).sum(axis=0)
        first = rows[np.argmin(timestamp_ns[rows])]
        stats[int(event[rows[0]])] = EventStats(
            event_id=int(event[rows[0]]),
            source=str(source[first]),
            start_ns=int(timestamp_ns[rows].min()),
            end_ns=int(timestamp_ns[rows].max()),
            n_rows=int(rows.size),
            peak_score=float(np.nanmax(scores)),
            score_sum=float(np.nansum(scores)),
            share_sum=[float(v) for v in shares],
        )
    return stats


def events_frame(
    stats: list[EventStats],
    sensors: list[str],
    threshold: float,
    model_version: str,
    run_id: str,
) -> pd.DataFrame:
    """``anomalies.csv`` rows (``report.EVENT_COLUMNS``) of events' running figures."""
    from pipeline.report import EVENT_COLUMNS

    rows = []
    for s in sorted(stats, key=lambda e: e.event_id):
        rows.append(
            {
                "event_id": s.event_id,
                "source": s.source,
                "start": iso_ns(s.start_ns),
                "end": iso_ns(s.end_ns),
                "n_rows": s.n_rows,
                "peak_score": s.peak_score,
                "mean_score": s.score_sum / s.n_rows,
                "threshold": threshold,
                "top_sensors": top_sensors(np.asarray(s.share_sum) / s.n_rows, sensors),
                "model_version": model_version,
                "run_id": run_id,
            }
        )
    return pd.DataFrame(rows, columns=EVENT_COLUMNS)


def iso_ns(nanoseconds: int) -> str:
    """UTC ISO 8601 text of nanoseconds since the epoch, as in ``anomalies.csv``."""
    text = pd.Timestamp(nanoseconds, unit="ns", tz="UTC").strftime(
        "%Y-%m-%dT%H:%M:%S.%fZ"
    )
    return text.replace(".000000Z", "Z")
