"""The runner: wires the stages together and hands figures and files to tracking.

``train_job``, ``score_job`` and ``run_job`` are what the command line calls. Stage modules
(ingest, quality, features, train, calibrate, score, report) hold the logic and do no MLflow
calls; this module decides what is written where and what is logged.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq

from pipeline import describe, explain, plots
from pipeline.bundle import ModelBundle, load_bundle
from pipeline.calibrate import calibrate_threshold
from pipeline.config import PipelineConfig, to_yaml
from pipeline.errors import InputError, LockHeldError, PromotionRefused
from pipeline.features import fit_scaler, segment_ids, window_starts
from pipeline.ingest import IngestResult, discover_files, file_digest, read_source, validate
from pipeline.quality import quality_figures, quality_report, sampling_interval_seconds
from pipeline.report import assign_events, scores_batches, scores_schema, summarise_events
from pipeline.score import reconstruction_errors, score_table
from pipeline.tracking import CHALLENGER, CHAMPION, Tracker, inputs_digest

log = logging.getLogger(__name__)

STATE_FILE = "processed.json"
LOCK_FILE = "run.lock"


# ---------------------------------------------------------------- ingest


@dataclass
class LoadedInput:
    result: IngestResult
    quality: dict[str, Any]
    digests: dict[str, str]  # source name -> sha256 of the file
    sources: list[str]  # in the order given


def load_input(
    files: list[tuple[str, Path]], config: PipelineConfig, sensors: list[str] | None = None, timestamp_column: str | None = None
) -> LoadedInput:
    """Read, validate and quality-check files (see ``ingest.discover_files`` for the pairs)."""
    digests: dict[str, str] = {}

    def one_at_a_time():  # validate lets go of each raw file once it is normalised
        for name, path in files:
            source = read_source(name, path, config.ingest)
            digests[name] = source.digest
            yield source
            del source
            # Arrow's allocator keeps freed buffers for reuse; hand them back to the system.
            pa.default_memory_pool().release_unused()

    result = validate(one_at_a_time(), config.ingest, sensors=sensors, timestamp_column=timestamp_column)
    names = [name for name, _ in files]
    report = quality_report(result, config.ingest.flatline_rows)
    log.info(
        "ingested %d rows from %d file(s): %d clean, %d repaired, %d set aside",
        result.counts["rows_in"], len(names), result.counts["rows_clean"], result.counts["rows_repaired"], result.counts["rows_quarantined"],
    )  # fmt: skip
    return LoadedInput(result, report, digests, names)


# ---------------------------------------------------------------- fitting


@dataclass
class FitReport:
    history: dict[str, list[float]]
    best_epoch: int
    holdout_errors: np.ndarray
    rows: dict[str, int]  # normal rows and windows per part


def normal_mask(table: pd.DataFrame, config: PipelineConfig) -> np.ndarray:
    """Rows that training may use: before ``normal_until`` and/or labelled 0; all rows if neither is set."""
    mask = np.ones(len(table), dtype=bool)
    if config.training.normal_until:
        try:
            until = pd.Timestamp(config.training.normal_until)
        except ValueError:
            raise InputError(f"--normal-until: cannot parse '{config.training.normal_until}' as a timestamp") from None
        until = until.tz_localize(config.ingest.source_timezone) if until.tzinfo is None else until
        mask &= (table["timestamp"] < until.tz_convert("UTC")).to_numpy()
    if config.ingest.label_column:
        mask &= (table["label"] == 0).to_numpy()
    return mask


def fit_bundle(result: IngestResult, config: PipelineConfig) -> tuple[ModelBundle, FitReport]:
    """Fit scaler, autoencoder and threshold on the normal rows of a validated table.

    Normal rows are split in time order: the first part trains (its last ``validation_fraction``
    drives early stopping), the last ``holdout_fraction`` calibrates the threshold.
    """
    table = result.table
    window = config.features.window_size
    normal = normal_mask(table, config)
    n_normal = int(normal.sum())
    # Each of the three parts below needs at least one window.
    training = config.training
    smallest_part = min(training.holdout_fraction, training.validation_fraction * (1 - training.holdout_fraction))
    needed = int(np.ceil(window / smallest_part))
    if n_normal < needed:
        raise InputError(
            f"{', '.join(sorted(table['source'].unique()))}: {n_normal} normal rows, need at least {needed} "
            f"for window_size={window} (fewer rows than the windows need; lower features.window_size or give more normal data)"
        )
    interval = sampling_interval_seconds(table["timestamp"][normal])
    max_gap = config.features.max_gap_seconds or window * interval

    # Part of each normal row in time order: 0 train, 1 early-stopping validation, 2 calibration.
    part = np.zeros(n_normal, dtype=np.int8)
    fit_rows = int(n_normal * (1 - config.training.holdout_fraction))
    part[int(fit_rows * (1 - config.training.validation_fraction)) :] = 1
    part[fit_rows:] = 2
    # A window stays inside one stretch of consecutive normal rows of one part, with no long gap.
    segment = segment_ids(table["timestamp"], max_gap)
    stretch = np.cumsum(np.concatenate([[0], (np.diff(segment) != 0) | (np.diff(normal.astype(np.int8)) != 0)]))[normal]
    stretch = np.cumsum(np.concatenate([[0], (np.diff(stretch) != 0) | (np.diff(part) != 0)]))

    raw = table[result.sensors].to_numpy(dtype=np.float64)[normal]
    scaler = fit_scaler(raw[part < 2], result.sensors)
    values = scaler.transform(raw)
    train_starts = _part_starts(stretch, part, 0, window, config.features.stride)
    val_starts = _part_starts(stretch, part, 1, window, config.features.stride)
    holdout_starts = _part_starts(stretch, part, 2, window, 1)
    for name, starts in (("training", train_starts), ("validation", val_starts), ("calibration", holdout_starts)):
        if starts.size == 0:
            raise InputError(f"no {name} windows: normal data is too short or too gappy for window_size={window}")
    log.info("training on %d windows, early stopping on %d, calibrating on %d", train_starts.size, val_starts.size, holdout_starts.size)

    from pipeline.train import train_autoencoder  # TensorFlow is imported only where training needs it

    trained = train_autoencoder(values, train_starts, val_starts, window, config.model)
    errors, _ = reconstruction_errors(trained.model, values, holdout_starts, window, config.scoring.batch_size)
    threshold = calibrate_threshold(errors, config.threshold)
    log.info("threshold %.5g (%s %s)", threshold.value, threshold.method, threshold.params)
    rows = {
        "normal_rows": n_normal,
        "train_windows": int(train_starts.size),
        "validation_windows": int(val_starts.size),
        "calibration_windows": int(holdout_starts.size),
    }
    bundle = ModelBundle(
        model=trained.model,
        scaler=scaler,
        threshold=threshold,
        config=config,
        timestamp_column=result.timestamp_column,
        sampling_interval_seconds=interval,
        max_gap_seconds=float(max_gap),
        training={**rows, "normal_until": config.training.normal_until, "label_column": config.ingest.label_column},
    )
    return bundle, FitReport(trained.history, trained.best_epoch, errors, rows)


def _part_starts(stretch: np.ndarray, part: np.ndarray, which: int, window: int, stride: int) -> np.ndarray:
    rows = np.flatnonzero(part == which)
    if rows.size == 0:
        return rows
    return rows[window_starts(stretch[rows], window, stride)]


# ---------------------------------------------------------------- scoring


@dataclass
class ScoreOutcome:
    run_id: str
    out_dir: Path
    rows_in: int
    rows_scored: int
    rows_flagged: int
    events: int
    model_version: str


def _score_events(bundle: ModelBundle, loaded: LoadedInput, model_version: str, run_id: str):
    """Row scores, event number per row and the events frame (the scores table is left to the caller)."""
    table = loaded.result.table
    rows = score_table(
        bundle.model, bundle.scaler, table, bundle.window_size, bundle.max_gap_seconds, bundle.config.scoring.batch_size, progress=True
    )
    source_code = pd.factorize(table["source"])[0]  # int codes: no Python string per row
    source_change = np.concatenate([[False], source_code[1:] != source_code[:-1]])
    groups = np.cumsum(source_change | np.concatenate([[False], np.diff(rows.segment) != 0]))
    event = assign_events(rows.score, bundle.threshold.value, groups, bundle.config.events)
    events = summarise_events(table, rows, event, bundle.threshold.value, bundle.sensors, model_version, run_id)
    return rows, event, events


score_events = _score_events  # the registered pyfunc (pipeline.serving) scores through the same wiring


def reading_config(config: PipelineConfig) -> PipelineConfig:
    """The settings to read data to score: it needs no label, even when the model was trained on
    labelled rows."""
    return config.model_copy(update={"ingest": config.ingest.model_copy(update={"label_column": None})})


def _log_event_plots(tracker: Tracker, bundle: ModelBundle, table: pd.DataFrame, rows, event, events, folder: Path) -> None:
    """Per-sensor shares and expected-vs-measured signals of the top events, as ``plots/event_<id>.png``."""
    for detail in explain.event_details(bundle, table, rows, event, events):
        tracker.log_artifact(plots.event_detail(detail, bundle.threshold.value, folder / f"event_{detail.event_id}.png"), "plots")


def _log_dataset(tracker: Tracker, loaded: LoadedInput, files: list[tuple[str, Path]], name: str, context: str) -> None:
    """The input as an MLflow dataset: the files' digest, the validated table's schema, the files' place."""
    table = loaded.result.table
    columns = ["timestamp", *loaded.result.sensors]
    tracker.log_dataset(table[columns], name, inputs_digest(loaded.digests), [path for _, path in files], context)


