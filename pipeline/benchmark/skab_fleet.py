"""SKAB as a fleet: each of its labelled files is an asset; a model per asset against one shared model.

Same protocol as ``benchmark skab`` (GUIDE section 4): each asset's normal data is its rows
0..399 (given as the asset's normal period), its rows 400..end are predicted, and point-wise
counts are summed over the files. ``per_asset`` fits each file alone (``fit_bundle``, what the
``skab`` benchmark's product does); ``shared`` fits one autoencoder on all 34 files' normal
windows, each file scaled and thresholded on its own (``fleet.shared_model``).
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

from pipeline.benchmark.skab import (
    GROUPS,
    LABEL_COLUMNS,
    TRAIN_ROWS,
    DetectorResult,
    discover,
    predict_test_rows,
    read_skab,
    summarise,
)
from pipeline.config import PipelineConfig, with_overrides
from pipeline.data.loading import load_input
from pipeline.detector.fitting import fit_bundle, fit_shared
from pipeline.evaluation.metrics import confusion
from pipeline.store.names import SUMMARY_JSON
from pipeline.tracking import Tracker

log = logging.getLogger(__name__)

MODES = ("per_asset", "shared")


def run_skab_fleet(data_dir: Path, out_dir: Path, tracking_uri: str | None, base: PipelineConfig | None = None) -> dict[str, Any]:
    """Both modes on every labelled file; returns the summary (also ``OUT/summary.json``, and an MLflow run)."""
    files = discover(data_dir)
    frames = {f.key: read_skab(f.path) for f in files}
    # The normal period is given per asset (rows 0..399), so one configuration serves every file.
    config = with_overrides(
        base or PipelineConfig(), {"ingest.timestamp_column": "datetime", "ingest.exclude_columns": LABEL_COLUMNS}
    )
    results = {f.key: load_input([(f.path.name, f.path)], config.ingest).result for f in files}
    in_period = {key: result.table["row"].to_numpy() < TRAIN_ROWS for key, result in results.items()}
    started = time.perf_counter()
    outcomes = {mode: DetectorResult() for mode in MODES}

    tick = time.perf_counter()
    fitted = {key: fit_bundle(results[key], config, in_period[key])[0] for key in results}
    _judge(outcomes["per_asset"], fitted, results, frames)
    outcomes["per_asset"].seconds = time.perf_counter() - tick

    tick = time.perf_counter()
    shared = {key: bundle for key, (bundle, _) in fit_shared(results, config, in_period).items()}
    _judge(outcomes["shared"], shared, results, frames)
    outcomes["shared"].seconds = time.perf_counter() - tick

    summary = summarise(outcomes, files, time.perf_counter() - started)
    summary["protocol"] += "; each file an asset of one fleet: per_asset models vs one shared model"
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / SUMMARY_JSON).write_text(json.dumps(summary, indent=2))
    tracker = Tracker(tracking_uri, "skab-fleet-benchmark")
    with tracker.run("benchmark", run_name="SKAB fleet: per-asset vs shared model"):
        for mode, figures in summary["detectors"].items():
            scopes = {"overall": figures["overall"], **figures["groups"]}
            tracker.log_metrics({f"{mode}.{scope}.{k}": float(v) for scope, f in scopes.items() for k, v in f.items()})
        tracker.log_artifact(out_dir / SUMMARY_JSON)
    return summary


def _judge(outcome: DetectorResult, bundles: dict, results: dict, frames: dict) -> None:
    for key, bundle in bundles.items():
        anomaly, _ = predict_test_rows(bundle, results[key].table, len(frames[key]))
        outcome.counts[key] = confusion(anomaly, frames[key]["anomaly"].to_numpy()[TRAIN_ROWS:])


def render(summary: dict[str, Any]) -> str:
    """One line per mode: overall and per group F1 / FAR / MAR, and seconds."""
    lines = []
    for mode, figures in summary["detectors"].items():
        scopes = [("overall", figures["overall"])] + [(g, figures["groups"][g]) for g in GROUPS if g in figures["groups"]]
        cells = ", ".join(f"{scope} {f['f1']:.3f} / {100 * f['far']:.2f} % / {100 * f['mar']:.2f} %" for scope, f in scopes)
        lines.append(f"  {mode:<10} {cells}; {figures['seconds']:.0f} s")
    return "\n".join(lines)
