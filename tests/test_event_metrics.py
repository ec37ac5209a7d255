"""Event-wise figures, score quality and the oracle threshold on hand-made label/flag pairs."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.evaluation.event_metrics import EventCounts, event_counts, oracle_counts, runs, score_quality
from pipeline.evaluation.metrics import Counts


def test_runs_of_consecutive_rows():
    assert runs(np.array([0, 1, 1, 0, 1, 0, 0, 1])) == [(1, 2), (4, 4), (7, 7)]
    assert runs(np.zeros(3)) == []
    assert runs(np.ones(2)) == [(0, 1)]


def test_event_counts_by_hand():
    #                 0  1  2  3  4  5  6  7  8  9 10 11 12 13
    labels = np.array([0, 0, 1, 1, 1, 1, 0, 0, 0, 1, 1, 0, 0, 0])
    flags = np.array([1, 0, 0, 0, 1, 1, 1, 0, 0, 0, 0, 0, 1, 1])
    counts = event_counts(flags, labels)
    # anomalies (2..5) and (9..10); events (0), (4..6) and (12..13): only (4..6) overlaps one.
    assert counts == EventCounts(anomalies=2, caught=1, events=3, true_events=1, normal_rows=8, delays=(2,))
    expected = {
        "anomalies": 2,
        "caught": 1,
        "events": 3,
        "false_events": 2,
        "event_precision": 1 / 3,
        "event_recall": 1 / 2,
        "event_f1": 2 * (1 / 3) * (1 / 2) / (1 / 3 + 1 / 2),  # 0.4
        "false_events_per_1000_normal_rows": 1000 * 2 / 8,
        "median_delay_rows": 2.0,
    }
    returned = counts.figures()
    assert returned == pytest.approx(expected)


def test_one_event_spanning_two_anomalies_catches_both_and_counts_once():
    labels = np.array([1, 1, 0, 1, 1, 0])
    flags = np.array([0, 1, 1, 1, 0, 0])
    counts = event_counts(flags, labels)
    assert (counts.anomalies, counts.caught, counts.events, counts.true_events) == (2, 2, 1, 1)
    assert counts.delays == (1, 0)


def test_event_counts_add_over_files_and_undefined_figures_are_none():
    quiet = event_counts(np.zeros(5), np.zeros(5))  # no anomaly, no event
    assert quiet.figures()["event_precision"] is None and quiet.figures()["event_recall"] is None
    assert quiet.figures()["false_events_per_1000_normal_rows"] == 0.0
    alarm = event_counts(np.array([0, 1, 0, 0]), np.zeros(4))  # one false event
    missed = event_counts(np.zeros(4), np.array([0, 1, 1, 0]))  # one missed anomaly
    total = quiet + alarm + missed
    assert total == EventCounts(anomalies=1, caught=0, events=1, true_events=0, normal_rows=5 + 4 + 2, delays=())
    figures = total.figures()
    assert figures["event_precision"] == 0.0 and figures["event_recall"] == 0.0 and figures["event_f1"] == 0.0
    assert figures["median_delay_rows"] is None
    with pytest.raises(ValueError):
        event_counts(np.zeros(3), np.zeros(4))


def test_score_quality_by_hand():
    labels = np.array([0, 0, 1, 1])
    assert score_quality(np.array([0.1, 0.2, 0.3, 0.4]), labels) == {"roc_auc": 1.0, "pr_auc": 1.0}
    # One normal row outranks one anomalous row: 3 of 4 normal/anomalous pairs are ordered right.
    returned = score_quality(np.array([0.1, 0.35, 0.3, 0.4]), labels)
    assert returned["roc_auc"] == pytest.approx(0.75)
    assert returned["pr_auc"] == pytest.approx((1 + 2 / 3) / 2)  # precision 1 at the first hit, 2/3 at the second
    assert score_quality(np.array([0.1, 0.2]), np.array([1, 1])) == {"roc_auc": None, "pr_auc": None}
    # A row without a score ranks lowest.
    assert score_quality(np.array([np.nan, 0.2, 0.3, 0.4]), labels)["roc_auc"] == 1.0


def test_oracle_threshold_maximises_f1_with_the_labels():
    labels = np.array([0, 0, 1, 1, 0, 1])
    score = np.array([0.1, 0.5, 0.6, 0.9, 0.2, 0.4])
    # Thresholds at 0.9: tp 1 (F1 0.5); 0.6: tp 2 (0.8); 0.5: tp 2 fp 1 (0.667); 0.4: tp 3 fp 1 (0.857); lower: worse.
    assert oracle_counts(score, labels) == Counts(tp=3, fp=1, fn=0, tn=2)
    # Tied scores are flagged together.
    assert oracle_counts(np.array([0.5, 0.5, 0.1]), np.array([1, 0, 0])) == Counts(tp=1, fp=1, fn=0, tn=1)
    assert oracle_counts(np.array([0.3, 0.2]), np.array([0, 0])) == Counts(tn=2)