def _score_into(tracker: Tracker, bundle: ModelBundle, version: str, files: list[tuple[str, Path]], out_dir: Path, run_id: str) -> ScoreOutcome:
    tracker.log_params({"model_version": version, "inputs": ", ".join(name for name, _ in files), **bundle.config.flat()})
    tracker.log_text(to_yaml(bundle.config), "config.yaml")
    loaded = load_input(files, reading_config(bundle.config), sensors=bundle.sensors, timestamp_column=bundle.timestamp_column)
    tracker.set_tags({"input_digest": inputs_digest(loaded.digests), "model_version": version, "source": _describe_inputs([p for _, p in files])})
    paths = json.dumps([str(path.resolve()) for _, path in files])
    if len(paths) <= 5000:  # promote re-reads the latest scored data from here
        tracker.set_tags({"input_paths": paths})
    _log_dataset(tracker, loaded, files, f"score {_describe_inputs([p for _, p in files])}", "scoring")
    rows, event, events = _score_events(bundle, loaded, version, run_id)

    out_dir.mkdir(parents=True, exist_ok=True)
    # scores.csv is written a batch at a time: the whole table as text would be several GB at
    # millions of rows.
    scores = scores_batches(loaded.result, rows, event, bundle.threshold.value, loaded.sources)
    write_csv_batches_atomic(scores, scores_schema(loaded.result.sensors), out_dir / "scores.csv")
    write_csv_atomic(pa.Table.from_pandas(events, preserve_index=False), out_dir / "anomalies.csv")
    write_text_atomic(json.dumps(loaded.quality, indent=2), out_dir / "quality.json")
    write_parquet(loaded.result.table, out_dir / "validated.parquet")
    table = loaded.result.table
    plot = plots.score_plot(table["timestamp"], table["source"], rows.score, bundle.threshold.value, events, out_dir / "scores.png")

    counts = loaded.result.counts
    outcome = ScoreOutcome(
        run_id=run_id,
        out_dir=out_dir,
        rows_in=counts["rows_in"],
        rows_scored=int(np.isfinite(rows.score).sum()),
        rows_flagged=int((event > 0).sum()),
        events=len(events),
        model_version=version,
    )
    tracker.log_metrics(
        {
            "rows_in": outcome.rows_in,
            "rows_scored": outcome.rows_scored,
            "rows_flagged": outcome.rows_flagged,
            "events": outcome.events,
            "threshold": bundle.threshold.value,
            **quality_figures(loaded.quality),
        }
    )
    tracker.log_dict(loaded.quality, "quality_report.json")
    tracker.log_artifact(out_dir / "anomalies.csv")
    tracker.log_artifact(plot)
    with tempfile.TemporaryDirectory(prefix="score-plots-") as tmp:
        _log_event_plots(tracker, bundle, table, rows, event, events, Path(tmp))
    tracker.set_description(
        describe.scoring_description(
            tracker.model_name, version, loaded.sources, inputs_digest(loaded.digests), loaded.quality,
            outcome.rows_in, outcome.rows_scored, outcome.rows_flagged, bundle.threshold.value, events,
        )
    )  # fmt: skip
    if outcome.rows_scored == 0:
        log.warning(
            "no row has a full window of %d rows without a gap longer than %.0f s: every score is empty "
            "(the model was trained on data sampled every %.0f s)",
            bundle.window_size, bundle.max_gap_seconds, bundle.sampling_interval_seconds,
        )  # fmt: skip
    log.info("scored %d rows: %d flagged in %d event(s); report in %s", outcome.rows_in, outcome.rows_flagged, outcome.events, out_dir)
    return outcome


