"""The ``train`` job: files -> fitted bundle on the normal rows -> a new registered version."""

from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from pipeline import serving
from pipeline.config import PipelineConfig, to_yaml
from pipeline.data.files import discover_files
from pipeline.data.loading import LoadedInput, load_input
from pipeline.data.quality import quality_figures
from pipeline.detector.bundle import load_bundle
from pipeline.detector.fitting import FitReport, fit_bundle
from pipeline.errors import InputError
from pipeline.jobs.common import (
    describe_inputs,
    log_dataset,
    log_event_plots,
    log_reconstruction_quality,
    score_loaded,
    warn_set_aside,
)
from pipeline.jobs.review import latest_reviews, verdict_moves
from pipeline.reports import describe, explain, plots
from pipeline.store import atomic
from pipeline.store.names import (
    BUNDLE_FOLDER,
    CONFIG_ARTIFACT,
    DATA_FOLDER,
    HOLDOUT_ERRORS_PLOT,
    PLOTS_FOLDER,
    QUALITY_ARTIFACT,
    QUARANTINE_ARTIFACT,
    SCORES_PLOT,
    THRESHOLD_ARTIFACT,
    TRAINING_CURVES_PLOT,
    VALIDATED_FILE,
)
from pipeline.tracking import Tracker, inputs_digest

log = logging.getLogger(__name__)


@dataclass
class TrainOutcome:
    run_id: str
    model_version: str
    threshold: float
    rows: dict[str, int]
    rows_in: int = 0
    rows_scored: int = 0  # of the training input, scored for review
    rows_flagged: int = 0
    events: int = 0
    warnings: list[str] = field(default_factory=list)  # files with more than ingest.max_set_aside_share set aside


def train_job(inputs: list[str | Path], config: PipelineConfig, model_name: str, tracking_uri: str | None) -> TrainOutcome:
    """Train on the normal rows of the inputs, calibrate, and register a new model version."""
    tracker = Tracker(tracking_uri, model_name)
    run_name = f"train {model_name} {describe_inputs(inputs)}"
    with tracker.run("train", run_name=run_name, tags={"model_name": model_name}) as run_id:
        return train_into(tracker, discover_files(inputs), config, model_name, run_id)


def train_into(
    tracker: Tracker, files: list[tuple[str, Path]], config: PipelineConfig, model_name: str, run_id: str
) -> TrainOutcome:
    """Train and register within the active run ``run_id`` (``train`` and the first ``run``)."""
    tracker.log_params({"model_name": model_name, "inputs": ", ".join(name for name, _ in files), **config.flat()})
    tracker.log_text(to_yaml(config), CONFIG_ARTIFACT)
    loaded = load_input(files, config.ingest)
    warnings = log_training_input(tracker, loaded, [path for _, path in files], config)
    moved, moves = verdict_moves(loaded.result.table, config, latest_reviews(tracker, model_name, asset=""))
    tracker.log_metrics(moves)
    bundle, fit = fit_bundle(loaded.result, config, moved=moved)
    with tempfile.TemporaryDirectory(prefix="train-") as tmp:
        outcome = record_fit(tracker, loaded, bundle.save(Path(tmp) / BUNDLE_FOLDER), fit, config, model_name, run_id)
    outcome.warnings = warnings
    return outcome


def log_training_input(tracker: Tracker, loaded: LoadedInput, paths: list[Path], config: PipelineConfig) -> list[str]:
    """The training input's digest, quality report and dataset, on the active run; the files with
    too much set aside (``warn_set_aside``).

    Raises:
        InputError: more than ``ingest.max_set_aside_share`` of a file is set aside and
            ``training.allow_set_aside`` is off: a model trained on a fraction of its data is not
            what the user thinks it is.
    """
    tracker.set_tags({"input_digest": inputs_digest(loaded.digests), "source": describe_inputs(paths)})
    tracker.log_dict(loaded.quality, QUALITY_ARTIFACT)
    tracker.log_metrics(quality_figures(loaded.quality))
    log_dataset(tracker, loaded, paths, f"train {describe_inputs(paths)}", "training")
    over = loaded.quality.get("set_aside_over_limit", [])
    if over and not config.training.allow_set_aside:
        more = f" (and {len(over) - 1} more file(s))" if len(over) > 1 else ""
        raise InputError(f"{over[0]}{more}; to train on the rest anyway, pass --allow-set-aside (training.allow_set_aside)")
    return warn_set_aside(tracker, loaded.quality)


