"""The promotion gate: may a challenger take ``@champion`` from the champion?

Judged on the same data, scored by both versions:

- with labels that mark at least one anomaly: the challenger's point-wise F1 must not be below
  the champion's minus ``promotion.f1_tolerance``;
- with labels that mark none (every flag is then a false alarm): the challenger's false-alarm
  rate must not exceed the champion's plus ``promotion.alarm_rate_budget``; an F1 of 0 against
  0 says nothing and never promotes;
- without labels: the challenger's alarm rate (flagged / scored rows) must stay within
  ``promotion.alarm_rate_budget``.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

import numpy as np

from pipeline.config import PromotionConfig
from pipeline.evaluation.metrics import confusion


class Gate(StrEnum):
    NONE = "none"  # no comparison: first champion, or already champion
    FORCED = "forced"
    LABELS = "labels"
    FALSE_ALARMS = "false_alarms"
    ALARM_RATE = "alarm_rate"


@dataclass(frozen=True)
class GateDecision:
    gate: Gate
    promoted: bool
    reason: str


def gate_figures(flagged: np.ndarray, scored: np.ndarray, labels: np.ndarray | None) -> dict[str, float]:
    """One version's figures on the judged rows: ``rows_scored`` and ``alarm_rate``, and with
    0/1 ``labels`` (n_rows,) also ``f1``, ``far``, ``mar`` (``pipeline.evaluation.metrics``) and
    ``labelled_anomalies``.

    Args:
        flagged: whether each row belongs to an event, shape (n_rows,).
        scored: whether each row has a score, shape (n_rows,).
    """
    flagged, scored = np.asarray(flagged, bool), np.asarray(scored, bool)
    figures = {"rows_scored": float(scored.sum()), "alarm_rate": float(flagged.sum() / max(int(scored.sum()), 1))}
    if labels is not None:
        counts = confusion(flagged, np.asarray(labels) != 0)
        figures.update(
            f1=_finite(counts.f1),
            far=_finite(counts.far),
            mar=_finite(counts.mar),
            labelled_anomalies=float(counts.tp + counts.fn),
        )
    return figures


def _finite(value: float) -> float:
    return 0.0 if np.isnan(value) else value


def judge(challenger: dict[str, float], champion: dict[str, float], labelled: bool, config: PromotionConfig) -> GateDecision:
    """The gate's decision on two versions' ``gate_figures`` (module docstring)."""
    budget, tolerance = config.alarm_rate_budget, config.f1_tolerance
    if labelled and challenger["labelled_anomalies"] > 0:
        promoted = challenger["f1"] >= champion["f1"] - tolerance
        verdict = "not worse." if promoted else "the challenger is worse."
        reason = (
            f"F1 on the labelled data: challenger {challenger['f1']:.4f}, champion {champion['f1']:.4f} "
            f"(tolerance {tolerance:g}): {verdict}"
        )
        return GateDecision(Gate.LABELS, promoted, reason)
    if labelled:
        promoted = challenger["far"] <= champion["far"] + budget
        verdict = (
            "within the champion's plus the budget." if promoted else "more false alarms than the champion's plus the budget."
        )
        reason = (
            f"the labels mark no anomaly, so every flag is a false alarm: false-alarm rate challenger {challenger['far']:.2%}, "
            f"champion {champion['far']:.2%}, budget {budget:.2%}: {verdict}"
        )
        return GateDecision(Gate.FALSE_ALARMS, promoted, reason)
    promoted = challenger["alarm_rate"] <= budget
    reason = (
        f"alarm rate on the data: challenger {challenger['alarm_rate']:.2%} (champion {champion['alarm_rate']:.2%}), "
        f"budget {budget:.2%}: " + ("within budget." if promoted else "over budget.")
    )
    return GateDecision(Gate.ALARM_RATE, promoted, reason)