def _load_registered(tracker: Tracker, model_name: str, version: str | None = None) -> tuple[ModelBundle, str]:
    """The bundle of a version of ``model_name``: the given one, else the one holding ``champion``."""
    found = tracker.model_version(model_name, version, alias=CHAMPION)
    with tracker.downloaded_bundle(model_name, found.version) as folder:
        return load_bundle(folder), found.version


def score_job(inputs: list[str | Path], out_dir: Path, model_name: str, tracking_uri: str | None) -> ScoreOutcome:
    """Score files with the newest registered version of ``model_name`` and write the reports."""
    tracker = Tracker(tracking_uri, model_name)
    with tracker.run("score", run_name=f"score {model_name} {_describe_inputs(inputs)}", tags={"model_name": model_name}) as run_id:
        bundle, version = _load_registered(tracker, model_name)
        return _score_into(tracker, bundle, version, discover_files(inputs), out_dir, run_id)


# ---------------------------------------------------------------- training


@dataclass
class TrainOutcome:
    run_id: str
    model_version: str
    threshold: float
    rows: dict[str, int]


def _train_into(tracker: Tracker, files: list[tuple[str, Path]], config: PipelineConfig, model_name: str, run_id: str) -> TrainOutcome:
    tracker.log_params({"model_name": model_name, "inputs": ", ".join(name for name, _ in files), **config.flat()})
    tracker.log_text(to_yaml(config), "config.yaml")
    loaded = load_input(files, config)
    tracker.set_tags({"input_digest": inputs_digest(loaded.digests), "source": _describe_inputs([p for _, p in files])})
    tracker.log_dict(loaded.quality, "quality_report.json")
    tracker.log_metrics(quality_figures(loaded.quality))
    _log_dataset(tracker, loaded, files, f"train {_describe_inputs([p for _, p in files])}", "training")

    bundle, fit = fit_bundle(loaded.result, config)
    tracker.log_history(fit.history)
    threshold = bundle.threshold
    tracker.log_metrics(
        {
            "threshold": threshold.value,
            "best_epoch": fit.best_epoch,
            **{f"holdout_error.{k}": v for k, v in threshold.error_stats.items()},
            **{k: float(v) for k, v in fit.rows.items()},
        }
    )
    tracker.log_dict({"sensors": bundle.sensors, **threshold.to_dict()}, "threshold.json")
    with tempfile.TemporaryDirectory(prefix="train-") as tmp:
        tmp_dir = Path(tmp)
        tracker.log_artifact(plots.training_curves(fit.history, tmp_dir / "training_curves.png"), "plots")
        tracker.log_artifact(plots.error_histogram(fit.holdout_errors, threshold.value, tmp_dir / "holdout_errors.png"), "plots")
        tracker.log_artifact(write_parquet(loaded.result.table, tmp_dir / "validated.parquet"), "data")
        if len(loaded.result.rejected):
            write_csv_atomic(pa.Table.from_pandas(loaded.result.rejected, preserve_index=False), tmp_dir / "quarantine.csv")
            tracker.log_artifact(tmp_dir / "quarantine.csv")
        folder = bundle.save(tmp_dir / "bundle")
        # The saved bundle as scoring will load it: it scores the training input for review and
        # gives the registered model's example output.
        saved = load_bundle(folder)
        table = loaded.result.table
        rows, event, events = _score_events(saved, loaded, "", run_id)
        tracker.log_artifact(plots.score_plot(table["timestamp"], table["source"], rows.score, threshold.value, events, tmp_dir / "scores.png"), "plots")
        _log_event_plots(tracker, saved, table, rows, event, events, tmp_dir)
        from pipeline import serving  # MLflow's pyfunc machinery, only where a model is registered

        example = serving.input_example(loaded.result, saved)
        version, alias = tracker.register_model(folder, model_name, run_id, example, serving.predict_frame(saved, example))
    tracker.set_tags({"model_version": version, "model_alias": alias})
    tracker.set_description(
        describe.training_description(
            model_name, version, alias, loaded.sources, inputs_digest(loaded.digests), loaded.quality,
            config.training.normal_until, config.ingest.label_column, fit.rows, bundle.window_size, threshold,
            fit.history, fit.best_epoch, events,
        )
    )  # fmt: skip
    log.info("registered %s version %s as @%s (threshold %.5g)", model_name, version, alias, threshold.value)
    return TrainOutcome(run_id=run_id, model_version=version, threshold=threshold.value, rows=fit.rows)


