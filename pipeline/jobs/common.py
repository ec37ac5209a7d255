"""What the jobs share: the registered bundle, the inputs' description and their MLflow logging."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.data.loading import LoadedInput
from pipeline.detector.bundle import ModelBundle, load_bundle
from pipeline.detector.scoring import RowScores, flag_events, score_rows
from pipeline.reports import explain, plots
from pipeline.reports.tables import summarise_events
from pipeline.store.names import PLOTS_FOLDER, RECONSTRUCTION_ARTIFACT, event_plot
from pipeline.tracking import CHAMPION, DATASET_SAMPLE_ROWS, TAG_LIMIT, Tracker, inputs_digest

log = logging.getLogger(__name__)
SET_ASIDE_TAG = "set_aside_over_limit"


def warn_set_aside(tracker: Tracker, quality: dict) -> list[str]:
    """Log and tag (``set_aside_over_limit``) the files with more than ``ingest.max_set_aside_share``
    of their rows set aside; returns their one-line descriptions (empty when none)."""
    lines = list(quality.get("set_aside_over_limit", []))
    for line in lines:
        log.warning("%s", line)
    if lines:
        tracker.set_tags({SET_ASIDE_TAG: "; ".join(lines)[:TAG_LIMIT]})
    return lines


def load_registered(tracker: Tracker, model_name: str, version: str | None = None) -> tuple[ModelBundle, str]:
    """The bundle of a version of ``model_name``: the given one, else the one holding ``champion``."""
    found = tracker.model_version(model_name, version, alias=CHAMPION)
    with tracker.downloaded_bundle(model_name, found.version) as folder:
        return load_bundle(folder), found.version


def describe_inputs(inputs: list[str | Path]) -> str:
    """'name' of one input, 'first +N' of several (for run names and tags)."""
    names = [Path(p).name or str(p) for p in inputs]
    return names[0] if len(names) == 1 else f"{names[0]} +{len(names) - 1}"


def log_dataset(tracker: Tracker, loaded: LoadedInput, paths: list[Path], name: str, context: str) -> None:
    """The input as an MLflow dataset: the files' digest, the validated table's schema and row
    count, a sample of its first rows, the files' place (nothing that visits every row)."""
    table = loaded.result.table
    columns = ["timestamp", *loaded.result.sensors]
    sample = table.head(DATASET_SAMPLE_ROWS)[columns]  # head first: no copy of the whole table
    tracker.log_dataset(sample, name, inputs_digest(loaded.digests), paths, context, n_rows=len(table))


def log_event_plots(tracker: Tracker, bundle: ModelBundle, details: list[explain.EventDetail], folder: Path) -> None:
    """Per-sensor shares and expected-vs-measured signals of the top events (``explain.event_details``),
    as ``plots/event_<id>.png`` (drawn into a new subfolder of ``folder``, logged in one call)."""
    drawn = folder / "event-plots"
    drawn.mkdir()
    for detail in details:
        plots.event_detail(detail, bundle.threshold.value, drawn / event_plot(detail.event_id))
    if any(drawn.iterdir()):
        tracker.log_artifacts(drawn, PLOTS_FOLDER)


def score_loaded(
    bundle: ModelBundle, loaded: LoadedInput, model_version: str, run_id: str
) -> tuple[RowScores, np.ndarray, pd.DataFrame]:
    """Row scores, event number per row and the events (``anomalies.csv`` rows) of loaded files."""
    table = loaded.result.table
    rows = score_rows(bundle, table, progress=True)
    event = flag_events(bundle, rows)
    events = summarise_events(table, rows, event, bundle.threshold.value, bundle.sensors, model_version, run_id)
    return rows, event, events


def log_reconstruction_quality(tracker: Tracker, quality: list[dict]) -> None:
    """Per sensor, how well the model rebuilds it on held-out windows (``FitReport.reconstruction``):
    metrics ``reconstruction.<sensor>.rmse`` (original units) and ``.variance_explained``, and the
    table as ``reconstruction_quality.json``, so a reviewer sees which sensors the model could not learn."""
    if not quality:
        return
    metrics = {}
    for row in quality:
        key = "".join(c if c.isalnum() or c in "_-. /" else "_" for c in row["sensor"])
        metrics[f"reconstruction.{key}.rmse"] = row["rmse"]
        if np.isfinite(row["variance_explained"]):
            metrics[f"reconstruction.{key}.variance_explained"] = row["variance_explained"]
    tracker.log_metrics(metrics)
    tracker.log_dict({"held_out": "calibration windows", "sensors": quality}, RECONSTRUCTION_ARTIFACT)
