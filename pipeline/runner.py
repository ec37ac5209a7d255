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
from dataclasses import dataclass, replace
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
from pipeline.config import IngestConfig, PipelineConfig, to_yaml
from pipeline.errors import InputError, LockHeldError, PromotionRefused
from pipeline.features import fit_scaler, segment_ids, wandering_sensors, window_starts
from pipeline.ingest import (
    IngestResult,
    RawSource,
    discover_files,
    iso_utc,
    read_source,
    validate,
)
from pipeline.quality import quality_figures, quality_report, sampling_interval_seconds
from pipeline.report import (
    EVENT_COLUMNS,
    assign_events,
    scores_batches,
    scores_schema,
    summarise_events,
)
from pipeline.score import (
    ErrorNormaliser,
    ErrorRule,
    RowScores,
    combine_sensors,
    fit_drift_rate,
    fit_error_scale,
    reconstruction_errors,
    score_rows,
    sensor_errors,
    smooth_trailing,
    utc_ns,
)
from pipeline.state import (
    LOCK_FILE,
    PARTIAL_PREFIX,
    Candidate,
    FileRecord,
    Quarantined,
    RunState,
    checkpoint,
    classify,
    load_state,
    now_iso,
    publish_folder,
    recover_outputs,
    run_folder_name,
    save_state,
)
from pipeline.stream import (
    Carry,
    decide_events,
    empty_pending,
    event_stats,
    events_frame,
    global_segments,
    iso_ns,
)
from pipeline.tracking import CHALLENGER, CHAMPION, Tracker, inputs_digest

log = logging.getLogger(__name__)



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
    # Training windows lie wholly in the first part; the early-stopping and calibration windows
    # end in their own part and may reach back into earlier rows as context (as a scored row's
    # window does), so a few hundred normal rows suffice even for long windows.
    training = config.training
    fit_share = (1 - training.holdout_fraction) * (1 - training.validation_fraction)
    needed = max(int(np.ceil(window / fit_share)), int(np.ceil(1 / min(training.holdout_fraction, (1 - training.holdout_fraction) * training.validation_fraction))))
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

    raw = table[result.sensors].to_numpy(dtype=np.float64)[normal]
    scaler = fit_scaler(raw[part < 2], result.sensors)
    values = scaler.transform(raw)
    wandering = wandering_sensors(values[part == 0], result.sensors, config.features.wander_ratio)
    if wandering:
        log.info("judged by shape, not level (they wander in training): %s", ", ".join(wandering))
        scaler = replace(scaler, centred=wandering)
    train_starts = _part_starts(stretch, part, 0, window, config.features.stride)
    val_starts = _part_starts(stretch, part, 1, window, config.features.stride)
    holdout_starts = _part_starts(stretch, part, 2, window, 1)
    for name, starts in (("training", train_starts), ("validation", val_starts), ("calibration", holdout_starts)):
        if starts.size == 0:
            raise InputError(f"no {name} windows: normal data is too short or too gappy for window_size={window}")
    log.info("training on %d windows, early stopping on %d, calibrating on %d", train_starts.size, val_starts.size, holdout_starts.size)

    from pipeline.train import (
        train_autoencoder,  # TensorFlow is imported only where training needs it
    )

    trained = train_autoencoder(values, train_starts, val_starts, window, config.model, scaler.centred_mask)
    rule = ErrorRule(centred=scaler.centred_mask, offset_weight=config.scoring.offset_weight)  # raw: normalised and combined below
    errors, shares = reconstruction_errors(trained.model, values, holdout_starts, window, config.scoring.batch_size, rule)
    # The held-out windows' scores, computed as scoring will: normalised per sensor, smoothed.
    error_scale = drift_rate = drift_reference = None
    if config.scoring.normalise_sensors:
        times = table["timestamp"][normal]
        times_ns = utc_ns(times)
        error_scale = fit_error_scale(errors, shares)
        fit_rows_idx = np.flatnonzero(part == 0)
        drift_rate = fit_drift_rate(values[fit_rows_idx], times_ns[fit_rows_idx])
        drift_reference = times.iloc[int(fit_rows_idx[-1])].isoformat()
        normaliser = ErrorNormaliser(np.asarray(error_scale), np.asarray(drift_rate), config.scoring.drift_allowance, int(times_ns[fit_rows_idx[-1]]))
        weights = normaliser.weights(times_ns[holdout_starts + window - 1])
        errors = combine_sensors(sensor_errors(errors, shares) * weights, config.scoring.combine)
    else:
        errors = combine_sensors(sensor_errors(errors, shares), config.scoring.combine)
    errors = smooth_trailing(errors, config.scoring.smoothing_rows, stretch[holdout_starts])
    errors = errors[np.isfinite(errors)]
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
        error_scale=error_scale,
        drift_rate=drift_rate,
        drift_reference=drift_reference,
    )
    return bundle, FitReport(trained.history, trained.best_epoch, errors, rows)


