"""The scheduled ``run`` for a fleet: one lock and one state folder, one stream per asset.

Each asset keeps its own carry (context rows, held-back rows, open event) in ``state.json``, so
cutting an asset's series into files changes none of its scores. An asset without a model is
trained once its normal stretch is complete and long enough (on every readable file so far);
until then its rows are written with the reason in ``status``, and the first run that scores it
scores all its rows so far. A file that cannot be read is quarantined alone; an asset whose rows cannot
be validated is set aside alone; the rest is processed.
"""

from __future__ import annotations

import logging
import sys

import pandas as pd

from pipeline.config import PipelineConfig
from pipeline.data.assets import asset_key
from pipeline.data.fleet import fleet_waves, regroup, set_aside_whole, validate_asset
from pipeline.detector.drift import metric_key
from pipeline.detector.stream import Carry
from pipeline.errors import InputError
from pipeline.jobs import drift_watch
from pipeline.jobs.common import load_registered
from pipeline.jobs.fleet_common import asset_model_name, log_fleet_summary
from pipeline.jobs.fleet_train import train_in_waves
from pipeline.jobs.run import RunContext, RunOutcome, ScoredBatch, run_job
from pipeline.jobs.run_outputs import RunFolder, publish_run_folder
from pipeline.jobs.run_settings import batch_settings
from pipeline.reports.fleet import AssetSummary, fleet_events, fleet_scores_schema, fleet_table, set_aside_batches, with_asset
from pipeline.store.names import ANOMALIES_FILE
from pipeline.store.state import Kind, save_state

log = logging.getLogger(__name__)


def run_fleet_job(*args, **options) -> RunOutcome:
    """``run_job`` (same arguments) with one stream per asset (``ingest.asset_column`` or ``ingest.asset_folders``)."""
    return run_job(*args, process=process_fleet, **options)


def process_fleet(job: RunContext, candidates, config: PipelineConfig, config_given: bool, retrain: bool) -> RunOutcome:
    tracker, state = job.tracker, job.state
    quarantined = [(c.name, c.note) for c in candidates if c.kind == Kind.CHANGED]
    sources = job.read_new(candidates, config.ingest, quarantined)
    new = regroup(list(sources.values()), config.ingest)
    quarantined += new.unplaced  # a file no asset can be named for
    new.unplaced = []
    pieces, rejected = new.pieces, new.rejected

    # Models: each asset's champion; an asset without one (or all, on --retrain) trains first.
    champions = {a: load_registered(tracker, asset_model_name(job.model_name, a)) for a in pieces if _registered(job, a)}
    summaries = {a: AssetSummary(a, rows_in=sum(len(p.frame) for p in pieces[a])) for a in pieces}
    trained = None
    files = [(c.name, c.path) for c in candidates if c.kind == Kind.PROCESSED or c.name in sources]
    if retrain or any(a not in champions for a in pieces):
        new_assets = None if retrain else [a for a in pieces if a not in champions]
        trained = train_in_waves(job.tracker, job.model_name, files, config, new_assets, whole_stretches=True)
        for asset, summary in trained.items():
            why = summary.status.removeprefix("not trained: ")
            if summary.status != "ok" and asset in summaries:  # on --retrain, assets without new rows train too
                summaries[asset].status = f"not retrained: {why}" if asset in champions else f"waiting for a model: {why}"
            elif asset not in champions:
                champions[asset] = load_registered(tracker, asset_model_name(job.model_name, asset))
    _with_rows_that_waited(job, pieces, champions, summaries, files, candidates, config)

    # Score each asset's new rows after its own carry.
    batches: dict[str, ScoredBatch] = {}
    stale: dict[str, list[str]] = {}
    set_aside = [rejected]
    for asset in sorted(pieces):
        if asset not in champions:
            set_aside.append(set_aside_whole(asset, pieces[asset], f"asset {asset}: {summaries[asset].status}"))
            continue
        bundle, version = champions[asset]
        settings = batch_settings(config if config_given else bundle.config, bundle, warn=config_given)
        try:
            loaded = validate_asset(
                asset, pieces[asset], settings.ingest, bundle.sensors, bundle.timestamp_column, **bundle.input_hints()
            )
        except InputError as exc:
            summaries[asset].status = f"not scored: {str(exc).removeprefix(f'asset {asset}: ')}"
            set_aside.append(set_aside_whole(asset, pieces[asset], f"asset {asset} {summaries[asset].status}"))
            continue
        carry = Carry.from_dict(state.carries[asset]) if asset in state.carries else None
        batch = batches[asset] = job.score_stream(bundle, version, settings, loaded.result, carry)
        summary = summaries[asset]
        summary.model_version, summary.threshold = version, bundle.threshold.value
        summary.rows_scored = int(pd.notna(batch.step.score).sum())
        summary.rows_set_aside, summary.rows_flagged = len(batch.checked.rejected), int((batch.step.event > 0).sum())
        summary.events = len(batch.step.events)
        stale[asset] = drift_watch.advance(state, asset, batch.quality["drift"], settings.drift)  # committed with the batch
        drift_watch.summarise(summary, batch.quality["drift"], stale[asset])

    rejected = pd.concat([f for f in set_aside if len(f)] or [rejected], ignore_index=True)
    folder = None
    if pieces or len(rejected):
        folder = publish_run_folder(
            job.out_dir, job.run_id, _folder(job, batches, rejected, summaries, candidates, sources, quarantined)
        )
    job.commit(candidates, sources, quarantined, folder, {asset: b.step.carry for asset, b in batches.items()})

    outcome = RunOutcome(job.run_id, folder, candidates, quarantined, None, model_version="per asset")
    outcome.rows_in = sum(s.rows_in for s in summaries.values()) + len(new.rejected)
    outcome.rows_written = sum(b.rows_written for b in batches.values()) + len(rejected)
    outcome.rows_held = sum(b.step.rows_held for b in batches.values())
    outcome.rows_flagged = sum(s.rows_flagged for s in summaries.values())
    outcome.events = sum(s.events for s in summaries.values())
    outcome.problems = [f"asset {s.asset}: {s.status}" for s in summaries.values() if s.status != "ok"]
    outcome.problems += new.problems()
    outcome.fleet_trained = trained
    if folder is not None:
        log_fleet_summary(tracker, summaries.values(), fleet_events({a: b.events_frame() for a, b in batches.items()}))
        tracker.log_artifact(folder / ANOMALIES_FILE)  # the events review resolves verdicts against
        for asset, batch in batches.items():
            drift_watch.log_drift(tracker, batch.quality["drift"], prefix=f"{metric_key(asset_key(asset))}.drift")
    _stale(job, outcome, config, batches, stale, files, sorted(trained or {}))
    return outcome


