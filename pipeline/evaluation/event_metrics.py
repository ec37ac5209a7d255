"""Event-wise figures, as an operator judges alarms, and threshold-free figures of a raw score.

An *event* is a run of consecutive flagged rows; a *labelled anomaly* is a run of consecutive
rows labelled 1. Per file (``EventCounts`` add up over files with ``+``):

- a labelled anomaly is *caught* when some flagged row lies inside it; its *detection delay* is
  the number of rows from its first row to its first flagged row (0 = flagged at once);
- an event is *true* when it overlaps some labelled anomaly, *false* when it overlaps none;
- event precision = true events / events, event recall = caught anomalies / anomalies, event
  F1 their harmonic mean; false events per 1,000 normal rows = 1000 * false events / normal rows.

``score_quality`` gives ROC-AUC and PR-AUC (average precision) of the raw score on one file's
rows, and ``oracle_counts`` the point-wise counts at the threshold that maximises that file's
F1. The oracle reads the labels: it is an analysis figure (can the score tell at all, or is the
threshold wrong?), never a result.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from sklearn.metrics import average_precision_score, roc_auc_score

from pipeline.evaluation.metrics import Counts, paired_flags


def runs(flags: np.ndarray) -> list[tuple[int, int]]:
    """(first, last) row of each run of consecutive true values, in order (both inclusive)."""
    flags = np.asarray(flags).astype(bool)
    edges = np.diff(np.concatenate([[0], flags.astype(np.int8), [0]]))
    return list(zip(np.flatnonzero(edges == 1).tolist(), (np.flatnonzero(edges == -1) - 1).tolist()))


@dataclass(frozen=True)
class EventCounts:
    anomalies: int = 0  # labelled anomalies
    caught: int = 0  # of them, overlapped by an event
    events: int = 0  # runs of flagged rows
    true_events: int = 0  # of them, overlapping a labelled anomaly
    normal_rows: int = 0
    delays: tuple[int, ...] = field(default_factory=tuple)  # rows to the first flag, per caught anomaly

    def __add__(self, other: EventCounts) -> EventCounts:
        return EventCounts(
            self.anomalies + other.anomalies,
            self.caught + other.caught,
            self.events + other.events,
            self.true_events + other.true_events,
            self.normal_rows + other.normal_rows,
            self.delays + other.delays,
        )

    @property
    def false_events(self) -> int:
        return self.events - self.true_events

    def figures(self) -> dict[str, float | int | None]:
        """Counts and figures, JSON-ready (undefined figures are None)."""
        precision = self.true_events / self.events if self.events else None
        recall = self.caught / self.anomalies if self.anomalies else None
        f1 = None
        if precision is not None and recall is not None:
            f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        return {
            "anomalies": self.anomalies,
            "caught": self.caught,
            "events": self.events,
            "false_events": self.false_events,
            "event_precision": precision,
            "event_recall": recall,
            "event_f1": f1,
            "false_events_per_1000_normal_rows": 1000 * self.false_events / self.normal_rows if self.normal_rows else None,
            "median_delay_rows": float(np.median(self.delays)) if self.delays else None,
        }


def event_counts(flags: np.ndarray, labels: np.ndarray) -> EventCounts:
    """Event-wise counts of one file's 0/1 flags against its 0/1 labels, both of shape (n_rows,).

    Raises:
        ValueError: the two arrays differ in length.
    """
    flags, labels = paired_flags(flags, labels, "flags")
    delays = []
    for first, last in runs(labels):
        hit = np.flatnonzero(flags[first : last + 1])
        if hit.size:
            delays.append(int(hit[0]))
    events = runs(flags)
    true_events = sum(bool(labels[first : last + 1].any()) for first, last in events)
    return EventCounts(
        anomalies=len(runs(labels)),
        caught=len(delays),
        events=len(events),
        true_events=true_events,
        normal_rows=int(np.sum(~labels)),
        delays=tuple(delays),
    )


def _finite(score: np.ndarray) -> np.ndarray:
    # Rows without a score rank below every scored row.
    score = np.asarray(score, dtype=np.float64)
    low = np.nanmin(score) - 1.0 if np.isfinite(score).any() else 0.0
    return np.where(np.isfinite(score), score, low)


def score_quality(score: np.ndarray, labels: np.ndarray) -> dict[str, float | None]:
    """ROC-AUC and PR-AUC (average precision) of a raw score against 0/1 labels; None with one class."""
    labels = np.asarray(labels).astype(bool)
    if labels.all() or not labels.any():
        return {"roc_auc": None, "pr_auc": None}
    score = _finite(score)
    return {"roc_auc": float(roc_auc_score(labels, score)), "pr_auc": float(average_precision_score(labels, score))}


def oracle_counts(score: np.ndarray, labels: np.ndarray) -> Counts:
    """Point-wise counts when a row is flagged at ``score >= t`` for the ``t`` that maximises F1.

    Analysis only: ``t`` is chosen with the labels. Ties in the score are flagged together.
    """
    labels = np.asarray(labels).astype(bool)
    score = _finite(score)
    positives = int(labels.sum())
    if score.size == 0 or positives == 0:
        return Counts(tn=int(score.size))
    order = np.argsort(-score, kind="stable")
    ranked, hits = score[order], labels[order]
    last_of_tie = np.flatnonzero(np.concatenate([ranked[1:] != ranked[:-1], [True]]))
    tp = np.cumsum(hits)[last_of_tie]
    fp = last_of_tie + 1 - tp
    f1 = tp / (tp + (fp + (positives - tp)) / 2)
    best = int(np.argmax(f1))
    tp_best, fp_best = int(tp[best]), int(fp[best])
    return Counts(tp=tp_best, fp=fp_best, fn=positives - tp_best, tn=int(score.size - positives - fp_best))