def _part_starts(stretch: np.ndarray, part: np.ndarray, which: int, window: int, stride: int) -> np.ndarray:
    """Start rows (among the normal rows) of the windows whose last row is in part ``which``.

    Parts come in time order, so a training window (part 0) lies wholly in training rows.
    """
    starts = window_starts(stretch, window, 1)
    starts = starts[part[starts + window - 1] == which]
    return starts[::stride]


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
    rows = score_rows(bundle, table, progress=True)
    # The files of one call are consecutive pieces of one stream: an event, like a window, may
    # run on from one file into the next, but never across a gap in time (as ``run`` does).
    event = assign_events(rows.score, bundle.threshold.value, rows.segment, bundle.config.events)
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
            fit.history, fit.best_epoch, events, bundle.scaler.centred,
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

    @property
    def processed(self) -> list[Candidate]:
        bad = {name for name, _ in self.quarantined}
        return [c for c in self.candidates if c.kind in ("new", "appended") and c.name not in bad]


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
) -> RunOutcome:
    """The scheduled batch: process what is new in ``input_dir`` exactly once (see ``pipeline.state``).

    Trains first when no model of that name exists, or with ``retrain``. Reading settings
    (``ingest``) and event settings (``events``) come from ``config`` when ``config_given``, else
    from the model's training config; sensors, timestamp column, window, gap rule, scaler and
    threshold are fixed by the model.
    """
    if dry_run:
        return _dry_run(input_dir, state_dir, model_name, tracking_uri, retrain)
    state_dir.mkdir(parents=True, exist_ok=True)
    with _exclusive_lock(state_dir / LOCK_FILE):
        checkpoint("locked")
        state = load_state(state_dir)
        recover_outputs(out_dir, state.runs)
        update_cumulative_anomalies(out_dir, state, state_dir)  # a run killed after committing did not
        tracker = Tracker(tracking_uri, model_name)
        tracker.end_stale_runs()
        candidates = classify(_input_files(input_dir), state)
        todo = [c for c in candidates if c.kind in ("new", "appended", "changed")]
        for c in candidates:
            if c.kind == "quarantined":
                log.info("%s: still quarantined (content unchanged): %s", c.name, c.note)
        if not todo and not retrain:
            log.info("nothing new in %s", input_dir)
            return RunOutcome(None, None, candidates, [], None)
        with tracker.run("run", run_name=f"run {model_name} {input_dir.name}", tags={"model_name": model_name}) as run_id:
            return _run_into(tracker, run_id, candidates, state, input_dir, out_dir, state_dir, config, config_given, model_name, retrain)


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


