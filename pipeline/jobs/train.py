"""The ``train`` job: files -> fitted bundle on the normal rows -> a new registered version."""

from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from pipeline import serving
from pipeline.config import PipelineConfig, to_yaml
from pipeline.data.files import discover_files
from pipeline.data.loading import load_input
from pipeline.data.quality import quality_figures
from pipeline.detector.bundle import load_bundle
from pipeline.detector.fitting import fit_bundle
from pipeline.errors import InputError
from pipeline.jobs.common import describe_inputs, log_dataset, log_event_plots, score_loaded, warn_set_aside
from pipeline.reports import describe, plots
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
    paths = [path for _, path in files]
    tracker.log_params({"model_name": model_name, "inputs": ", ".join(name for name, _ in files), **config.flat()})
    tracker.log_text(to_yaml(config), CONFIG_ARTIFACT)
    loaded = load_input(files, config.ingest)
    digest = inputs_digest(loaded.digests)
    tracker.set_tags({"input_digest": digest, "source": describe_inputs(paths)})
    tracker.log_dict(loaded.quality, QUALITY_ARTIFACT)
    tracker.log_metrics(quality_figures(loaded.quality))
    log_dataset(tracker, loaded, files, f"train {describe_inputs(paths)}", "training")
    # A model trained on a fraction of its data is not what the user thinks it is: stop unless allowed.
    over = loaded.quality.get("set_aside_over_limit", [])
    if over and not config.training.allow_set_aside:
        more = f" (and {len(over) - 1} more file(s))" if len(over) > 1 else ""
        raise InputError(f"{over[0]}{more}; to train on the rest anyway, pass --allow-set-aside (training.allow_set_aside)")
    warnings = warn_set_aside(tracker, loaded.quality)

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
    tracker.log_dict({"sensors": bundle.sensors, **threshold.to_dict()}, THRESHOLD_ARTIFACT)
    with tempfile.TemporaryDirectory(prefix="train-") as tmp:
        tmp_dir = Path(tmp)
        tracker.log_artifact(plots.training_curves(fit.history, tmp_dir / TRAINING_CURVES_PLOT), PLOTS_FOLDER)
        tracker.log_artifact(
            plots.error_histogram(fit.holdout_errors, threshold.value, tmp_dir / HOLDOUT_ERRORS_PLOT), PLOTS_FOLDER
        )
        tracker.log_artifact(atomic.write_parquet(loaded.result.table, tmp_dir / VALIDATED_FILE), DATA_FOLDER)
        if len(loaded.result.rejected):
            tracker.log_artifact(atomic.write_csv(loaded.result.rejected, tmp_dir / QUARANTINE_ARTIFACT))
        folder = bundle.save(tmp_dir / BUNDLE_FOLDER)
        # The saved bundle as scoring will load it: it scores the training input for review and
        # gives the registered model's example output.
        saved = load_bundle(folder)
        table = loaded.result.table
        rows, event, events = score_loaded(saved, loaded, "", run_id)
        plot = plots.score_plot(table["timestamp"], table["source"], rows.score, threshold.value, events, tmp_dir / SCORES_PLOT)
        tracker.log_artifact(plot, PLOTS_FOLDER)
        log_event_plots(tracker, saved, table, rows, event, events, tmp_dir)
        example = serving.input_example(loaded.result, saved)
        version, alias = tracker.register_model(folder, model_name, run_id, example, serving.predict_frame(saved, example))
    tracker.set_tags({"model_version": version, "model_alias": alias})
    tracker.set_description(
        describe.training_description(
            model_name,
            version,
            alias,
            loaded.sources,
            digest,
            loaded.quality,
            config.training.normal_until,
            config.ingest.label_column,
            fit.rows,
            bundle.window_size,
            threshold,
            fit.history,
            fit.best_epoch,
            events,
            bundle.scaler.centred,
        )
    )
    log.info("registered %s version %s as @%s (threshold %.5g)", model_name, version, alias, threshold.value)
    return TrainOutcome(run_id=run_id, model_version=version, threshold=threshold.value, rows=fit.rows, warnings=warnings)
