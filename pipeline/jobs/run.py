"""The scheduled ``run`` job: process what is new in ``--input`` exactly once.

Bookkeeping is ``pipeline.store.state``; the stream maths (context, held-back rows, open event)
is ``pipeline.detector.stream``; what is written under ``--out`` is ``pipeline.jobs.run_outputs``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import pandas as pd

from pipeline.config import PipelineConfig, ReviewConfig
from pipeline.data.files import RawSource, discover_files, file_rows, read_source, skip_rows
from pipeline.data.ingest import IngestResult, validate
from pipeline.data.quality import quality_figures, quality_report
from pipeline.detector.bundle import ModelBundle
from pipeline.detector.stream import Carry, advance, set_aside_late
from pipeline.errors import InputError
from pipeline.jobs import drift_watch
from pipeline.jobs.common import load_registered, warn_set_aside
from pipeline.jobs.review import latest_reviews
from pipeline.jobs.run_batch import ScoredBatch
from pipeline.jobs.run_outputs import annotate_cumulative, publish_run_folder, update_cumulative_anomalies
from pipeline.jobs.run_settings import batch_settings
from pipeline.jobs.train import TrainOutcome, train_into
from pipeline.store.checkpoints import checkpoint
from pipeline.store.lock import exclusive_lock
from pipeline.store.names import ANOMALIES_FILE, LOCK_FILE, RUN_MANIFEST, STATE_FILE
from pipeline.store.state import (
    Candidate,
    FileRecord,
    Kind,
    Quarantined,
    RunState,
    classify,
    load_state,
    now_iso,
    recover_outputs,
    save_state,
)
from pipeline.tracking import TAG_LIMIT, Tracker, inputs_digest

log = logging.getLogger(__name__)


@dataclass
class RunOutcome:
    """What one scheduled run did; ``folder`` is None when it wrote no outputs."""

    run_id: str | None
    folder: Path | None
    candidates: list[Candidate]
    quarantined: list[tuple[str, str]]  # (file, reason) quarantined by this run
    trained: TrainOutcome | None
    model_version: str | None = None
    rows_in: int = 0
    rows_written: int = 0
    rows_held: int = 0
    rows_flagged: int = 0
    events: int = 0
    dry_run: bool = False
    problems: list[str] = field(default_factory=list)  # fleets: assets not scored, rows set aside (exit 2)
    fleet_trained: dict | None = None  # fleets: asset -> AssetSummary of the assets trained by this run
    warnings: list[str] = field(default_factory=list)  # files with more than ingest.max_set_aside_share set aside
    stale: list[str] = field(default_factory=list)  # one line per stream whose model drift made stale

    @property
    def processed(self) -> list[Candidate]:
        bad = {name for name, _ in self.quarantined}
        return [c for c in self.candidates if c.kind.to_process and c.name not in bad]


def run_job(
    input_dir: Path,
    out_dir: Path,
    state_dir: Path,
    config: PipelineConfig,
    model_name: str,
    tracking_uri: str | None,
    config_given: bool = True,
    retrain: bool = False,
    dry_run: bool = False,
    process: Callable[..., RunOutcome] | None = None,
    retrain_when_stale: bool = False,
) -> RunOutcome:
    """The scheduled batch: process what is new in ``input_dir`` exactly once.

    Trains first when no model of that name exists, or with ``retrain``. Which settings come
    from ``config`` (when ``config_given``) and which from the model: ``jobs.run_settings``.
    ``process`` handles the new files under the lock (default: one stream; fleets: ``jobs.fleet_run``).
    The cumulative ``anomalies.csv`` shows the verdicts recorded so far (``review``); with
    ``retrain_when_stale``, a model that drift made stale is retrained (a challenger) after the batch.
    """
    if dry_run:
        return _dry_run(input_dir, state_dir, model_name, tracking_uri, retrain)
    state_dir.mkdir(parents=True, exist_ok=True)
    with exclusive_lock(state_dir / LOCK_FILE):
        checkpoint("locked")
        state = load_state(state_dir)
        carry = _stored_carry(state, state_dir)
        recover_outputs(out_dir, state.runs)
        update_cumulative_anomalies(out_dir, state, state_dir)  # a run killed after committing did not
        tracker = Tracker(tracking_uri, model_name)
        tracker.end_stale_runs()
        reviews = latest_reviews(tracker, model_name)
        annotate_cumulative(out_dir, reviews, config.review)
        candidates = classify(_input_files(input_dir), state)
        for c in candidates:
            if c.kind == Kind.QUARANTINED:
                log.info("%s: still quarantined (content unchanged): %s", c.name, c.note)
        if not any(c.kind.to_process or c.kind == Kind.CHANGED for c in candidates) and not retrain:
            log.info("nothing new in %s", input_dir)
            return RunOutcome(None, None, candidates, [], None)
        run_name = f"run {model_name} {input_dir.name}"
        with tracker.run("run", run_name=run_name, tags={"model_name": model_name}) as run_id:
            job = RunContext(tracker, run_id, model_name, input_dir, out_dir, state_dir, state, carry, reviews, config.review)
            job.retrain_when_stale = retrain_when_stale
            return (process or RunContext.process)(job, candidates, config, config_given, retrain)


def _stored_carry(state: RunState, state_dir: Path) -> Carry | None:
    """The carry ``state.json`` holds; a hand-edited one is a bad state file, not a crash."""
    if state.carry is None:
        return None
    try:
        return Carry.from_dict(state.carry)
    except (KeyError, TypeError, ValueError) as exc:
        raise InputError(f"{state_dir / STATE_FILE}: not a valid state ('carry': {type(exc).__name__}: {exc})") from None


def _input_files(input_dir: Path) -> list[tuple[str, Path]]:
    if not input_dir.is_dir():
        raise InputError(f"--input {input_dir}: not a folder")
    try:
        return discover_files([input_dir])
    except InputError:  # an empty landing folder is not an error for a scheduled job
        return []


def _dry_run(input_dir: Path, state_dir: Path, model_name: str, tracking_uri: str | None, retrain: bool) -> RunOutcome:
    """What a run would do, without taking the lock or writing anything under --out or --state."""
    state = load_state(state_dir, clean=False)
    candidates = classify(_input_files(input_dir), state)
    trains = retrain or Tracker(tracking_uri, model_name).latest_version(model_name) is None
    outcome = RunOutcome(None, None, candidates, [], None, dry_run=True)
    outcome.model_version = "new (would train)" if trains else "current"
    return outcome


@dataclass
class RunContext:
    """One run's context, held while it processes its candidates."""

    tracker: Tracker
    run_id: str
    model_name: str
    input_dir: Path
    out_dir: Path
    state_dir: Path
    state: RunState
    carry: Carry | None
    reviews: pd.DataFrame | None = None  # the latest verdicts, shown in the cumulative anomalies.csv
    review_rule: ReviewConfig | None = None
    retrain_when_stale: bool = False

    def process(self, candidates: list[Candidate], config: PipelineConfig, config_given: bool, retrain: bool) -> RunOutcome:
        tracker = self.tracker
        quarantined = [(c.name, c.note) for c in candidates if c.kind == Kind.CHANGED]
        kinds = (Kind.NEW, Kind.APPENDED, Kind.CHANGED)
        tracker.log_metrics(
            {"files_seen": len(candidates), **{f"files_{k}": sum(c.kind == k for c in candidates) for k in kinds}}
        )

        # The champion's settings, unless a --config is given: also for a --retrain.
        champion = load_registered(tracker, self.model_name) if tracker.latest_version(self.model_name) else None
        own = config if config_given or champion is None else champion[0].config

        sources = self.read_new(candidates, batch_settings(own, champion[0] if champion else None).ingest, quarantined)

        # A version trained here becomes @champion only when there was none (else @challenger).
        trained = self._train(candidates, sources, quarantined, own) if champion is None or retrain else None
        bundle, version = champion or load_registered(tracker, self.model_name)
        settings = batch_settings(own, bundle, warn=config_given)

        result, rejected_files = validate_batch(list(sources.values()), settings, bundle)
        quarantined += rejected_files
        if result is None and not quarantined:
            tracker.set_tags({"model_version": version})
            return RunOutcome(self.run_id, None, candidates, quarantined, trained, model_version=version)
        # Outputs first, in a partial folder renamed into place; then the state; then the summary.
        batch = self.score_stream(bundle, version, settings, result, self.carry) if result is not None else None
        folder = None
        if batch is not None:
            manifest = self._manifest(bundle, version, candidates, sources, quarantined, batch)
            folder = publish_run_folder(self.out_dir, self.run_id, batch.folder(manifest))
        stale = drift_watch.advance(self.state, "", batch.quality["drift"], settings.drift) if batch else []
        self.commit(candidates, sources, quarantined, folder, {None: batch.step.carry} if batch else {})

        digests = {c.name: c.digest for c in candidates if c.name in sources}
        tracker.set_tags({"model_version": version, "input_digest": inputs_digest(digests)})
        if quarantined:
            tracker.set_tags({"quarantined_files": ", ".join(name for name, _ in quarantined)[:TAG_LIMIT]})
        outcome = RunOutcome(self.run_id, folder, candidates, quarantined, trained, model_version=version)
        if batch is not None:
            self._log_batch(outcome, batch, settings, bundle, sources, quarantined, folder)
            outcome.warnings = warn_set_aside(tracker, batch.quality)
            drift_watch.log_drift(tracker, batch.quality["drift"])
        if stale:
            streaks = self.state.drift[""]
            outcome.stale = [drift_watch.stale_line(self.model_name, version, stale, streaks, batch.quality["drift"])]
            drift_watch.tag_stale(tracker, outcome.stale)
            if self.retrain_when_stale and trained is None:
                outcome.trained = self._train(candidates, sources, quarantined, own)
                self.state.drift[""] = {}  # counted afresh: the challenger waits for promote
                save_state(self.state, self.state_dir)
        return outcome

    def read_new(self, candidates: list[Candidate], reading, quarantined: list[tuple[str, str]]) -> dict[str, RawSource]:
        """The new content, file by file: a file that cannot be read is quarantined (appended to ``quarantined``), not fatal."""
        sources: dict[str, RawSource] = {}
        for c in candidates:
            if not c.kind.to_process:
                continue
            try:
                raw = read_source(c.name, c.path, reading)
            except InputError as exc:
                quarantined.append((c.name, quarantine_reason(c.name, exc)))
                continue
            if c.skip_rows:
                raw = skip_rows(raw, c.skip_rows)
            sources[c.name] = raw
        return sources

    def _train(self, candidates, sources, quarantined, config: PipelineConfig) -> TrainOutcome:
        """A new version on every readable file of the input folder (processed ones included)."""
        files = [(c.name, c.path) for c in candidates if c.kind == Kind.PROCESSED or c.name in sources]
        if not files:
            raise InputError(f"{self.input_dir}: no readable file to train on ({'; '.join(r for _, r in quarantined)})")
        run_name = f"train {self.model_name} {self.input_dir.name}"
        with self.tracker.run("train", run_name=run_name, tags={"model_name": self.model_name}, nested=True) as train_id:
            trained = train_into(self.tracker, files, config, self.model_name, train_id)
        checkpoint("after_train")
        return trained

    def score_stream(
        self, bundle: ModelBundle, version: str, settings: PipelineConfig, result: IngestResult, carry: Carry | None
    ) -> ScoredBatch:
        """One stream's batch scored after its carry (late rows set aside first)."""
        carry = carry.for_sensors(bundle.sensors) if carry else Carry.empty(bundle.sensors)
        checked = set_aside_late(result, carry.last_timestamp_ns)
        if len(checked.table):
            quality = quality_report(checked, settings.ingest.flatline_rows, settings.ingest.max_set_aside_share)
        else:
            quality = {"rows": checked.counts, "sources": sorted(set(checked.rejected["source"]))}
        quality["drift"] = drift_watch.batch_drift(bundle, checked.table, settings.drift)
        step = advance(bundle, checked.table, carry, settings.events, settings.scoring.batch_size)
        step.carry = replace(step.carry, model_version=version)
        return ScoredBatch(step, checked, quality, bundle, version, self.run_id)

    def _manifest(self, bundle, version, candidates, sources, quarantined, batch: ScoredBatch) -> dict:
        return {
            "run_id": self.run_id,
            "model_name": self.model_name,
            "model_version": version,
            "threshold": bundle.threshold.value,
            "files": {
                c.name: {"kind": c.kind, "from_row": c.skip_rows, "digest": c.digest} for c in candidates if c.name in sources
            },
            "quarantined_files": dict(quarantined),
            "rows": batch.counts,
        }

    def commit(self, candidates, sources, quarantined, folder: Path | None, carries: dict[str | None, Carry]) -> None:
        """Record what this run processed and quarantined, and each stream's carry (key None: the one
        stream; else an asset); the state is saved only after the outputs."""
        state, now = self.state, now_iso()
        bad = dict(quarantined)
        for c in candidates:
            if c.name in sources and c.name not in bad:
                total_rows = file_rows(sources[c.name])
                state.files[c.name] = FileRecord(c.digest, c.size, total_rows, folder.name if folder else "", now)
                state.quarantined.pop(c.name, None)
        digests = {c.name: c.digest for c in candidates}
        for name, reason in quarantined:
            state.quarantined[name] = Quarantined(digests[name], reason, now, self.run_id)
            log.error("%s: quarantined: %s", name, reason)
        for asset, carry in carries.items():
            if asset is None:
                state.carry = carry.to_dict()
            else:
                state.carries[asset] = carry.to_dict()
        if folder is not None:
            state.runs.append(folder.name)
            state.unmerged.append(folder.name)
        save_state(state, self.state_dir)
        checkpoint("after_state")
        update_cumulative_anomalies(self.out_dir, state, self.state_dir)
        if self.reviews is not None and self.review_rule is not None:
            annotate_cumulative(self.out_dir, self.reviews, self.review_rule)

    def _log_batch(self, outcome: RunOutcome, batch: ScoredBatch, settings, bundle, sources, quarantined, folder: Path) -> None:
        outcome.rows_in, outcome.rows_written, outcome.rows_held = (
            batch.counts["rows_in"],
            batch.rows_written,
            batch.step.rows_held,
        )
        outcome.rows_flagged, outcome.events = int((batch.step.event > 0).sum()), len(batch.step.events)
        run_settings = {f"run.{k}": v for k, v in settings.flat().items() if k.split(".")[0] in ("ingest", "events")}
        self.tracker.log_params({"model_version": outcome.model_version, "inputs": ", ".join(sources)[:6000], **run_settings})
        self.tracker.log_metrics(
            {
                "rows_in": outcome.rows_in,
                "rows_written": outcome.rows_written,
                "rows_held_back": outcome.rows_held,
                "rows_flagged": outcome.rows_flagged,
                "events": outcome.events,
                "files_quarantined": len(quarantined),
                "threshold": bundle.threshold.value,
                **quality_figures(batch.quality),
            }
        )
        self.tracker.log_artifact(folder / ANOMALIES_FILE)
        self.tracker.log_artifact(folder / RUN_MANIFEST)


def validate_batch(
    sources: list[RawSource], settings: PipelineConfig, bundle: ModelBundle
) -> tuple[IngestResult | None, list[tuple[str, str]]]:
    """Validate the batch's files together (one stream); a file that fails alone is quarantined.

    Returns:
        The validated batch (None when no file is usable) and the (file, reason) pairs quarantined.
    """
    if not sources:
        return None, []

    def check(group: list[RawSource]) -> IngestResult:
        return validate(
            group, settings.ingest, sensors=bundle.sensors, timestamp_column=bundle.timestamp_column, **bundle.input_hints()
        )

    try:
        return check(sources), []
    except InputError:
        pass
    good, bad = [], []
    for source in sources:
        try:
            check([source])
            good.append(source)
        except InputError as exc:
            bad.append((source.name, quarantine_reason(source.name, exc)))
    return (check(good) if good else None), bad


def quarantine_reason(name: str, exc: InputError) -> str:
    """The error without its leading 'file: ' (the quarantine record names the file already)."""
    head, sep, rest = str(exc).partition(": ")
    return rest if sep and (head == name or head.endswith("/" + name)) else str(exc)