def _run_into(
    tracker: Tracker,
    run_id: str,
    candidates: list[Candidate],
    state: RunState,
    input_dir: Path,
    out_dir: Path,
    state_dir: Path,
    config: PipelineConfig,
    config_given: bool,
    model_name: str,
    retrain: bool,
) -> RunOutcome:
    quarantined: list[tuple[str, str]] = []
    for c in candidates:
        if c.kind == "changed":
            quarantined.append((c.name, c.note))
    tracker.log_metrics({"files_seen": len(candidates), **{f"files_{k}": sum(c.kind == k for c in candidates) for k in ("new", "appended", "changed")}})

    # The model: trained first when there is none (or on --retrain), on every readable file.
    trained = None
    latest = None if retrain else tracker.latest_version(model_name)
    reading = config if (config_given or latest is None) else None
    bundle = version = None
    if latest is not None:
        bundle, version = _load_registered(tracker, model_name)
        reading = _reading_config(config if config_given else bundle.config, bundle.config)

    # Read the new content file by file: a file that cannot be read is quarantined, not fatal.
    sources: dict[str, RawSource] = {}
    ingest_config = (reading or config).ingest
    for c in candidates:
        if c.kind not in ("new", "appended"):
            continue
        try:
            raw = read_source(c.name, c.path, ingest_config)
        except InputError as exc:
            quarantined.append((c.name, _reason(c.name, exc)))
            continue
        if c.skip_rows:
            raw = RawSource(c.name, raw.frame.iloc[c.skip_rows :].reset_index(drop=True), raw.digest, row_offset=c.skip_rows)
        sources[c.name] = raw

    if latest is None:
        train_files = [(c.name, c.path) for c in candidates if c.kind == "processed" or c.name in sources]
        if not train_files:
            raise InputError(f"{input_dir}: no readable file to train on ({'; '.join(r for _, r in quarantined)})")
        with tracker.run("train", run_name=f"train {model_name} {input_dir.name}", tags={"model_name": model_name}, nested=True) as train_id:
            trained = _train_into(tracker, train_files, config, model_name, train_id)
        checkpoint("after_train")
        bundle, version = _load_registered(tracker, model_name)
        reading = _reading_config(config, bundle.config)
    assert bundle is not None and version is not None and reading is not None

    result = _validate_batch(list(sources.values()), reading, bundle, quarantined)
    carry = _load_carry(state, bundle)
    batch = score_batch(bundle, reading, result, carry, version, run_id) if result is not None else None
    if batch is None and not quarantined:
        tracker.set_tags({"model_version": version})
        return RunOutcome(run_id, None, candidates, quarantined, trained, model_version=version)

    # Outputs first, in a partial folder renamed into place; then the state; then the summary.
    folder = None
    if batch is not None:
        folder = out_dir / run_folder_name(run_id)
        partial = out_dir / f"{PARTIAL_PREFIX}{run_id}"
        partial.mkdir(parents=True, exist_ok=True)
        write_csv_batches_atomic(batch.scores, batch.scores_schema, partial / "scores.csv")
        checkpoint("mid_outputs")
        write_csv_atomic(pa.Table.from_pandas(batch.events, preserve_index=False), partial / "anomalies.csv")
        write_text_atomic(json.dumps(batch.quality, indent=2), partial / "quality.json")
        manifest = {
            "run_id": run_id,
            "model_name": model_name,
            "model_version": version,
            "threshold": bundle.threshold.value,
            "files": {c.name: {"kind": c.kind, "from_row": c.skip_rows, "digest": c.digest} for c in candidates if c.name in sources},
            "quarantined_files": dict(quarantined),
            "rows": batch.counts,
        }
        write_text_atomic(json.dumps(manifest, indent=2), partial / "run.json")
        publish_folder(partial, folder)
        checkpoint("after_outputs")

    now = now_iso()
    for c in candidates:
        if c.name in sources and c.name not in dict(quarantined):
            total_rows = c.skip_rows + len(sources[c.name].frame)
            state.files[c.name] = FileRecord(c.digest, c.size, total_rows, folder.name if folder else "", now)
            state.quarantined.pop(c.name, None)
    digests = {c.name: c.digest for c in candidates}
    for name, reason in quarantined:
        state.quarantined[name] = Quarantined(digests[name], reason, now, run_id)
        log.error("%s: quarantined: %s", name, reason)
    if batch is not None:
        state.carry = batch.carry.to_dict()
        state.runs.append(folder.name)
        state.unmerged.append(folder.name)
    save_state(state, state_dir)
    checkpoint("after_state")
    update_cumulative_anomalies(out_dir, state, state_dir)

    tracker.set_tags({"model_version": version, "input_digest": inputs_digest({n: d for n, d in digests.items() if n in sources})})
    if quarantined:
        tracker.set_tags({"quarantined_files": ", ".join(name for name, _ in quarantined)[:5000]})
    outcome = RunOutcome(run_id, folder, candidates, quarantined, trained, model_version=version)
    if batch is not None:
        outcome.rows_in, outcome.rows_written, outcome.rows_held = batch.counts["rows_in"], batch.rows_written, batch.rows_held
        outcome.rows_flagged, outcome.events = batch.rows_flagged, len(batch.events)
        tracker.log_params({"model_version": version, "inputs": ", ".join(sources)[:6000], **{f"run.{k}": v for k, v in reading.flat().items() if k.split(".")[0] in ("ingest", "events")}})
        tracker.log_metrics(
            {
                "rows_in": outcome.rows_in, "rows_written": outcome.rows_written, "rows_held_back": outcome.rows_held,
                "rows_flagged": outcome.rows_flagged, "events": outcome.events, "files_quarantined": len(quarantined),
                "threshold": bundle.threshold.value, **quality_figures(batch.quality),
            }
        )  # fmt: skip
        tracker.log_artifact(folder / "anomalies.csv")
        tracker.log_artifact(folder / "run.json")
    return outcome