def train_job(inputs: list[str | Path], config: PipelineConfig, model_name: str, tracking_uri: str | None) -> TrainOutcome:
    """Train on the normal rows of the inputs, calibrate, and register a new model version."""
    tracker = Tracker(tracking_uri, model_name)
    with tracker.run("train", run_name=f"train {model_name} {_describe_inputs(inputs)}", tags={"model_name": model_name}) as run_id:
        return _train_into(tracker, discover_files(inputs), config, model_name, run_id)


# ---------------------------------------------------------------- promotion


@dataclass
class PromoteOutcome:
    run_id: str
    version: str
    champion_before: str | None
    promoted: bool
    gate: str
    reason: str
    figures: dict[str, Any]


def _gate_figures(bundle: ModelBundle, files: list[tuple[str, Path]], label_column: str | None) -> dict[str, float]:
    """Alarm rate (flagged / scored rows) of a model on files and, with a label column, its
    point-wise F1, false-alarm and missed-alarm rates against the labels (SKAB's definitions)."""
    reading = reading_config(bundle.config)
    if label_column:
        reading = reading.model_copy(update={"ingest": reading.ingest.model_copy(update={"label_column": label_column})})
    loaded = load_input(files, reading, sensors=bundle.sensors, timestamp_column=bundle.timestamp_column)
    rows, event, _ = _score_events(bundle, loaded, "", "")
    flagged = event > 0
    scored = np.isfinite(rows.score)
    figures = {"rows_scored": float(scored.sum()), "alarm_rate": float(flagged.sum() / max(int(scored.sum()), 1))}
    if label_column:
        actual = loaded.result.table["label"].to_numpy() != 0
        tp, fp = int((flagged & actual).sum()), int((flagged & ~actual).sum())
        fn, tn = int((~flagged & actual).sum()), int((~flagged & ~actual).sum())
        figures.update(
            f1=tp / max(tp + (fp + fn) / 2, 1e-12), far=fp / max(fp + tn, 1), mar=fn / max(fn + tp, 1), labelled_anomalies=float(tp + fn)
        )
    return figures