def record_fit(
    tracker: Tracker,
    loaded: LoadedInput,
    folder: Path,
    fit: FitReport,
    config: PipelineConfig,
    registered_name: str,
    run_id: str,
    tags: dict[str, str] | None = None,
) -> TrainOutcome:
    """Log a fitted bundle (saved in ``folder``, named ``BUNDLE_FOLDER``) on the active run; register it as ``registered_name``.

    The saved bundle, loaded as scoring loads it, scores the training input for review and gives
    the registered model's example output.
    """
    saved = load_bundle(folder)
    threshold = saved.threshold
    tracker.log_history(fit.history)
    tracker.log_metrics(
        {
            "threshold": threshold.value,
            "best_epoch": fit.best_epoch,
            **{f"holdout_error.{k}": v for k, v in threshold.error_stats.items()},
            **{k: float(v) for k, v in fit.rows.items()},
        }
    )
    tracker.log_dict({"sensors": saved.sensors, **threshold.to_dict()}, THRESHOLD_ARTIFACT)
    log_reconstruction_quality(tracker, fit.reconstruction)
    table = loaded.result.table
    with tempfile.TemporaryDirectory(prefix="train-") as tmp:
        tmp_dir = Path(tmp)
        tracker.log_artifact(plots.training_curves(fit.history, tmp_dir / TRAINING_CURVES_PLOT), PLOTS_FOLDER)
        histogram = plots.error_histogram(fit.holdout_errors, threshold.value, tmp_dir / HOLDOUT_ERRORS_PLOT)
        tracker.log_artifact(histogram, PLOTS_FOLDER)
        tracker.log_artifact(atomic.write_parquet(table, tmp_dir / VALIDATED_FILE), DATA_FOLDER)
        if len(loaded.result.rejected):
            tracker.log_artifact(atomic.write_csv(loaded.result.rejected, tmp_dir / QUARANTINE_ARTIFACT))
        rows, event, events = score_loaded(saved, loaded, "", run_id)
        plot = plots.score_plot(table["timestamp"], table["source"], rows.score, threshold.value, events, tmp_dir / SCORES_PLOT)
        tracker.log_artifact(plot, PLOTS_FOLDER)
        log_event_plots(tracker, saved, explain.event_details(saved, table, rows, event, events), tmp_dir)
        example = serving.input_example(loaded.result, saved)
        example_output = serving.predict_frame(saved, example)
        version, alias = tracker.register_model(folder, registered_name, run_id, example, example_output, tags)
    tracker.set_tags({"model_version": version, "model_alias": alias})
    tracker.set_description(
        describe.training_description(
            registered_name,
            version,
            alias,
            loaded.sources,
            inputs_digest(loaded.digests),
            loaded.quality,
            config.training.normal_until,
            config.ingest.label_column,
            fit.rows,
            saved.window_size,
            threshold,
            fit.history,
            fit.best_epoch,
            events,
            saved.scaler.centred,
        )
    )
    log.info("registered %s version %s as @%s (threshold %.5g)", registered_name, version, alias, threshold.value)
    return TrainOutcome(
        run_id=run_id,
        model_version=version,
        threshold=threshold.value,
        rows=fit.rows,
        rows_in=loaded.result.counts["rows_in"],
        rows_scored=int(np.isfinite(rows.score).sum()),
        rows_flagged=int((event > 0).sum()),
        events=len(events),
    )
