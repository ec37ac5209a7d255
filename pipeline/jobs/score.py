"""The ``score`` job: files -> scores with the ``@champion`` version -> reports in ``--out``."""

from __future__ import annotations

import json
import logging
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from pipeline.config import to_yaml
from pipeline.data.files import discover_files
from pipeline.data.loading import load_input
from pipeline.data.quality import quality_figures
from pipeline.detector.bundle import ModelBundle
from pipeline.detector.reviews import annotate
from pipeline.jobs import drift_watch
from pipeline.jobs.common import describe_inputs, load_registered, log_dataset, log_event_plots, score_loaded, warn_set_aside
from pipeline.jobs.review import latest_reviews
from pipeline.reports import describe, plots
from pipeline.reports.tables import scores_batches, scores_schema
from pipeline.serving import scoring_ingest
from pipeline.store import atomic
from pipeline.store.names import (
    ANOMALIES_FILE,
    CONFIG_ARTIFACT,
    QUALITY_ARTIFACT,
    QUALITY_FILE,
    SCORES_PLOT,
    VALIDATED_FILE,
    scores_file,
)
from pipeline.tracking import Tracker, inputs_digest

log = logging.getLogger(__name__)


@dataclass
class ScoreOutcome:
    run_id: str
    out_dir: Path
    rows_in: int
    rows_scored: int
    rows_flagged: int
    events: int
    model_version: str
    warnings: list[str] = field(default_factory=list)  # files with more than ingest.max_set_aside_share set aside


def score_job(
    inputs: list[str | Path], out_dir: Path, model_name: str, tracking_uri: str | None, output_format: str = "csv"
) -> ScoreOutcome:
    """Score files with the version of ``model_name`` holding ``@champion`` and write the reports.

    ``output_format`` ("csv" or "parquet") is that of the per-row scores table (``scores.csv``
    or ``scores.parquet``, the same columns and rows); the other reports are always CSV/JSON.
    """
    tracker = Tracker(tracking_uri, model_name)
    run_name = f"score {model_name} {describe_inputs(inputs)}"
    with tracker.run("score", run_name=run_name, tags={"model_name": model_name}) as run_id:
        bundle, version = load_registered(tracker, model_name)
        return _score_into(tracker, model_name, bundle, version, discover_files(inputs), out_dir, run_id, output_format)


def _score_into(
    tracker: Tracker,
    model_name: str,
    bundle: ModelBundle,
    version: str,
    files: list[tuple[str, Path]],
    out_dir: Path,
    run_id: str,
    output_format: str = "csv",
) -> ScoreOutcome:
    paths = [path for _, path in files]
    tracker.log_params({"model_version": version, "inputs": ", ".join(name for name, _ in files), **bundle.config.flat()})
    tracker.log_text(to_yaml(bundle.config), CONFIG_ARTIFACT)
    loaded = load_input(
        files, scoring_ingest(bundle), sensors=bundle.sensors, timestamp_column=bundle.timestamp_column, **bundle.input_hints()
    )
    digest = inputs_digest(loaded.digests)
    tracker.set_tags({"input_digest": digest, "model_version": version, "source": describe_inputs(paths)})
    tracker.record_input_paths(paths)  # promote re-reads the latest scored data from there
    log_dataset(tracker, loaded, paths, f"score {describe_inputs(paths)}", "scoring")
    warnings = warn_set_aside(tracker, loaded.quality)  # scored all the same: every row is reported
    rows, event, events = score_loaded(bundle, loaded, version, run_id)
    loaded.quality["drift"] = drift_watch.batch_drift(bundle, loaded.result.table, bundle.config.drift)
    reviews = latest_reviews(tracker, model_name, asset="")
    if len(reviews) and len(events):
        events = annotate(events, reviews, bundle.config.review)  # the verdicts, and repeats of reviewed false alarms

    out_dir.mkdir(parents=True, exist_ok=True)
    table = loaded.result.table
    threshold = bundle.threshold.value
    # scores.csv is written a batch at a time: the whole table as text would be several GB at
    # millions of rows.
    scores = scores_batches(loaded.result, rows, event, threshold, loaded.sources)
    atomic.write_table_batches(scores, scores_schema(loaded.result.sensors), out_dir / scores_file(output_format), output_format)
    atomic.write_csv(events, out_dir / ANOMALIES_FILE)
    atomic.write_text(json.dumps(loaded.quality, indent=2), out_dir / QUALITY_FILE)
    atomic.write_parquet(table, out_dir / VALIDATED_FILE)
    plot = plots.score_plot(table["timestamp"], table["source"], rows.score, threshold, events, out_dir / SCORES_PLOT)

    outcome = ScoreOutcome(
        run_id=run_id,
        out_dir=out_dir,
        rows_in=loaded.result.counts["rows_in"],
        rows_scored=int(np.isfinite(rows.score).sum()),
        rows_flagged=int((event > 0).sum()),
        events=len(events),
        model_version=version,
        warnings=warnings,
    )
    tracker.log_metrics(
        {
            "rows_in": outcome.rows_in,
            "rows_scored": outcome.rows_scored,
            "rows_flagged": outcome.rows_flagged,
            "events": outcome.events,
            "threshold": threshold,
            **quality_figures(loaded.quality),
        }
    )
    drift_watch.log_drift(tracker, loaded.quality["drift"])
    tracker.log_dict(loaded.quality, QUALITY_ARTIFACT)
    tracker.log_artifact(out_dir / ANOMALIES_FILE)
    tracker.log_artifact(plot)
    with tempfile.TemporaryDirectory(prefix="score-plots-") as tmp:
        log_event_plots(tracker, bundle, table, rows, event, events, Path(tmp))
    tracker.set_description(
        describe.scoring_description(
            model_name,
            version,
            loaded.sources,
            digest,
            loaded.quality,
            outcome.rows_in,
            outcome.rows_scored,
            outcome.rows_flagged,
            threshold,
            events,
        )
    )
    if outcome.rows_scored == 0:
        log.warning(
            "no row has a full window of %d rows without a gap longer than %.0f s: every score is empty "
            "(the model was trained on data sampled every %.0f s)",
            bundle.window_size,
            bundle.max_gap_seconds,
            bundle.sampling_interval_seconds,
        )
    log.info(
        "scored %d rows: %d flagged in %d event(s); report in %s", outcome.rows_in, outcome.rows_flagged, outcome.events, out_dir
    )
    return outcome