def _reading_config(run_config: PipelineConfig, model_config: PipelineConfig) -> PipelineConfig:
    """The model's config with the reading and event settings of the run's config.

    Reading (delimiter, decimal, time zone, repairs) and the event policy may change between
    runs; what the model learned (sensors, window, gap rule, scaler, threshold) may not. Data to
    score needs no label column.
    """
    # A setting counts as given only when it differs from its default (a model's stored config
    # holds every field): e.g. mixed time zones are resolved only by a configured source zone.
    given = run_config.ingest.model_dump(exclude_defaults=True) if run_config is model_config else run_config.ingest.model_dump(exclude_unset=True)
    ingest = IngestConfig.model_validate({**given, "label_column": None})
    return model_config.model_copy(update={"ingest": ingest, "events": run_config.events, "scoring": run_config.scoring})


def _validate_batch(sources: list[RawSource], reading: PipelineConfig, bundle: ModelBundle, quarantined: list[tuple[str, str]]) -> IngestResult | None:
    """Validate the batch's files together (one stream); a file that fails alone is quarantined."""
    if not sources:
        return None
    try:
        return validate(sources, reading.ingest, sensors=bundle.sensors, timestamp_column=bundle.timestamp_column)
    except InputError:
        pass
    good = []
    for source in sources:
        try:
            validate([source], reading.ingest, sensors=bundle.sensors, timestamp_column=bundle.timestamp_column)
            good.append(source)
        except InputError as exc:
            quarantined.append((source.name, _reason(source.name, exc)))
    if not good:
        return None
    return validate(good, reading.ingest, sensors=bundle.sensors, timestamp_column=bundle.timestamp_column)


def _reason(name: str, exc: InputError) -> str:
    """The error without its leading 'file: ' (the quarantine record names the file already)."""
    head, sep, rest = str(exc).partition(": ")
    return rest if sep and (head == name or head.endswith("/" + name)) else str(exc)


def _load_carry(state: RunState, bundle: ModelBundle) -> Carry:
    if state.carry is None:
        return Carry.empty(bundle.sensors)
    carry = Carry.from_dict(state.carry)
    if carry.sensors != bundle.sensors:  # a model on other sensors: the stream starts afresh
        log.warning("the model's sensors differ from the stream's so far: no context carried into this batch")
        fresh = Carry.empty(bundle.sensors)
        fresh.next_event_id, fresh.last_segment, fresh.last_timestamp_ns = carry.next_event_id, carry.last_segment, carry.last_timestamp_ns
        return fresh
    return carry


