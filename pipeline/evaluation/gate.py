"""The promotion gate: may a challenger take ``@champion`` from the champion?

Judged on the same data, scored by both versions:

- with labels that mark at least one anomaly: the challenger's point-wise F1 must not be below
  the champion's minus ``promotion.f1_tolerance``;
- with labels that mark none (every flag is then a false alarm): the challenger's false-alarm
  rate must not exceed the champion's plus ``promotion.alarm_rate_budget``; an F1 of 0 against
  0 says nothing and never promotes;
- without labels: the challenger's alarm rate (flagged / scored rows) must stay within
  ``promotion.alarm_rate_budget``;
- beside any of these, on the periods operators reviewed (``with_reviews``): the challenger
  flags every ``confirmed`` event and fewer rows of the ``false_alarm`` periods than the champion.
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


def with_reviews(decision: GateDecision, challenger: dict[str, float], champion: dict[str, float]) -> GateDecision:
    """The decision with the operators' verdicts beside it (``detector.reviews.review_figures``).

    On the reviewed periods the judged data reaches, the challenger must flag every ``confirmed``
    event, and flag fewer rows of the ``false_alarm`` periods than the champion (or none). Without
    reviewed periods in the data, the decision is unchanged.
    """
    reviewed = challenger.get("confirmed_reviewed", 0.0) + challenger.get("false_alarm_reviewed", 0.0)
    if not reviewed:
        return decision
    confirmed, caught = challenger["confirmed_reviewed"], challenger["confirmed_flagged"]
    false_periods = challenger["false_alarm_reviewed"]
    new, old = challenger["false_alarm_rows_flagged"], champion["false_alarm_rows_flagged"]
    problems = []
    if caught < confirmed:
        problems.append(f"the challenger misses {confirmed - caught:.0f} confirmed event(s)")
    if false_periods and not (new < old or new == 0):
        problems.append("the challenger does not raise fewer alarms on the false alarms than the champion")
    text = (
        f"Verdicts: the challenger flags {caught:.0f} of {confirmed:.0f} confirmed event(s) "
        f"(champion {champion['confirmed_flagged']:.0f}); rows flagged in {false_periods:.0f} false_alarm period(s): "
        f"challenger {new:.0f}, champion {old:.0f}: " + ("; ".join(problems) + "." if problems else "fine.")
    )
    return GateDecision(decision.gate, decision.promoted and not problems, f"{decision.reason} {text}")
