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

from pipeline import plots
from pipeline.bundle import ModelBundle, load_bundle
from pipeline.calibrate import calibrate_threshold
from pipeline.config import PipelineConfig, to_yaml
from pipeline.errors import InputError, LockHeldError
from pipeline.features import fit_scaler, segment_ids, window_starts
from pipeline.ingest import IngestResult, discover_files, file_digest, read_source, validate
from pipeline.quality import quality_figures, quality_report, sampling_interval_seconds
from pipeline.report import assign_events, scores_batches, scores_schema, summarise_events
from pipeline.score import (
    ErrorNormaliser,
    fit_drift_rate,
    fit_error_scale,
    reconstruction_errors,
    score_rows,
    sensor_errors,
    smooth_trailing,
    utc_ns,
)
from pipeline.tracking import Tracker, inputs_digest

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
    train_starts = _part_starts(stretch, part, 0, window, config.features.stride)
    val_starts = _part_starts(stretch, part, 1, window, config.features.stride)
    holdout_starts = _part_starts(stretch, part, 2, window, 1)
    for name, starts in (("training", train_starts), ("validation", val_starts), ("calibration", holdout_starts)):
        if starts.size == 0:
            raise InputError(f"no {name} windows: normal data is too short or too gappy for window_size={window}")
    log.info("training on %d windows, early stopping on %d, calibrating on %d", train_starts.size, val_starts.size, holdout_starts.size)

    from pipeline.train import train_autoencoder  # TensorFlow is imported only where training needs it

    trained = train_autoencoder(values, train_starts, val_starts, window, config.model)
    errors, shares = reconstruction_errors(trained.model, values, holdout_starts, window, config.scoring.batch_size)
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
        errors = (sensor_errors(errors, shares) * weights).mean(axis=1)
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
    source_code = pd.factorize(table["source"])[0]  # int codes: no Python string per row
    source_change = np.concatenate([[False], source_code[1:] != source_code[:-1]])
    groups = np.cumsum(source_change | np.concatenate([[False], np.diff(rows.segment) != 0]))
    event = assign_events(rows.score, bundle.threshold.value, groups, bundle.config.events)
    events = summarise_events(table, rows, event, bundle.threshold.value, bundle.sensors, model_version, run_id)
    return rows, event, events


def _score_into(tracker: Tracker, bundle: ModelBundle, version: str, files: list[tuple[str, Path]], out_dir: Path, run_id: str) -> ScoreOutcome:
    tracker.log_params({"model_version": version, "inputs": ", ".join(name for name, _ in files), **bundle.config.flat()})
    tracker.log_text(to_yaml(bundle.config), "config.yaml")
    # Data to score needs no label, even when the model was trained on labelled rows.
    reading = bundle.config.model_copy(update={"ingest": bundle.config.ingest.model_copy(update={"label_column": None})})
    loaded = load_input(files, reading, sensors=bundle.sensors, timestamp_column=bundle.timestamp_column)
    tracker.set_tags({"input_digest": inputs_digest(loaded.digests), "model_version": version})
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
    if outcome.rows_scored == 0:
        log.warning(
            "no row has a full window of %d rows without a gap longer than %.0f s: every score is empty "
            "(the model was trained on data sampled every %.0f s)",
            bundle.window_size, bundle.max_gap_seconds, bundle.sampling_interval_seconds,
        )  # fmt: skip
    log.info("scored %d rows: %d flagged in %d event(s); report in %s", outcome.rows_in, outcome.rows_flagged, outcome.events, out_dir)
    return outcome


def _load_registered(tracker: Tracker, model_name: str) -> tuple[ModelBundle, str]:
    latest = tracker.latest_version(model_name)
    if latest is None:
        raise InputError(f"no registered model named '{model_name}' in {tracker.uri}: run 'anomaly-pipeline train' first")
    version, run_id = latest
    with tracker.downloaded_bundle(run_id) as folder:
        return load_bundle(folder), version


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
    tracker.set_tags({"input_digest": inputs_digest(loaded.digests)})
    tracker.log_dict(loaded.quality, "quality_report.json")
    tracker.log_metrics(quality_figures(loaded.quality))

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
        version = tracker.register_bundle(bundle.save(tmp_dir / "bundle"), model_name, run_id)
    tracker.set_tags({"model_version": version})
    log.info("registered %s version %s (threshold %.5g)", model_name, version, threshold.value)
    return TrainOutcome(run_id=run_id, model_version=version, threshold=threshold.value, rows=fit.rows)


def train_job(inputs: list[str | Path], config: PipelineConfig, model_name: str, tracking_uri: str | None) -> TrainOutcome:
    """Train on the normal rows of the inputs, calibrate, and register a new model version."""
    tracker = Tracker(tracking_uri, model_name)
    with tracker.run("train", run_name=f"train {model_name} {_describe_inputs(inputs)}", tags={"model_name": model_name}) as run_id:
        return _train_into(tracker, discover_files(inputs), config, model_name, run_id)


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