@dataclass
class BatchResult:
    scores: Iterable[pa.RecordBatch]
    scores_schema: pa.Schema
    events: pd.DataFrame
    quality: dict[str, Any]
    counts: dict[str, int]
    carry: Carry
    rows_written: int
    rows_held: int
    rows_flagged: int


def score_batch(bundle: ModelBundle, reading: PipelineConfig, result: IngestResult, carry: Carry, version: str, run_id: str) -> BatchResult:
    """Score one batch of a stream after the rows ``carry`` holds; pure apart from logging.

    Rows at or before the last processed time are set aside as late (their neighbours were
    already scored); the context rows give the first rows their full windows; held-back rows of
    the previous batch are decided with this one.
    """
    sensors = bundle.sensors
    table, rejected = result.table, result.rejected
    counts = dict(result.counts)
    counts["late_rows"] = 0
    if carry.last_timestamp_ns is not None and len(table):
        late = (table["timestamp"].dt.as_unit("ns").array.asi8 <= carry.last_timestamp_ns)
        if late.any():
            last = iso_ns(carry.last_timestamp_ns)
            gone = table[late]
            rejected = pd.concat(
                [rejected, pd.DataFrame({"source": gone["source"], "row": gone["row"], "timestamp": iso_utc(gone["timestamp"]),
                                         "status": f"late row: not after the last processed time {last}"})],
                ignore_index=True,
            )  # fmt: skip
            table = table[~late].reset_index(drop=True)
            counts["late_rows"] = int(late.sum())
            counts["rows_clean"] -= counts["late_rows"]
            counts["rows_quarantined"] += counts["late_rows"]
            log.warning("%d row(s) at or before the last processed time %s set aside as late", counts["late_rows"], last)
    checked = IngestResult(table=table, rejected=rejected, sensors=sensors, timestamp_column=result.timestamp_column, counts=counts,
                           filled_values=result.filled_values, missing_values=result.missing_values, ignored_columns=result.ignored_columns)  # fmt: skip
    quality = quality_report(checked, reading.ingest.flatline_rows) if len(table) else {"rows": counts, "sources": sorted(set(rejected["source"]))}

    # Scores: the context rows in front give the batch's first rows their full windows.
    context = carry.context
    n_ctx = len(context)
    ext = pd.concat([context, table[["timestamp", *sensors]]], ignore_index=True) if n_ctx else table[["timestamp", *sensors]]
    scored = score_rows(bundle, ext, progress=True)
    segment = global_segments(scored.segment, n_ctx, carry.last_segment)
    score = scored.score[n_ctx:]
    contributions = scored.contributions[n_ctx:]

    # Events over the held-back rows and this batch, continuing the carried event.
    pending = carry.pending if carry.pending is not None else empty_pending(sensors)
    n_pending = len(pending)
    all_score = np.concatenate([pending["score"].to_numpy(np.float32), score])
    all_segment = np.concatenate([pending["segment"].to_numpy(np.int64), segment])
    all_contrib = np.concatenate([pending[[f"contrib_{s}" for s in sensors]].to_numpy(np.float32).reshape(n_pending, len(sensors)), contributions])
    all_source = np.concatenate([pending["source"].to_numpy(object), table["source"].to_numpy(object)])
    all_row = np.concatenate([pending["row"].to_numpy(np.int64), table["row"].to_numpy(np.int64)])
    all_ns = np.concatenate([pending["timestamp_ns"].to_numpy(np.int64), table["timestamp"].dt.as_unit("ns").array.asi8])
    threshold = bundle.threshold.value
    decision = decide_events(all_score, all_segment, threshold, reading.events, carry.open_event.event_id if carry.open_event else None,
                             carry.open_segment, carry.next_event_id)  # fmt: skip
    k = decision.n_decided
    event = decision.event[:k]

    # Running figures of the events touched, continuing the carried one.
    stats = event_stats(event, all_score[:k], all_contrib[:k], all_ns[:k], all_source[:k])
    if carry.open_event is not None and carry.open_event.event_id in stats:
        stats[carry.open_event.event_id] = carry.open_event.merged(stats[carry.open_event.event_id])
    events = events_frame(list(stats.values()), sensors, threshold, version, run_id)
    open_event = None
    if decision.open_event_id is not None:
        open_event = stats.get(decision.open_event_id) or (carry.open_event if carry.open_event and carry.open_event.event_id == decision.open_event_id else None)

    # The next batch's carry.
    held = pd.DataFrame({"source": all_source[k:], "row": all_row[k:], "timestamp_ns": all_ns[k:], "score": all_score[k:].astype(np.float64), "segment": all_segment[k:]})
    for i, s in enumerate(sensors):
        held[f"contrib_{s}"] = all_contrib[k:, i].astype(np.float64)
    tail = ext.iloc[max(0, len(ext) - bundle.context_rows) :].reset_index(drop=True) if bundle.context_rows else ext.iloc[:0]
    new_carry = Carry(
        sensors=sensors,
        context=tail,
        last_segment=int(segment[-1]) if segment.size else carry.last_segment,
        last_timestamp_ns=int(all_ns[n_pending:].max()) if len(table) else carry.last_timestamp_ns,
        pending=held,
        open_event=open_event,
        open_segment=int(all_segment[-1]) if open_event is not None else None,
        next_event_id=decision.next_event_id,
        model_version=version,
    )

    # scores.csv: the decided rows (held-back ones first: they are older) and the set-aside rows.
    written = pd.DataFrame({"source": all_source[:k], "row": all_row[:k], "timestamp": pd.to_datetime(all_ns[:k], utc=True)})
    out = IngestResult(table=written, rejected=rejected, sensors=sensors, timestamp_column=result.timestamp_column)
    rows = RowScores(score=all_score[:k], contributions=all_contrib[:k], segment=all_segment[:k])
    order = list(dict.fromkeys([*map(str, pending["source"]), *map(str, table["source"]), *map(str, rejected["source"])]))
    counts["rows_held_back"] = len(held)
    counts["rows_from_earlier_batches"] = min(k, n_pending)
    return BatchResult(
        scores=scores_batches(out, rows, event, threshold, order),
        scores_schema=scores_schema(sensors),
        events=events,
        quality=quality,
        counts=counts,
        carry=new_carry,
        rows_written=k + len(rejected),
        rows_held=len(held),
        rows_flagged=int((event > 0).sum()),
    )