def _latest_scored_files(tracker: Tracker, model_name: str) -> list[tuple[str, Path]]:
    latest = tracker.latest_run("score", model_name)
    paths = json.loads(latest.data.tags.get("input_paths", "[]")) if latest else []
    missing = [p for p in paths if not Path(p).is_file()]
    if not paths or missing:
        why = "no scoring run records its input" if not paths else f"the latest scored file {missing[0]} is gone"
        raise InputError(f"promote: {why}; give the data to judge the challenger on with --input")
    return discover_files(paths)


def promote_job(
    model_name: str,
    version: str | None,
    tracking_uri: str | None,
    config: PipelineConfig,
    inputs: list[str | Path] | None = None,
    label_column: str | None = None,
    force: bool = False,
) -> PromoteOutcome:
    """Give ``champion`` to a version (default: the ``challenger``) if it passes the gate.

    Gate: with ``label_column``, the candidate's F1 on ``inputs`` must be at least the
    champion's minus ``promotion.f1_tolerance``; without labels, its alarm rate on ``inputs``
    (default: the files of the latest scoring run) must be at most
    ``promotion.alarm_rate_budget``. The first champion and ``force`` skip the gate. The
    decision and its figures are logged as a run with stage ``promote``.

    Raises:
        InputError: unknown model or version, or no data to judge on.
        PromotionRefused: the gate kept the champion.
    """
    tracker = Tracker(tracking_uri, model_name)
    candidate = tracker.model_version(model_name, version, alias=CHALLENGER)
    champion = tracker.aliases(model_name).get(CHAMPION)
    budget, tolerance = config.promotion.alarm_rate_budget, config.promotion.f1_tolerance
    figures: dict[str, Any] = {}
    with tracker.run("promote", run_name=f"promote {model_name} v{candidate.version}", tags={"model_name": model_name}) as run_id:
        tracker.log_params({"candidate_version": candidate.version, "champion_version": champion or "", "alarm_rate_budget": budget,
                            "f1_tolerance": tolerance, "label_column": label_column or "", "force": force})  # fmt: skip
        if champion == candidate.version:
            gate, promoted, reason = "none", False, f"version {candidate.version} already holds @{CHAMPION}."
        elif champion is None:
            gate, promoted, reason = "none", True, "no version held @champion."
        elif force:
            gate, promoted, reason = "forced", True, "promoted with --force, without the gate."
        else:
            files = discover_files(inputs) if inputs else _latest_scored_files(tracker, model_name)
            tracker.set_tags({"source": _describe_inputs([p for _, p in files]), "input_paths": json.dumps([str(p) for _, p in files])[:5000]})
            new_bundle, _ = _load_registered(tracker, model_name, candidate.version)
            old_bundle, _ = _load_registered(tracker, model_name, champion)
            new, old = _gate_figures(new_bundle, files, label_column), _gate_figures(old_bundle, files, label_column)
            figures = {**{f"challenger_{k}": v for k, v in new.items()}, **{f"champion_{k}": v for k, v in old.items()}}
            if label_column:
                gate = "labels"
                promoted = new["f1"] >= old["f1"] - tolerance
                reason = (
                    f"F1 on the labelled data: challenger {new['f1']:.4f}, champion {old['f1']:.4f} (tolerance {tolerance:g}): "
                    + ("not worse." if promoted else "the challenger is worse.")
                )
            else:
                gate = "alarm_rate"
                promoted = new["alarm_rate"] <= budget
                reason = (
                    f"alarm rate on the data: challenger {new['alarm_rate']:.2%} (champion {old['alarm_rate']:.2%}), "
                    f"budget {budget:.2%}: " + ("within budget." if promoted else "over budget.")
                )
        tracker.log_metrics({k: v for k, v in figures.items() if isinstance(v, float)} | {"promoted": float(promoted)})
        decision = "promoted" if promoted else ("kept" if champion == candidate.version else "refused")
        tracker.set_tags({"decision": decision, "gate": gate, "model_version": candidate.version})
        record = {"decision": decision, "gate": gate, "reason": reason, "challenger": candidate.version, "champion": champion, "figures": figures}
        tracker.log_dict(record, "promotion.json")
        tracker.set_description(describe.promotion_description(model_name, record))
        if promoted:
            tracker.set_alias(model_name, CHAMPION, candidate.version)
            if CHALLENGER in candidate.aliases:
                tracker.delete_alias(model_name, CHALLENGER)
        log.info("promote %s version %s: %s (%s)", model_name, candidate.version, decision, reason)
        outcome = PromoteOutcome(run_id, candidate.version, champion, promoted, gate, reason, figures)
    if decision == "refused":
        raise PromotionRefused(f"{model_name} version {candidate.version} not promoted: {reason} (run {run_id})")
    return outcome


