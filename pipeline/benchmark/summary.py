"""The SKAB benchmark's summary: per detector, point-wise and event-wise figures, score quality
and the oracle analysis figure, overall, per group and per file; and its Markdown rendering.

Point-wise and event-wise counts are summed over files before the figures (micro-average).
ROC-AUC and PR-AUC are computed per file on the raw score (detectors fit one model per file, so
scores of different files are not on one scale) and averaged over the files that have both
normal and anomalous test rows. The oracle is, per file, the threshold on the raw score that
maximises that file's point-wise F1, chosen with the labels; its counts are summed. It is an
analysis figure (does the score separate, or is the threshold wrong?), never a result.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from pipeline.evaluation.event_metrics import EventCounts, event_counts, oracle_counts, score_quality
from pipeline.evaluation.metrics import Counts, confusion

GROUPS = ("valve1", "valve2", "other")
ORACLE_NOTE = "analysis figure: per-file threshold chosen with the test labels to maximise F1; not a result"


@dataclass
class DetectorResult:
    counts: dict[str, Counts] = field(default_factory=dict)  # file key -> point-wise counts
    events: dict[str, EventCounts] = field(default_factory=dict)
    quality: dict[str, dict[str, float | None]] = field(default_factory=dict)  # ROC-AUC, PR-AUC
    oracle: dict[str, Counts] = field(default_factory=dict)
    seconds: float = 0.0

    def add(self, key: str, anomaly: np.ndarray, score: np.ndarray, labels: np.ndarray) -> None:
        """Record one file's flags and raw scores (shape (n_test_rows,)) against its labels."""
        self.counts[key] = confusion(anomaly, labels)
        self.events[key] = event_counts(anomaly, labels)
        self.quality[key] = score_quality(score, labels)
        self.oracle[key] = oracle_counts(score, labels)

    def figures(self, keys: list[str]) -> dict[str, Any]:
        """Point-wise counts and figures of the files ``keys``, with their event, score and oracle figures."""
        quality = {}
        for name in ("roc_auc", "pr_auc"):
            values = [self.quality[k][name] for k in keys if self.quality[k][name] is not None]
            quality[name] = float(np.mean(values)) if values else None
        quality["files"] = sum(self.quality[k]["roc_auc"] is not None for k in keys)
        return {
            **sum((self.counts[k] for k in keys), Counts()).figures(),
            "events": sum((self.events[k] for k in keys), EventCounts()).figures(),
            "score_quality": quality,
            "oracle": {**sum((self.oracle[k] for k in keys), Counts()).figures(), "note": ORACLE_NOTE},
        }


def summarise(
    results: dict[str, DetectorResult], files: list[tuple[str, str]], wall_seconds: float, train_rows: int
) -> dict[str, Any]:
    """Figures per detector: overall, per group and per file (``files``: (group, key) pairs), with seconds."""
    detectors = {}
    for name, result in results.items():
        groups = {}
        for group in GROUPS:
            keys = [key for g, key in files if g == group]
            if keys:
                groups[group] = result.figures(keys)
        detectors[name] = {
            "overall": result.figures([key for _, key in files]),
            "groups": groups,
            "files": {key: result.figures([key]) for _, key in files},
            "seconds": round(result.seconds, 2),
        }
    return {
        "protocol": (
            f"SKAB outlier detection: fit on rows 0..{train_rows - 1}, predict rows {train_rows}..end, "
            "point-wise and event-wise counts summed over files; ROC/PR-AUC per file, averaged"
        ),
        "files": len(files),
        "wall_seconds": round(wall_seconds, 2),
        "detectors": detectors,
    }


def _pct(value: float | None) -> str:
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{100 * value:.2f} %"


def _num(value: float | None, digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def _point(f: dict[str, Any]) -> str:
    return f"{_num(f['f1'])} / {_pct(f['far'])} / {_pct(f['mar'])}"


def render_markdown(summary: dict[str, Any]) -> str:
    detectors = summary["detectors"]
    lines = [
        "# SKAB benchmark",
        "",
        f"{summary['protocol']}; {summary['files']} files; wall time {summary['wall_seconds']:.1f} s.",
        "",
        "## Point-wise (F1 / FAR / MAR)",
        "",
        "| detector | F1 | FAR | MAR | " + " | ".join(f"{g} F1 / FAR / MAR" for g in GROUPS) + " | seconds |",
        "|---|---|---|---|" + "---|" * len(GROUPS) + "---|",
    ]
    for name, result in detectors.items():
        o = result["overall"]
        cells = [_point(g) if (g := result["groups"].get(group)) else "-" for group in GROUPS]
        row = f"| {name} | {_num(o['f1'])} | {_pct(o['far'])} | {_pct(o['mar'])} | " + " | ".join(cells)
        lines.append(row + f" | {result['seconds']:.1f} |")
    lines += [
        "",
        "## Event-wise",
        "",
        "A labelled anomaly is caught when an event (a run of flagged rows) overlaps it; "
        "an event is false when it overlaps none.",
        "",
        "| detector | scope | event precision | event recall | event F1 | caught / anomalies | false events | "
        "false events per 1,000 normal rows | median delay (rows) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, result in detectors.items():
        for scope, figures in [("overall", result["overall"]), *result["groups"].items()]:
            e = figures["events"]
            lines.append(
                f"| {name} | {scope} | {_num(e['event_precision'])} | {_num(e['event_recall'])} | {_num(e['event_f1'])} | "
                f"{e['caught']} / {e['anomalies']} | {e['false_events']} | {_num(e['false_events_per_1000_normal_rows'], 2)} | "
                f"{_num(e['median_delay_rows'], 0)} |"
            )
    lines += [
        "",
        "## Score quality and the oracle threshold (analysis figures)",
        "",
        "ROC-AUC and PR-AUC of the raw score, per file, averaged. The oracle threshold is chosen per file **with the test "
        "labels** to maximise F1: an analysis figure that separates a score that cannot tell from a threshold that is "
        "wrong, never a result.",
        "",
        "| detector | ROC-AUC | PR-AUC | oracle F1 / FAR / MAR | " + " | ".join(f"{g} oracle" for g in GROUPS) + " |",
        "|---|---|---|---|" + "---|" * len(GROUPS),
    ]
    for name, result in detectors.items():
        o = result["overall"]
        q = o["score_quality"]
        cells = [_point(g["oracle"]) if (g := result["groups"].get(group)) else "-" for group in GROUPS]
        row = f"| {name} | {_num(q['roc_auc'])} | {_num(q['pr_auc'])} | {_point(o['oracle'])} | "
        lines.append(row + " | ".join(cells) + " |")
    names = list(detectors)
    lines += ["", "## Per file (F1 / FAR / MAR)", "", "| file | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    keys = list(next(iter(detectors.values()))["files"]) if names else []
    for key in keys:
        lines.append(f"| {key} | " + " | ".join(_point(detectors[name]["files"][key]) for name in names) + " |")
    return "\n".join(lines) + "\n"
