"""``score`` for a fleet: each asset with its own ``@champion``; reports with an ``asset`` column.

Rows of an asset without a model (or whose rows cannot make a stream) keep their rows in
``scores.csv`` with the reason in ``status``, and the command exits 2.
"""

from __future__ import annotations

import json
import logging
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa

from pipeline.config import EngineConfig, IngestConfig, ReviewConfig
from pipeline.data.assets import empty_rejected
from pipeline.data.files import discover_files
from pipeline.data.fleet import FleetInput, fleet_waves, set_aside_whole
from pipeline.detector.reviews import annotate
from pipeline.engines import Failed, Task, map_assets, wave_size
from pipeline.errors import InputError
from pipeline.jobs import drift_watch
from pipeline.jobs.common import describe_inputs
from pipeline.jobs.fleet_common import (
    asset_model_name,
    asset_tags,
    champion_input,
    fleet_ingest_tag,
    log_fleet_summary,
    score_asset_task,
)
from pipeline.jobs.fleet_train import FleetOutcome
from pipeline.jobs.review import latest_reviews
from pipeline.reports.fleet import AssetSummary, fleet_events, fleet_scores_schema, set_aside_batches, with_asset
from pipeline.reports.tables import scores_batches, summarise_events
from pipeline.store import atomic
from pipeline.store.names import ANOMALIES_FILE, QUALITY_FILE, scores_file
from pipeline.tracking import Tracker

log = logging.getLogger(__name__)


def score_fleet_job(
    inputs: list[str | Path],
    out_dir: Path,
    model_name: str,
    tracking_uri: str | None,
    ingest: IngestConfig,
    engine: EngineConfig,
    output_format: str = "csv",
) -> FleetOutcome:
    """Score each asset of the inputs with its champion and write the fleet reports into ``out_dir``.

    Assets are taken a wave at a time (``fleet_waves``); each wave's scores are spilled to disk
    and streamed into ``scores.csv`` (or ``scores.parquet``, by ``output_format``: the same
    columns and rows) at the end, so memory follows the wave, not the fleet.
    """
    tracker = Tracker(tracking_uri, model_name)
    files = discover_files(inputs)
    tags = {"model_name": model_name, "fleet": model_name, **fleet_ingest_tag(ingest)}
    with tracker.run("score", run_name=f"score fleet {model_name} {describe_inputs(inputs)}", tags=tags) as run_id:
        tracker.record_input_paths([path for _, path in files])
        done = _Scored()
        with tempfile.TemporaryDirectory(prefix="fleet-scores-") as spill:
            for number, wave in enumerate(fleet_waves(files, ingest, wave_size(engine))):
                done.problems += wave.problems()
                done.set_aside.append(wave.rejected)
                _score_wave(tracker, model_name, run_id, wave, ingest, engine, Path(spill) / f"wave-{number}.arrow", done)
            out_dir.mkdir(parents=True, exist_ok=True)
            schema = fleet_scores_schema(list(dict.fromkeys(done.sensors)))
            rejected = pd.concat([f for f in done.set_aside if len(f)] or [empty_rejected()], ignore_index=True)
            batches = _fleet_batches(done.spills, rejected, schema)
            atomic.write_table_batches(batches, schema, out_dir / scores_file(output_format), output_format)
        all_events = fleet_events(done.events)
        reviews = latest_reviews(tracker, model_name)
        if len(reviews) and len(all_events):
            all_events = annotate(all_events, reviews, ReviewConfig())  # the verdicts, and repeats of reviewed false alarms
        atomic.write_csv(all_events, out_dir / ANOMALIES_FILE)
        atomic.write_text(json.dumps(done.quality, indent=2), out_dir / QUALITY_FILE)
        tracker.log_artifact(out_dir / ANOMALIES_FILE)
        table = log_fleet_summary(tracker, done.summaries.values(), all_events, out_dir)
        problems = done.problems + [f"asset {s.asset}: {s.status}" for s in done.summaries.values() if s.status != "ok"]
    log.info("scored %d of %d asset(s); reports in %s", int((table["status"] == "ok").sum()), len(table), out_dir)
    return FleetOutcome(run_id, table, problems)