# ---------------------------------------------------------------- scheduled batch


@dataclass
class RunOutcome:
    run_id: str
    new_files: list[str]
    trained: TrainOutcome | None
    scored: ScoreOutcome | None


def run_job(input_dir: Path, out_dir: Path, state_dir: Path, config: PipelineConfig, model_name: str, tracking_uri: str | None) -> RunOutcome:
    """Process the files of ``input_dir`` not processed before: train first if no model exists."""
    state_dir.mkdir(parents=True, exist_ok=True)
    with _exclusive_lock(state_dir / LOCK_FILE):
        state_path = state_dir / STATE_FILE
        processed = json.loads(state_path.read_text()) if state_path.exists() else {}
        tracker = Tracker(tracking_uri, model_name)
        with tracker.run("run", run_name=f"run {model_name} {input_dir.name}", tags={"model_name": model_name}) as run_id:
            files = discover_files([input_dir])
            digests = {name: file_digest(path) for name, path in files}
            new = [(name, path) for name, path in files if digests[name] not in processed]
            tracker.log_metrics({"files_seen": len(files), "files_new": len(new)})
            if not new:
                log.info("nothing new in %s", input_dir)
                return RunOutcome(run_id, [], None, None)
            trained = None
            if tracker.latest_version(model_name) is None:
                with tracker.run("train", run_name=f"train {model_name} {input_dir.name}", tags={"model_name": model_name}, nested=True) as train_id:
                    trained = _train_into(tracker, new, config, model_name, train_id)
            with tracker.run("score", run_name=f"score {model_name} {input_dir.name}", tags={"model_name": model_name}, nested=True) as score_id:
                bundle, version = _load_registered(tracker, model_name)
                scored = _score_into(tracker, bundle, version, new, out_dir, score_id)
            tracker.set_tags({"model_version": version, "input_digest": inputs_digest({n: digests[n] for n, _ in new})})
            tracker.log_metrics({"rows_in": scored.rows_in, "rows_flagged": scored.rows_flagged, "events": scored.events})
            now = datetime.now(timezone.utc).isoformat()
            processed.update({digests[name]: {"source": name, "processed_at": now, "run_id": run_id} for name, _ in new})
            write_text_atomic(json.dumps(processed, indent=2), state_path)
            return RunOutcome(run_id, [name for name, _ in new], trained, scored)


