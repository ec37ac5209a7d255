"""``train`` for a fleet: one model, scaler, threshold and error normalisation per asset.

The assets are taken a wave at a time (``fleet_waves``: memory follows the wave, not the fleet),
each wave fitted in parallel (``pipeline.engines``), then logged and registered here,
one nested MLflow run per asset under one parent run with the fleet table. An asset that cannot
be trained (too little normal data, unusable rows) is reported in ``fleet.csv``; the others go on.
"""

from __future__ import annotations

import logging
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from pipeline.config import PipelineConfig, to_yaml
from pipeline.data.assets import NormalPeriods, asset_key, read_normal_periods
from pipeline.data.files import discover_files
from pipeline.data.fleet import FleetInput, fleet_waves, validate_asset
from pipeline.data.loading import LoadedInput
from pipeline.detector.fitting import normal_mask, open_normal_stretch, rows_needed
from pipeline.engines import Failed, map_assets, wave_size
from pipeline.errors import InputError
from pipeline.jobs.common import describe_inputs
from pipeline.jobs.fleet_common import (
    asset_model_name,
    asset_tags,
    fit_asset_task,
    fit_shared_model,
    fit_task,
    fleet_ingest_tag,
    log_fleet_summary,
    write_bundle_files,
)
from pipeline.jobs.review import latest_reviews, verdict_moves
from pipeline.jobs.train import log_training_input, record_fit
from pipeline.reports.fleet import AssetSummary, fleet_events
from pipeline.store import atomic
from pipeline.store.names import BUNDLE_FOLDER, CONFIG_ARTIFACT, QUARANTINE_ARTIFACT
from pipeline.tracking import Tracker
from pipeline.utc import iso_ns

log = logging.getLogger(__name__)


@dataclass
class FleetOutcome:
    """What a fleet command did: ``fleet.csv``'s rows and the problems that make it exit 2."""

    run_id: str
    fleet: pd.DataFrame
    problems: list[str]  # one line each: an asset not trained or scored, a file or rows set aside


def train_fleet_job(inputs: list[str | Path], config: PipelineConfig, model_name: str, tracking_uri: str | None) -> FleetOutcome:
    """Train and register one model per asset of the inputs (``ingest.asset_column`` or ``ingest.asset_folders``)."""
    tracker = Tracker(tracking_uri, model_name)
    files = discover_files(inputs)
    run_name = f"train fleet {model_name} {describe_inputs(inputs)}"
    tags = {"model_name": model_name, "fleet": model_name, **fleet_ingest_tag(config.ingest)}
    with tracker.run("train", run_name=run_name, tags=tags) as run_id:
        tracker.log_params({"model_name": model_name, "inputs": ", ".join(name for name, _ in files), **config.flat()})
        tracker.log_text(to_yaml(config), CONFIG_ARTIFACT)
        problems = []

        def set_aside(wave: FleetInput) -> None:
            problems.extend(wave.problems())
            if len(wave.rejected):
                with tempfile.TemporaryDirectory() as tmp:
                    tracker.log_artifact(atomic.write_csv(wave.rejected, Path(tmp) / QUARANTINE_ARTIFACT))

        summaries = train_in_waves(tracker, model_name, files, config, on_wave=set_aside)
        for summary in summaries.values():
            if summary.status != "ok":
                problems.append(f"asset {summary.asset}: {summary.status}")
        table = log_fleet_summary(tracker, summaries.values(), fleet_events({}))
    log.info("trained %d of %d asset(s) of fleet %s", int((table["status"] == "ok").sum()), len(table), model_name)
    return FleetOutcome(run_id, table, problems)


def train_in_waves(
    tracker: Tracker,
    model_name: str,
    files: list[tuple[str, Path]],
    config: PipelineConfig,
    only: list[str] | None = None,
    on_wave: Callable[[FleetInput], None] | None = None,
    whole_stretches: bool = False,
) -> dict[str, AssetSummary]:
    """Train these assets (every asset when None) on ``files``, a wave at a time; ``on_wave`` sees
    each wave first. ``whole_stretches`` (``run``): an asset whose normal stretch is still open
    waits (``open_normal_stretch``), so that cutting its series into batches trains the same model."""
    periods = read_normal_periods(Path(config.training.normal_periods)) if config.training.normal_periods else None
    trained = {}
    for wave in fleet_waves(files, config.ingest, fit_wave_size(config), only):
        if on_wave:
            on_wave(wave)
        trained |= train_assets(tracker, model_name, wave.pieces, config, periods, files, whole_stretches)
    return trained