@dataclass
class _Scored:
    """What the waves have produced so far (everything but the rows' scores, which are spilled)."""

    summaries: dict[str, AssetSummary] = field(default_factory=dict)
    events: dict[str, pd.DataFrame] = field(default_factory=dict)
    quality: dict[str, dict] = field(default_factory=dict)
    sensors: list[str] = field(default_factory=list)
    set_aside: list[pd.DataFrame] = field(default_factory=list)
    spills: list[Path] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


def _score_wave(tracker, model_name, run_id, wave: FleetInput, ingest, engine, spill: Path, done: _Scored) -> None:
    """Validate and score one wave's assets on the engine; their scores go to ``spill``."""
    for asset in wave.assets:
        done.summaries[asset] = AssetSummary(asset, rows_in=sum(len(p.frame) for p in wave.pieces[asset]))
    ready = {}
    for asset in wave.assets:
        try:
            ready[asset] = champion_input(tracker, model_name, asset, wave.pieces[asset])
        except InputError as exc:
            reason = f"not scored: {str(exc).removeprefix(f'asset {asset}: ')}"
            done.set_aside.append(set_aside_whole(asset, wave.pieces[asset], f"asset {asset} {reason}"))
            done.summaries[asset].status, done.summaries[asset].rows_set_aside = reason, done.summaries[asset].rows_in
    tasks = {asset: Task(loaded.result.table, (files,)) for asset, (_, files, _, loaded) in ready.items()}
    scored = map_assets(score_asset_task, tasks, engine)

    writer, schema = None, None
    for asset, (bundle, _, version, loaded) in ready.items():
        result = scored[asset]
        if isinstance(result, Failed):
            done.summaries[asset].status = f"not scored: {result.reason}"
            continue
        rows, event = result
        done.events[asset] = summarise_events(
            loaded.result.table, rows, event, bundle.threshold.value, bundle.sensors, version, run_id
        )
        done.quality[asset] = loaded.quality
        done.sensors += loaded.result.sensors
        summary = done.summaries[asset]
        loaded.quality["drift"] = drift_watch.batch_drift(bundle, loaded.result.table, bundle.config.drift)
        drift_watch.summarise(summary, loaded.quality["drift"])
        summary.model_version, summary.threshold = version, bundle.threshold.value
        summary.rows_scored, summary.rows_flagged = int(np.isfinite(rows.score).sum()), int((event > 0).sum())
        summary.rows_set_aside, summary.events = len(loaded.result.rejected), len(done.events[asset])
        own = fleet_scores_schema(loaded.result.sensors)
        for batch in with_asset(scores_batches(loaded.result, rows, event, bundle.threshold.value, loaded.sources), asset, own):
            if writer is None or schema != batch.schema:
                schema = batch.schema
                writer = _reopen(writer, spill.with_name(f"{spill.stem}-{len(done.spills)}.arrow"), schema, done.spills)
            writer.write_batch(batch)
        _log_asset(tracker, model_name, asset, version, summary, loaded.quality["drift"])
    if writer is not None:
        writer.close()


def _reopen(writer, path: Path, schema: pa.Schema, spills: list[Path]):
    """A new spill file for batches of another schema (assets with other sensors)."""
    if writer is not None:
        writer.close()
    spills.append(path)
    return pa.ipc.new_file(str(path), schema)


def _fleet_batches(spills: list[Path], rejected: pd.DataFrame, schema: pa.Schema):
    """Asset by asset (sorted), each in input order per source, read back from the spills; then the rows no model could score."""
    for path in spills:
        with pa.memory_map(str(path)) as source:
            reader = pa.ipc.open_file(source)
            for i in range(reader.num_record_batches):
                batch = reader.get_batch(i)
                if batch.num_rows:
                    yield from with_asset([batch], batch.column(0)[0].as_py(), schema)
    yield from set_aside_batches(rejected, schema)


def _log_asset(tracker: Tracker, model_name: str, asset: str, version: str, summary: AssetSummary, drift: dict) -> None:
    registered = asset_model_name(model_name, asset)
    tags = {"model_name": registered, "model_version": version, **asset_tags(model_name, asset)}
    with tracker.run("score", run_name=f"score {registered}", tags=tags, nested=True):
        figures = {k: getattr(summary, k) for k in ("rows_in", "rows_scored", "rows_set_aside", "rows_flagged", "events")}
        tracker.log_metrics({**figures, "threshold": summary.threshold, "alarm_rate": summary.alarm_rate or 0.0})
        drift_watch.log_drift(tracker, drift)