def update_cumulative_anomalies(out_dir: Path, state: RunState, state_dir: Path) -> None:
    """Bring ``--out/anomalies.csv`` (every event so far, with its latest figures: a later run
    that extended an event replaces its row; by event id) up to the committed runs.

    The runs committed since the last update (``state.unmerged``) are merged into it, so a run
    reads one file per new run, not every run folder; merging again is harmless (the latest
    row per event wins), which makes a kill between the merge and the state update safe. When
    the file is missing, it is rebuilt from every committed run folder.
    """
    path = out_dir / "anomalies.csv"
    if not state.runs or (path.is_file() and not state.unmerged):
        return
    names = state.unmerged if path.is_file() else state.runs
    frames = [_read_events(path)] if path.is_file() else []
    frames += [_read_events(out_dir / name / "anomalies.csv") for name in names]
    events = pd.concat([f for f in frames if len(f)] or [pd.DataFrame(columns=EVENT_COLUMNS)], ignore_index=True)
    events = events.drop_duplicates("event_id", keep="last").sort_values("event_id", kind="stable")
    write_csv_atomic(pa.Table.from_pandas(events[EVENT_COLUMNS], preserve_index=False), path)
    if state.unmerged:
        state.unmerged = []
        save_state(state, state_dir)


def _read_events(path: Path) -> pd.DataFrame:
    if not path.is_file() or not path.stat().st_size:
        return pd.DataFrame(columns=EVENT_COLUMNS)
    return pd.read_csv(path, dtype={"model_version": str, "run_id": str, "source": str, "top_sensors": str})


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