def fit_wave_size(config: PipelineConfig) -> int:
    """Assets fitted per wave: the engine's wave, or the whole fleet for a shared model (trained on every asset's windows)."""
    return sys.maxsize if config.fleet.shared_model else wave_size(config.engine)


def train_assets(
    tracker: Tracker,
    model_name: str,
    pieces: dict[str, list],
    config: PipelineConfig,
    periods: NormalPeriods | None,
    files: list[tuple[str, Path]],
    whole_stretches: bool = False,
) -> dict[str, AssetSummary]:
    """Fit the assets that have enough normal data (in parallel), then log and register each in a nested run."""
    summaries: dict[str, AssetSummary] = {}
    loaded, tasks, moves = {}, {}, {}
    verdicts = latest_reviews(tracker, model_name)
    with tempfile.TemporaryDirectory(prefix="fleet-bundles-") as bundles:
        for asset in sorted(pieces):
            ready = _ready_to_fit(asset, pieces[asset], config, periods, summaries, whole_stretches)
            if ready is not None:
                loaded[asset] = ready
                table = ready.result.table
                in_period = periods.mask(asset, table["timestamp"]) if periods else None
                mine = verdicts[verdicts["asset"] == asset] if len(verdicts) else verdicts
                moved, moves[asset] = verdict_moves(table, config, mine, in_period)
                tasks[asset] = fit_task(ready, config, in_period, moved)
        fits = fit_shared_model(tasks, config) if config.fleet.shared_model else map_assets(fit_asset_task, tasks, config.engine)
        for asset, fitted in fits.items():
            if isinstance(fitted, Failed):
                summaries[asset].status = f"not trained: {fitted.reason}"
                continue
            fit, bundle = fitted
            folder = write_bundle_files(bundle, Path(bundles) / asset_key(asset) / BUNDLE_FOLDER)
            summaries[asset] = _register(tracker, model_name, asset, loaded[asset], folder, fit, config, files, moves[asset])
    return summaries


def _ready_to_fit(
    asset, pieces, config: PipelineConfig, periods: NormalPeriods | None, summaries, whole_stretches: bool = False
) -> LoadedInput | None:
    """The asset's validated stream when it has enough normal rows to train; else its summary says why."""
    rows_in = sum(len(p.frame) for p in pieces)
    summaries[asset] = AssetSummary(asset, rows_in=rows_in)
    try:
        loaded = validate_asset(asset, pieces, config.ingest)
    except InputError as exc:
        summaries[asset].status = f"not trained: {str(exc).removeprefix(f'asset {asset}: ')}"
        summaries[asset].rows_set_aside = rows_in
        return None
    table = loaded.result.table
    summaries[asset].rows_set_aside = len(loaded.result.rejected)
    in_period = periods.mask(asset, table["timestamp"]) if periods else None
    normal, needed = int(normal_mask(table, config, in_period).sum()), rows_needed(config)
    if normal < needed:
        summaries[asset].status = f"not trained: {normal} normal rows, {needed} needed"
        return None
    stretch_end = open_normal_stretch(table, config, periods.for_asset(asset) if periods else None) if whole_stretches else None
    if stretch_end is not None:
        end, last = iso_ns(stretch_end.value), iso_ns(table["timestamp"].max().value)
        summaries[asset].status = f"not trained: its normal stretch runs to {end}, the data so far to {last}"
        return None
    return loaded


def _register(tracker, model_name, asset, loaded: LoadedInput, folder: Path, fit, config, files, moves=None) -> AssetSummary:
    """One nested run for the asset: its input, losses, threshold and registered version (and the rows its verdicts moved)."""
    registered = asset_model_name(model_name, asset)
    tags = {"model_name": registered, **asset_tags(model_name, asset)}
    paths = [path for name, path in files if name in set(loaded.sources)]
    with tracker.run("train", run_name=f"train {registered}", tags=tags, nested=True) as run_id:
        tracker.log_params({"asset": asset, "registered_model": registered})
        log_training_input(tracker, loaded, paths, config)
        tracker.log_metrics(moves or {})
        outcome = record_fit(tracker, loaded, folder, fit, config, registered, run_id, asset_tags(model_name, asset))
    return AssetSummary(
        asset,
        model_version=outcome.model_version,
        threshold=outcome.threshold,
        rows_in=outcome.rows_in,
        rows_scored=outcome.rows_scored,
        rows_set_aside=len(loaded.result.rejected),
        rows_flagged=outcome.rows_flagged,
        events=outcome.events,
    )
