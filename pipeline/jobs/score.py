"""The ``score`` job: files -> scores with the ``@champion`` version -> reports in ``--out``."""

from __future__ import annotations

import json
import logging
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from pipeline.config import SCORE_CHUNK_ROWS, IngestConfig, to_yaml
from pipeline.data.chunks import Chunk, NotChunkable, read_ahead, validated_chunks
from pipeline.data.files import discover_files
from pipeline.data.loading import read_validated
from pipeline.data.quality import QualitySummary, quality_figures
from pipeline.detector.bundle import ModelBundle
from pipeline.detector.reviews import annotate
from pipeline.errors import InputError
from pipeline.jobs import drift_watch
from pipeline.jobs.common import describe_inputs, load_registered, log_event_plots, warn_set_aside
from pipeline.jobs.review import latest_reviews
from pipeline.jobs.score_stream import ScoreStream, StreamTotals
from pipeline.reports import describe, plots
from pipeline.reports.tables import scores_schema
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
    chunks: int = 1  # validated pieces the rows were read in


def score_job(
    inputs: list[str | Path],
    out_dir: Path,
    model_name: str,
    tracking_uri: str | None,
    output_format: str = "csv",
    chunk_rows: int = SCORE_CHUNK_ROWS,
) -> ScoreOutcome:
    """Score files with the version of ``model_name`` holding ``@champion`` and write the reports.

    ``output_format`` ("csv" or "parquet") is that of the per-row scores table (``scores.csv``
    or ``scores.parquet``, the same columns and rows); the other reports are always CSV/JSON.
    Files are read ``chunk_rows`` rows at a time where that gives the result of one pass
    (``pipeline.data.chunks``), else all at once (0: always all at once).
    """
    if chunk_rows < 0:
        raise InputError(f"--chunk-rows must be 0 (all rows at once) or more, got {chunk_rows}")
    tracker = Tracker(tracking_uri, model_name)
    run_name = f"score {model_name} {describe_inputs(inputs)}"
    with tracker.run("score", run_name=run_name, tags={"model_name": model_name}) as run_id:
        bundle, version = load_registered(tracker, model_name)
        files = discover_files(inputs)
        return _score_into(tracker, model_name, bundle, version, files, out_dir, run_id, output_format, chunk_rows)


def _score_into(
    tracker: Tracker,
    model_name: str,
    bundle: ModelBundle,
    version: str,
    files: list[tuple[str, Path]],
    out_dir: Path,
    run_id: str,
    output_format: str = "csv",
    chunk_rows: int = SCORE_CHUNK_ROWS,
) -> ScoreOutcome:
    paths = [path for _, path in files]
    tracker.log_params({"model_version": version, "inputs": ", ".join(name for name, _ in files), **bundle.config.flat()})
    tracker.log_text(to_yaml(bundle.config), CONFIG_ARTIFACT)
    out_dir.mkdir(parents=True, exist_ok=True)
    ingest, order = scoring_ingest(bundle), [name for name, _ in files]
    try:
        if chunk_rows:
            hints = bundle.input_hints()
            validated = validated_chunks(files, ingest, bundle.sensors, bundle.timestamp_column, chunk_rows, **hints)
            chunks = read_ahead(validated)  # the next chunk is read while this one is scored and written
        else:
            chunks = _all_at_once(files, ingest, bundle)
        totals = _write_scores(bundle, ingest, chunks, order, out_dir, output_format)
    except NotChunkable as why:
        log.info("scoring all rows in one piece: %s", why)
        totals = _write_scores(bundle, ingest, _all_at_once(files, ingest, bundle), order, out_dir, output_format)
    quality = totals.quality.report()
    counts = quality["rows"]
    log.info(
        "ingested %d rows from %d file(s) in %d chunk(s): %d clean, %d repaired, %d set aside",
        counts["rows_in"], len(files), totals.chunks, counts["rows_clean"], counts["rows_repaired"], counts["rows_quarantined"],
    )  # fmt: skip
    quality["drift"] = drift_watch.counted_drift(bundle, totals.drift_counts, bundle.config.drift)
    digest = inputs_digest(totals.digests)
    tracker.set_tags({"input_digest": digest, "model_version": version, "source": describe_inputs(paths)})
    tracker.record_input_paths(paths)  # promote re-reads the latest scored data from there
    name = f"score {describe_inputs(paths)}"
    tracker.log_dataset(totals.sample, name, digest, paths, "scoring", n_rows=totals.rows_clean)
    warnings = warn_set_aside(tracker, quality)  # scored all the same: every row is reported
    events = totals.events_frame(bundle, version, run_id)
    reviews = latest_reviews(tracker, model_name, asset="")
    if len(reviews) and len(events):
        events = annotate(events, reviews, bundle.config.review)  # the verdicts, and repeats of reviewed false alarms

    threshold = bundle.threshold.value
    atomic.write_csv(events, out_dir / ANOMALIES_FILE)
    atomic.write_text(json.dumps(quality, indent=2), out_dir / QUALITY_FILE)
    timestamps, sources, scores = totals.plot_rows()
    plot = plots.score_plot(timestamps, sources, scores, threshold, events, out_dir / SCORES_PLOT)

    outcome = ScoreOutcome(
        run_id=run_id,
        out_dir=out_dir,
        rows_in=counts["rows_in"],
        rows_scored=totals.rows_scored,
        rows_flagged=totals.rows_flagged,
        events=len(events),
        model_version=version,
        warnings=warnings,
        chunks=totals.chunks,
    )
    tracker.log_metrics(
        {
            "rows_in": outcome.rows_in,
            "rows_scored": outcome.rows_scored,
            "rows_flagged": outcome.rows_flagged,
            "events": outcome.events,
            "threshold": threshold,
            "chunks": totals.chunks,
            **quality_figures(quality),
        }
    )
    drift_watch.log_drift(tracker, quality["drift"])
    tracker.log_dict(quality, QUALITY_ARTIFACT)
    tracker.log_artifact(out_dir / ANOMALIES_FILE)
    tracker.log_artifact(plot)
    with tempfile.TemporaryDirectory(prefix="score-plots-") as tmp:
        log_event_plots(tracker, bundle, totals.details, Path(tmp))
    tracker.set_description(
        describe.scoring_description(
            model_name,
            version,
            [name for name, _ in files],
            digest,
            quality,
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


def _all_at_once(files: list[tuple[str, Path]], ingest: IngestConfig, bundle: ModelBundle) -> Iterator[Chunk]:
    yield Chunk(*read_validated(files, ingest, bundle.sensors, bundle.timestamp_column, **bundle.input_hints()))


def _write_scores(
    bundle: ModelBundle,
    ingest: IngestConfig,
    chunks: Iterator[Chunk],
    source_order: list[str],
    out_dir: Path,
    output_format: str,
) -> StreamTotals:
    """Score the chunks into ``scores.csv`` (or ``.parquet``) and ``validated.parquet``, as they come."""
    quality = QualitySummary(ingest.flatline_rows, ingest.max_set_aside_share)
    with atomic.atomic_file(out_dir / VALIDATED_FILE) as validated:
        stream = ScoreStream(bundle, chunks, source_order, quality, validated)
        scores = out_dir / scores_file(output_format)
        atomic.write_table_batches(stream.batches(), scores_schema(bundle.sensors), scores, output_format)
    return stream.totals
