"""``score`` for a fleet: each asset with its own ``@champion``; reports with an ``asset`` column.

Rows of an asset without a model (or whose rows cannot make a stream) keep their rows in
``scores.csv`` with the reason in ``status``, and the command exits 2.
"""

from __future__ import annotations

import contextlib
import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.config import EngineConfig, IngestConfig
from pipeline.data.files import discover_files
from pipeline.data.fleet import read_fleet, set_aside_whole, validate_asset
from pipeline.detector.bundle import load_bundle
from pipeline.engines import Failed, Task, map_assets
from pipeline.errors import InputError
from pipeline.jobs.common import describe_inputs
from pipeline.jobs.fleet_common import asset_model_name, asset_tags, fleet_ingest_tag, log_fleet_summary, score_asset_task
from pipeline.jobs.fleet_train import FleetOutcome
from pipeline.reports.fleet import AssetSummary, fleet_events, fleet_scores_schema, set_aside_batches, with_asset
from pipeline.reports.tables import scores_batches, summarise_events
from pipeline.serving import scoring_ingest
from pipeline.store import atomic
from pipeline.store.names import ANOMALIES_FILE, QUALITY_FILE, SCORES_FILE
from pipeline.tracking import CHAMPION, Tracker

log = logging.getLogger(__name__)


def score_fleet_job(
    inputs: list[str | Path], out_dir: Path, model_name: str, tracking_uri: str | None, ingest: IngestConfig, engine: EngineConfig
) -> FleetOutcome:
    """Score each asset of the inputs with its champion and write the fleet reports into ``out_dir``."""
    tracker = Tracker(tracking_uri, model_name)
    files = discover_files(inputs)
    tags = {"model_name": model_name, "fleet": model_name, **fleet_ingest_tag(ingest)}
    with tracker.run("score", run_name=f"score fleet {model_name} {describe_inputs(inputs)}", tags=tags) as run_id:
        tracker.record_input_paths([path for _, path in files])
        fleet = read_fleet(files, ingest)
        summaries = {asset: AssetSummary(asset, rows_in=sum(len(p.frame) for p in fleet.pieces[asset])) for asset in fleet.assets}
        set_aside = [fleet.rejected]
        problems = fleet.problems()
        with contextlib.ExitStack() as downloads:
            ready = {}
            for asset in fleet.assets:
                try:
                    registered = asset_model_name(model_name, asset)
                    found = tracker.model_version(registered, None, alias=CHAMPION)
                    folder = downloads.enter_context(tracker.downloaded_bundle(registered, found.version))
                    bundle = load_bundle(folder)
                    loaded = validate_asset(
                        asset,
                        fleet.pieces[asset],
                        scoring_ingest(bundle),
                        bundle.sensors,
                        bundle.timestamp_column,
                        **bundle.input_hints(),
                    )
                except InputError as exc:
                    reason = f"not scored: {str(exc).removeprefix(f'asset {asset}: ')}"
                    set_aside.append(set_aside_whole(asset, fleet.pieces[asset], f"asset {asset} {reason}"))
                    summaries[asset].status, summaries[asset].rows_set_aside = reason, summaries[asset].rows_in
                    continue
                ready[asset] = (folder, bundle, found.version, loaded)
            tasks = {asset: Task(loaded.result.table, (str(folder),)) for asset, (folder, _, _, loaded) in ready.items()}
            scored = map_assets(score_asset_task, tasks, engine)

        out_dir.mkdir(parents=True, exist_ok=True)
        events, quality, outputs = {}, {}, []
        for asset, (_, bundle, version, loaded) in ready.items():
            result = scored[asset]
            if isinstance(result, Failed):
                summaries[asset].status = f"not scored: {result.reason}"
                continue
            rows, event = result
            events[asset] = summarise_events(
                loaded.result.table, rows, event, bundle.threshold.value, bundle.sensors, version, run_id
            )
            quality[asset] = loaded.quality
            summary = summaries[asset]
            summary.model_version, summary.threshold = version, bundle.threshold.value
            summary.rows_scored, summary.rows_flagged = int(np.isfinite(rows.score).sum()), int((event > 0).sum())
            summary.rows_set_aside, summary.events = len(loaded.result.rejected), len(events[asset])
            outputs.append((asset, loaded, rows, event, bundle.threshold.value))
            _log_asset(tracker, model_name, asset, version, summary)

        sensors = list(dict.fromkeys(s for _, loaded, *_ in outputs for s in loaded.result.sensors))
        schema = fleet_scores_schema(sensors)
        rejected = pd.concat([f for f in set_aside if len(f)] or [fleet.rejected], ignore_index=True)
        atomic.write_csv_batches(_fleet_batches(outputs, rejected, schema), schema, out_dir / SCORES_FILE)
        all_events = fleet_events(events)
        atomic.write_csv(all_events, out_dir / ANOMALIES_FILE)
        atomic.write_text(json.dumps(quality, indent=2), out_dir / QUALITY_FILE)
        tracker.log_artifact(out_dir / ANOMALIES_FILE)
        table = log_fleet_summary(tracker, summaries.values(), all_events, out_dir)
        problems += [f"asset {s.asset}: {s.status}" for s in summaries.values() if s.status != "ok"]
    log.info("scored %d of %d asset(s); reports in %s", len(outputs), len(table), out_dir)
    return FleetOutcome(run_id, table, problems)


def _fleet_batches(outputs, rejected: pd.DataFrame, schema):
    """Asset by asset (sorted), each in input order per source; then the rows no model could score."""
    for asset, loaded, rows, event, threshold in outputs:
        yield from with_asset(scores_batches(loaded.result, rows, event, threshold, loaded.sources), asset, schema)
    yield from set_aside_batches(rejected, schema)


def _log_asset(tracker: Tracker, model_name: str, asset: str, version: str, summary: AssetSummary) -> None:
    registered = asset_model_name(model_name, asset)
    tags = {"model_name": registered, "model_version": version, **asset_tags(model_name, asset)}
    with tracker.run("score", run_name=f"score {registered}", tags=tags, nested=True):
        figures = {k: getattr(summary, k) for k in ("rows_in", "rows_scored", "rows_set_aside", "rows_flagged", "events")}
        tracker.log_metrics({**figures, "threshold": summary.threshold, "alarm_rate": summary.alarm_rate or 0.0})
