"""The promotion gate's decision on two versions' figures, and the figures themselves."""

import numpy as np

from pipeline.config import PromotionConfig
from pipeline.evaluation.gate import Gate, gate_figures, judge

CONFIG = PromotionConfig(alarm_rate_budget=0.05, f1_tolerance=0.0)


def test_figures_use_the_one_f1_far_mar():
    flagged = np.array([1, 1, 0, 0, 1, 0], bool)
    labels = np.array([1, 0, 0, 1, 1, 0])
    returned = gate_figures(flagged, np.ones(6, bool), labels)
    expected = {"rows_scored": 6.0, "alarm_rate": 0.5, "f1": 2 / (2 + 1), "far": 1 / 3, "mar": 1 / 3, "labelled_anomalies": 3.0}
    assert returned == expected


def test_labels_with_anomalies_judge_by_f1():
    champion = gate_figures(np.array([1, 0, 0, 0], bool), np.ones(4, bool), np.array([1, 1, 0, 0]))
    better = gate_figures(np.array([1, 1, 0, 0], bool), np.ones(4, bool), np.array([1, 1, 0, 0]))
    worse = gate_figures(np.array([0, 0, 1, 0], bool), np.ones(4, bool), np.array([1, 1, 0, 0]))
    assert judge(better, champion, True, CONFIG).promoted
    decision = judge(worse, champion, True, CONFIG)
    assert decision.gate == Gate.LABELS and not decision.promoted


def test_labels_without_any_anomaly_judge_false_alarms_never_f1_zero_against_zero():
    labels = np.zeros(100)
    scored = np.ones(100, bool)
    champion = gate_figures(np.arange(100) < 2, scored, labels)  # 2 % false alarms
    noisy = gate_figures(np.arange(100) < 30, scored, labels)  # 30 %: F1 is 0 for both
    quiet = gate_figures(np.arange(100) < 5, scored, labels)  # 5 %: within 2 % + the 5 % budget
    assert champion["f1"] == noisy["f1"] == 0.0
    refused = judge(noisy, champion, True, CONFIG)
    assert refused.gate == Gate.FALSE_ALARMS and not refused.promoted and "no anomaly" in refused.reason
    assert judge(quiet, champion, True, CONFIG).promoted


def test_without_labels_the_alarm_rate_must_stay_within_the_budget():
    scored = np.ones(100, bool)
    champion = gate_figures(np.arange(100) < 1, scored, None)
    assert "f1" not in champion
    assert judge(gate_figures(np.arange(100) < 5, scored, None), champion, False, CONFIG).promoted
    decision = judge(gate_figures(np.arange(100) < 6, scored, None), champion, False, CONFIG)
    assert decision.gate == Gate.ALARM_RATE and not decision.promoted
