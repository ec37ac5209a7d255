"""What the fleet jobs share: registry naming, the per-asset tasks the engine runs, the fleet's MLflow summary.

Registry naming: asset ``A`` of fleet ``NAME`` is the registered model ``NAME--<asset_key(A)>``
(``pipeline.data.assets.asset_key``: the id itself when it is made of ``A-Z a-z 0-9 . _ -``), with
the tags ``fleet=NAME`` and ``asset=A`` on the model and each version, so the MLflow UI filters
a fleet with ``tags.fleet = 'NAME'`` and one asset with ``tags.asset = 'A'``. Each has its own
``@champion`` and ``@challenger``.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.config import IngestConfig
from pipeline.data.assets import asset_key
from pipeline.data.fleet import validate_asset
from pipeline.data.ingest import IngestResult
from pipeline.data.loading import LoadedInput
from pipeline.detector.bundle import ModelBundle, load_bundle
from pipeline.detector.fitting import FitReport, fit_bundle, fit_shared
from pipeline.detector.scoring import RowScores, flag_events, score_rows
from pipeline.engines import Failed, Task
from pipeline.errors import PipelineError
from pipeline.reports import plots
from pipeline.reports.fleet import fleet_table
from pipeline.serving import scoring_ingest
from pipeline.store import atomic
from pipeline.store.names import BUNDLE_FOLDER, FLEET_ALARM_PLOT, FLEET_FILE, FLEET_TIMELINE_PLOT, PLOTS_FOLDER
from pipeline.tracking import CHAMPION, Tracker

FLEET_TAG = "fleet"
ASSET_TAG = "asset"
FLEET_INGEST_TAG = "fleet_ingest"  # how a fleet command named its assets (promote --asset reads it back)


def asset_model_name(fleet: str, asset: str) -> str:
    """The registered model name of one asset of a fleet."""
    return f"{fleet}--{asset_key(asset)}"


def asset_tags(fleet: str, asset: str) -> dict[str, str]:
    return {FLEET_TAG: fleet, ASSET_TAG: asset}


def fleet_ingest_tag(ingest: IngestConfig) -> dict[str, str]:
    return {FLEET_INGEST_TAG: json.dumps({"asset_column": ingest.asset_column, "asset_folders": ingest.asset_folders})}


# A bundle travels to and from an engine's worker as its files' bytes, never as a path: on a Spark
# cluster the worker is another machine, with its own disk.
BundleFiles = dict[str, bytes]


def bundle_files(folder: Path) -> BundleFiles:
    """The files of a saved bundle folder, by name."""
    return {path.name: path.read_bytes() for path in sorted(folder.iterdir()) if path.is_file()}


def write_bundle_files(files: BundleFiles, folder: Path) -> Path:
    """Write a bundle's files into ``folder`` (the names are the bundle's own: ``ModelBundle.save``)."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        (folder / Path(name).name).write_bytes(data)
    return folder


def _packed(bundle: ModelBundle) -> BundleFiles:
    with tempfile.TemporaryDirectory(prefix="bundle-") as tmp:
        return bundle_files(bundle.save(Path(tmp) / BUNDLE_FOLDER))


def fit_asset_task(
    rows: pd.DataFrame, result: IngestResult, config, in_period: np.ndarray | None, moved: np.ndarray | None = None
) -> tuple[FitReport, BundleFiles]:
    """Engine task: fit one asset's bundle on its validated ``rows`` (``result`` says the rest; ``moved``:
    the rows its verdicts move); the fit's report and the bundle's files."""
    bundle, fit = fit_bundle(replace(result, table=rows), config, in_period, moved)
    return fit, _packed(bundle)


def score_asset_task(rows: pd.DataFrame, files: BundleFiles, batch_size: int | None = None) -> tuple[RowScores, np.ndarray]:
    """Engine task: the row scores and event numbers of one asset's validated ``rows`` under the bundle of ``files``."""
    with tempfile.TemporaryDirectory(prefix="bundle-") as tmp:
        bundle = load_bundle(write_bundle_files(files, Path(tmp) / BUNDLE_FOLDER))
    scores = score_rows(bundle, rows, batch_size)
    return scores, flag_events(bundle, scores)


def fit_shared_model(tasks: dict[str, Task], config) -> dict[str, tuple[FitReport, BundleFiles] | Failed]:
    """``fleet.shared_model``: one autoencoder for the assets of ``tasks`` (trained here, as one task),
    each asset's report and bundle files as ``fit_asset_task`` gives them; every asset ``Failed``
    when the shared fit is impossible."""
    if not tasks:
        return {}
    results = {asset: replace(task.args[0], table=task.rows) for asset, task in tasks.items()}
    try:
        in_periods = {asset: task.args[2] for asset, task in tasks.items()}
        fitted = fit_shared(results, config, in_periods, {asset: task.args[3] for asset, task in tasks.items()})
    except PipelineError as exc:
        return {asset: Failed(f"shared model: {exc}") for asset in tasks}
    return {asset: (fit, _packed(bundle)) for asset, (bundle, fit) in fitted.items()}


def champion_input(
    tracker: Tracker, model_name: str, asset: str, pieces: list
) -> tuple[ModelBundle, BundleFiles, str, LoadedInput]:
    """An asset's ``@champion`` (its bundle, the bundle's files, its version) and its rows
    validated as that bundle expects them.

    Raises:
        InputError: the asset has no champion, or its rows cannot be validated.
    """
    registered = asset_model_name(model_name, asset)
    found = tracker.model_version(registered, None, alias=CHAMPION)
    with tracker.downloaded_bundle(registered, found.version) as folder:
        bundle, files = load_bundle(folder), bundle_files(folder)
    loaded = validate_asset(
        asset, pieces, scoring_ingest(bundle), bundle.sensors, bundle.timestamp_column, **bundle.input_hints()
    )
    return bundle, files, found.version, loaded


def fit_task(loaded: LoadedInput, config, in_period: np.ndarray | None, moved: np.ndarray | None = None) -> Task:
    """The engine task that fits one asset: its rows travel as rows, the rest of its ingest result beside them."""
    result = loaded.result
    return Task(result.table, (replace(result, table=result.table.iloc[:0]), config, in_period, moved))


def log_fleet_summary(tracker: Tracker, summaries, events: pd.DataFrame, out_dir: Path | None = None) -> pd.DataFrame:
    """``fleet.csv`` (written to ``out_dir`` when given) with its alarm-rate chart and event timeline, on the active run."""
    table = fleet_table(summaries)
    with tempfile.TemporaryDirectory(prefix="fleet-") as tmp:
        folder = Path(tmp)
        path = atomic.write_csv(table, (out_dir or folder) / FLEET_FILE)
        tracker.log_artifact(path)
        tracker.log_artifact(plots.fleet_alarm_rates(table, folder / FLEET_ALARM_PLOT), PLOTS_FOLDER)
        timeline = plots.fleet_timeline(events, list(table["asset"]), folder / FLEET_TIMELINE_PLOT)
        tracker.log_artifact(timeline, PLOTS_FOLDER)
    noisiest = table.dropna(subset=["alarm_rate"]).sort_values("alarm_rate", ascending=False).head(3)
    tracker.log_metrics(
        {
            "assets": len(table),
            "assets_ok": int((table["status"] == "ok").sum()),
            "rows_flagged": float(table["rows_flagged"].sum()),
            "events": float(table["events"].sum()),
        }
    )
    tracker.set_tags({"noisiest_assets": ", ".join(f"{a} ({r:.1%})" for a, r in zip(noisiest["asset"], noisiest["alarm_rate"]))})
    return table