@contextlib.contextmanager
def _exclusive_lock(path: Path) -> Iterator[None]:
    """An flock on a file in the state folder; the OS releases it if the process dies."""
    with path.open("a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise LockHeldError(f"{path}: another run holds the lock; try again later") from None
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


# ---------------------------------------------------------------- files


def _describe_inputs(inputs: list[str | Path]) -> str:
    names = [Path(p).name or str(p) for p in inputs]
    return names[0] if len(names) == 1 else f"{names[0]} +{len(names) - 1}"


def _atomic_target(path: Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    handle = tempfile.NamedTemporaryFile(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp", delete=False)
    return handle, Path(handle.name)


def _replace(tmp: Path, path: Path, handle) -> None:
    handle.flush()
    os.fsync(handle.fileno())
    handle.close()
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # temporary files are owner-only; reports are for readers too
    os.replace(tmp, path)


def write_csv_atomic(table: pa.Table, path: Path) -> Path:
    """Write a CSV through a temporary file in the same folder, then rename it into place."""
    return write_csv_batches_atomic(table.to_batches(), table.schema, path)


def write_csv_batches_atomic(batches: Iterable[pa.RecordBatch], schema: pa.Schema, path: Path) -> Path:
    """Write record batches, produced one at a time, as one CSV through a temporary file in the
    same folder that is flushed and then renamed into place (no partial file is ever visible)."""
    handle, tmp = _atomic_target(path)
    try:
        with pa_csv.CSVWriter(handle, schema, write_options=pa_csv.WriteOptions(quoting_style="needed")) as writer:
            for batch in batches:
                writer.write_batch(batch)
        _replace(tmp, path, handle)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def write_text_atomic(text: str, path: Path) -> Path:
    handle, tmp = _atomic_target(path)
    try:
        handle.write(text.encode())
        _replace(tmp, path, handle)
    finally:
        tmp.unlink(missing_ok=True)
    return path


PARQUET_ROW_GROUP = 1_000_000  # rows converted to Arrow and written at a time


def write_parquet(table: pd.DataFrame, path: Path) -> Path:
    """Write a frame as Parquet, converting one row group at a time (bounds the Arrow copy)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    first = pa.Table.from_pandas(table.iloc[:PARQUET_ROW_GROUP], preserve_index=False)
    with pq.ParquetWriter(path, first.schema) as writer:
        writer.write_table(first)
        del first
        for lo in range(PARQUET_ROW_GROUP, len(table), PARQUET_ROW_GROUP):
            writer.write_table(pa.Table.from_pandas(table.iloc[lo : lo + PARQUET_ROW_GROUP], schema=writer.schema, preserve_index=False))
    return path

