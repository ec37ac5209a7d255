"""Events: per-row scores -> contiguous flagged rows merged by the event policy.

Event policy (``events`` config):
1. a row exceeds when its score is above the threshold;
2. runs of exceeding rows shorter than ``min_event_rows`` are dropped (one-row blips);
3. hysteresis: a kept run goes on while the score stays above ``release_ratio`` x threshold and
   ends only once ``release_rows`` rows in a row are at or below that level (the rows of a
   shorter dip belong to the event); kept runs so joined are one event. The defaults (1.0, 1)
   leave the runs as they are;
4. events at most ``merge_gap_rows`` rows apart are merged into one event (the rows between
   become part of it).
Events never cross a gap in time (the ``groups`` passed in).

``assign_events`` decides a whole series at once; ``decide_events`` decides what a batch of a
stream can, after the state earlier batches carried (``pipeline.detector.stream``), so that
cutting a series into batches changes no flag.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from pipeline.config import EventsConfig


def assign_events(score: np.ndarray, threshold: float, groups: np.ndarray, config: EventsConfig) -> np.ndarray:
    """Event number per row (1, 2, ...; 0 = not flagged).

    Args:
        score: per-row scores in time order, NaN where unscored; shape (n_rows,).
        groups: per-row key; an event never spans two keys (source and segment).
    """
    n = score.size
    exceeds = np.nan_to_num(score, nan=-np.inf) > threshold
    new_group = np.concatenate([[True], groups[1:] != groups[:-1]]) if n else np.zeros(0, bool)
    previous = np.concatenate([[False], exceeds[:-1]])
    following = np.concatenate([exceeds[1:], [False]])
    next_new_group = np.concatenate([new_group[1:], [True]])
    starts = np.flatnonzero(exceeds & (~previous | new_group))
    ends = np.flatnonzero(exceeds & (~following | next_new_group))
    keep = ends - starts + 1 >= config.min_event_rows
    starts, ends = release_ends(score, threshold, groups, config, starts[keep], ends[keep])
    event = np.zeros(n, dtype=np.int64)
    number = 0
    last_end = -1
    for start, end in zip(starts, ends):
        mergeable = number and start - last_end - 1 <= config.merge_gap_rows and groups[start] == groups[last_end]
        if not mergeable:
            number += 1
            start_fill = start
        else:
            start_fill = last_end + 1
        event[start_fill : end + 1] = number
        last_end = end
    return event


def hysteresis_on(config: EventsConfig) -> bool:
    return config.release_ratio < 1 or config.release_rows > 1


def release_ends(
    score: np.ndarray, threshold: float, groups: np.ndarray, config: EventsConfig, starts: np.ndarray, ends: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Rule 3 (hysteresis): kept runs ``starts``/``ends`` (first and last rows) -> the events' first and last rows.

    Stretches above the release level joined across dips shorter than ``release_rows`` (never
    across a group) form components; a kept run ends where its component ends, and kept runs in
    one component become one event.
    """
    if not hysteresis_on(config) or starts.size == 0:
        return starts, ends
    above = np.nan_to_num(score, nan=-np.inf) > threshold * config.release_ratio
    new_group = np.concatenate([[True], groups[1:] != groups[:-1]])
    up_s = np.flatnonzero(above & (~np.concatenate([[False], above[:-1]]) | new_group))
    up_e = np.flatnonzero(above & (~np.concatenate([above[1:], [False]]) | np.concatenate([new_group[1:], [True]])))
    dip = up_s[1:] - up_e[:-1] - 1
    joined = (dip < config.release_rows) & (groups[up_s[1:]] == groups[up_e[:-1]])
    component = np.concatenate([[0], np.cumsum(~joined)])
    component_end = up_e[np.flatnonzero(np.concatenate([component[1:] != component[:-1], [True]]))]
    # A kept run lies above the threshold, hence above the release level: inside one stretch.
    of_run = component[np.searchsorted(up_s, ends, side="right") - 1]
    first = np.concatenate([[True], of_run[1:] != of_run[:-1]])
    return starts[first], component_end[of_run[first]]


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
        groups_all = np.concatenate([np.full(m, open_segment, dtype=np.int64), groups.astype(np.int64)])
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

    n_decided, open_id = _undecided_from(score, groups, threshold, config, event, synthetic, open_event_id, open_segment)
    return EventDecision(event=event, n_decided=n_decided, open_event_id=open_id, next_event_id=number)


def _undecided_from(score, groups, threshold, config, event, synthetic, open_event_id, open_segment) -> tuple[int, int | None]:
    """First row whose flag later rows could still change, and the event they could extend."""
    n = score.size
    if n == 0:
        return 0, open_event_id
    exceeds = np.nan_to_num(score.astype(np.float64), nan=-np.inf) > threshold
    last_group = groups[-1]
    in_group = np.flatnonzero(groups != last_group)
    group_start = int(in_group[-1]) + 1 if in_group.size else 0
    if event[-1] != 0:  # an event still going on: decided, and the next rows may extend it
        return n, int(event[-1])
    if exceeds[-1]:
        below = np.flatnonzero(~exceeds[group_start:])
        candidate = group_start + (int(below[-1]) + 1 if below.size else 0)  # a short run that may grow
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
    # A run starting there could still merge, or (hysteresis) the dip after the event is still short.
    if candidate <= last_end + max(config.merge_gap_rows, config.release_rows - 1) + 1:
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
