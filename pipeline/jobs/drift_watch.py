"""Drift in the jobs: each scored batch's drift report, its MLflow metrics, and staleness across
``run`` batches (the pure figures: ``pipeline.detector.drift``)."""

from __future__ import annotations

import logging

import pandas as pd

from pipeline.config import DriftConfig
from pipeline.detector.bundle import ModelBundle
from pipeline.detector.drift import advance_streaks, batch_counts, drift_metrics, report_from_counts, stale_sensors
from pipeline.reports.fleet import AssetSummary
from pipeline.store.state import RunState
from pipeline.tracking import TAG_LIMIT, Tracker

log = logging.getLogger(__name__)
STALE_TAG = "stale"  # on a run whose model is stale: the sensors and their batches past the limits
_said = False  # a model without a training reference is said once per process


def batch_drift(bundle: ModelBundle, table: pd.DataFrame, limits: DriftConfig) -> dict:
    """The batch's drift report for ``quality.json`` (``drift_report``); a model trained before drift
    was measured gets ``computed: false``, and one log line per process saying so."""
    return counted_drift(bundle, batch_counts(bundle.sensor_reference, table, bundle.sensors), limits)


def counted_drift(bundle: ModelBundle, counts: dict, limits: DriftConfig) -> dict:
    """``batch_drift`` of a batch from its ``batch_counts`` added up over its pieces."""
    global _said
    report = report_from_counts(bundle.sensor_reference, counts, limits)
    if not report["computed"] and not _said:
        log.warning("drift not computed: %s; train a new version to measure it", report["reason"])
        _said = True
    return report


def log_drift(tracker: Tracker, report: dict, prefix: str = "drift") -> None:
    """The report's figures as metrics of the active run (the MLflow UI charts them over runs)."""
    metrics = drift_metrics(report, prefix)
    if metrics:
        tracker.log_metrics(metrics)


def advance(state: RunState, stream: str, report: dict, limits: DriftConfig) -> list[str]:
    """Count this batch in the stream's streaks (``state.drift``, saved with the batch); the stale sensors."""
    state.drift[stream] = advance_streaks(state.drift.get(stream, {}), report, limits)
    return stale_sensors(state.drift[stream], limits)


def stale_line(model: str, version: str, stale: list[str], streaks: dict[str, int], report: dict) -> str:
    """One line: which sensors made the model stale, for how many batches, and their latest figures."""
    figures = report.get("sensors", {})
    parts = []
    for sensor in stale:
        f = figures.get(sensor, {})
        latest = f", psi {f['psi']:.2f}, shift {f['mean_shift_sigma']:+.1f} sd" if "psi" in f else ""
        parts.append(f"{sensor} ({streaks[sensor]} batches{latest})")
    return (
        f"{model} version {version} is stale: past the drift limits for {streaks[stale[0]]}+ batches in a row: "
        f"{'; '.join(parts)}; retrain (run --retrain, or --retrain-when-stale) and promote"
    )


def tag_stale(tracker: Tracker, lines: list[str]) -> None:
    """Say each stale line once in the log and tag the active run ``stale``."""
    for line in lines:
        log.warning("%s", line)
    tracker.set_tags({STALE_TAG: "; ".join(lines)[:TAG_LIMIT]})


def summarise(summary: AssetSummary, report: dict, stale: list[str] = ()) -> None:
    """The batch's drift in its asset's ``fleet.csv`` row: the largest PSI and the sensors past the limits."""
    if not report.get("computed"):
        return
    values = [f["psi"] for f in report["sensors"].values() if "psi" in f]
    summary.drift_max_psi = max(values) if values else None
    summary.drifting_sensors = "; ".join(f"{s} (stale)" if s in stale else s for s in report["drifting"])