def _stale(job: RunContext, outcome: RunOutcome, config: PipelineConfig, batches, stale, files, untrained) -> None:
    """Say which assets' models drift made stale (and tag the run); with ``--retrain-when-stale``, retrain them."""
    assets = sorted(a for a, sensors in stale.items() if sensors)
    if not assets:
        return
    lines = []
    for a in assets:
        name = f"{job.model_name} asset {a}"
        lines.append(drift_watch.stale_line(name, batches[a].version, stale[a], job.state.drift[a], batches[a].quality["drift"]))
    outcome.stale = lines
    drift_watch.tag_stale(job.tracker, lines)
    again = [a for a in assets if a not in untrained]
    if job.retrain_when_stale and again:
        fitted = train_in_waves(job.tracker, job.model_name, files, config, again)
        outcome.fleet_trained = {**(outcome.fleet_trained or {}), **fitted}
        for a in again:
            job.state.drift[a] = {}  # counted afresh: the challenger waits for promote
        save_state(job.state, job.state_dir)


def _with_rows_that_waited(job: RunContext, pieces, champions, summaries, files, candidates, config: PipelineConfig) -> None:
    """An asset with a model but never scored by a finished run (no carry), whose rows reached
    earlier batches while it waited for its model: all its rows so far (every readable file) are
    scored now, as one run over all the files would. Also after a crash between a run's training
    and its commit, since the carry, not the registry, says what was scored."""
    unscored = [a for a in pieces if a in champions and a not in job.state.carries]
    if not unscored or not any(c.kind == Kind.PROCESSED for c in candidates):
        return
    for wave in fleet_waves(files, config.ingest, sys.maxsize, unscored):
        for asset, history in wave.pieces.items():
            pieces[asset] = history
            summaries[asset].rows_in = sum(len(p.frame) for p in history)


def _registered(job: RunContext, asset: str) -> bool:
    return job.tracker.latest_version(asset_model_name(job.model_name, asset)) is not None


def _folder(job: RunContext, batches, rejected, summaries, candidates, sources, quarantined) -> RunFolder:
    sensors = list(dict.fromkeys(s for b in batches.values() for s in b.bundle.sensors))
    schema = fleet_scores_schema(sensors)
    contents = {asset: batch.folder({}) for asset, batch in batches.items()}

    def scores():
        for asset, content in contents.items():
            yield from with_asset(content.scores, asset, schema)
        yield from set_aside_batches(rejected, schema)

    manifest = {
        "run_id": job.run_id,
        "model_name": job.model_name,
        "files": {c.name: {"kind": c.kind, "from_row": c.skip_rows, "digest": c.digest} for c in candidates if c.name in sources},
        "quarantined_files": dict(quarantined),
        "assets": {asset: {"model_version": b.version, "rows": b.counts} for asset, b in batches.items()},
        "rows_set_aside_without_model": len(rejected),
    }
    return RunFolder(
        scores=scores(),
        scores_schema=schema,
        events=fleet_events({asset: content.events for asset, content in contents.items()}),
        quality={asset: content.quality for asset, content in contents.items()},
        manifest=manifest,
        fleet=fleet_table(summaries.values()),
    )
