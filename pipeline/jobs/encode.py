"""The ``encode`` and ``reconstruct`` jobs: files -> each row's latent code (``latent.parquet``)
or reconstructed sensor values (``reconstructed.parquet``) with the ``@champion`` version.

Both read the files as ``score`` does (one stream, or a fleet with ``--asset-column``, each asset
with its own champion), hold the validated table and its scaled values as ``score`` does, and
write the output a prediction batch at a time. Each is an MLflow run (stage ``encode`` /
``reconstruct``) with the input's digest and dataset, the output's sha256 (tag
``output_digest``), its row count and first rows as a dataset, and for ``encode`` the 2-D view
of the codes (``latent_pca.png``: their first two principal components, coloured by score).
"""

from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.config import IngestConfig
from pipeline.data.files import discover_files, file_digest
from pipeline.data.fleet import fleet_waves
from pipeline.data.loading import load_input
from pipeline.detector.latent import code_batches, reconstruction_batches
from pipeline.detector.scoring import score_rows
from pipeline.errors import InputError
from pipeline.jobs.common import describe_inputs, load_registered, log_dataset, warn_set_aside
from pipeline.jobs.fleet_common import champion_input, fleet_ingest_tag
from pipeline.reports import plots
from pipeline.reports.latent import latent_batches, latent_schema, principal_plane, reconstructed_batches, reconstructed_schema
from pipeline.serving import scoring_ingest
from pipeline.store import atomic
from pipeline.store.names import LATENT_FILE, LATENT_PLOT, PLOTS_FOLDER, RECONSTRUCTED_FILE
from pipeline.tracking import DATASET_SAMPLE_ROWS, Tracker, inputs_digest

log = logging.getLogger(__name__)

ENCODE, RECONSTRUCT = "encode", "reconstruct"
WAVE_ASSETS = 8  # fleets: assets read and encoded at a time


@dataclass
class UsesOutcome:
    run_id: str
    path: Path  # latent.parquet or reconstructed.parquet
    rows_in: int
    rows_written: int
    digest: str  # sha256 of the written file
    model_version: str  # one stream's; for a fleet, "asset=version, ..."
    warnings: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)  # fleets: assets not written (exit 2)


def encode_job(
    inputs: list[str | Path], out_dir: Path, model_name: str, tracking_uri: str | None, ingest: IngestConfig | None = None
) -> UsesOutcome:
    """Write ``latent.parquet``: every row's latent code (the window ending at it) and score."""
    return _job(ENCODE, inputs, out_dir, model_name, tracking_uri, ingest)


def reconstruct_job(
    inputs: list[str | Path],
    out_dir: Path,
    model_name: str,
    tracking_uri: str | None,
    ingest: IngestConfig | None = None,
    estimate: str = "last",
) -> UsesOutcome:
    """Write ``reconstructed.parquet``: every row's reconstructed sensor values, in original units
    (``estimate``: ``last`` row of the window ending at the row, or ``mean`` over the windows holding it)."""
    return _job(RECONSTRUCT, inputs, out_dir, model_name, tracking_uri, ingest, estimate)


def _job(
    kind, inputs, out_dir: Path, model_name: str, tracking_uri: str | None, ingest: IngestConfig | None, estimate: str = "last"
) -> UsesOutcome:
    tracker = Tracker(tracking_uri, model_name)
    files = discover_files(inputs)
    paths = [path for _, path in files]
    fleet = ingest is not None and ingest.fleet
    tags = {"model_name": model_name, **({"fleet": model_name, **fleet_ingest_tag(ingest)} if fleet else {})}
    if kind == RECONSTRUCT:
        tags["estimate"] = estimate
    with tracker.run(kind, run_name=f"{kind} {model_name} {describe_inputs(inputs)}", tags=tags) as run_id:
        tracker.record_input_paths(paths)
        out_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix=f"{kind}-") as tmp:
            if fleet:
                outcome = _fleet(kind, tracker, model_name, files, ingest, out_dir, run_id, Path(tmp), estimate)
            else:
                outcome = _stream(kind, tracker, model_name, files, out_dir, run_id, Path(tmp), estimate)
        _log_output(tracker, outcome, kind)
    log.info("%s: %d of %d rows written to %s", kind, outcome.rows_written, outcome.rows_in, outcome.path)
    return outcome


def _stream(kind, tracker: Tracker, model_name: str, files, out_dir: Path, run_id: str, tmp: Path, estimate: str) -> UsesOutcome:
    bundle, version = load_registered(tracker, model_name)
    loaded = load_input(
        files, scoring_ingest(bundle), sensors=bundle.sensors, timestamp_column=bundle.timestamp_column, **bundle.input_hints()
    )
    paths = [path for _, path in files]
    tracker.set_tags({"input_digest": inputs_digest(loaded.digests), "model_version": version, "source": describe_inputs(paths)})
    tracker.log_params({"model_version": version, "inputs": ", ".join(name for name, _ in files)})
    log_dataset(tracker, loaded, paths, f"{kind} {describe_inputs(paths)}", "input")
    warnings = warn_set_aside(tracker, loaded.quality)
    table = loaded.result.table
    if kind == ENCODE:
        sample: list = []
        rows = score_rows(bundle, table, progress=True)
        batches = latent_batches(table, code_batches(bundle, table), rows.score, sample)
        path = atomic.write_parquet_batches(batches, latent_schema(bundle.config.model.latent_dim), out_dir / LATENT_FILE)
        _log_plot(tracker, sample, bundle.threshold.value, out_dir, tmp)
    else:
        batches = reconstructed_batches(table, bundle.sensors, reconstruction_batches(bundle, table, estimate=estimate))
        path = atomic.write_parquet_batches(batches, reconstructed_schema(bundle.sensors), out_dir / RECONSTRUCTED_FILE)
    return UsesOutcome(
        run_id, path, loaded.result.counts["rows_in"], pq.ParquetFile(path).metadata.num_rows, "", version, warnings
    )


def _fleet(kind, tracker: Tracker, model_name: str, files, ingest: IngestConfig, out_dir: Path, run_id: str, tmp: Path, estimate):
    """Asset by asset, each with its own champion; every asset's code must have the same size."""
    writer, schema, sample, versions, problems, rows_in = None, None, [], {}, [], 0
    target = out_dir / (LATENT_FILE if kind == ENCODE else RECONSTRUCTED_FILE)
    threshold = None
    with atomic.atomic_file(target) as handle:
        for wave in fleet_waves(files, ingest, WAVE_ASSETS):
            problems += wave.problems()
            rows_in += len(wave.rejected)
            for asset in wave.assets:
                rows_in += sum(len(p.frame) for p in wave.pieces[asset])
                try:
                    bundle, _, version, loaded = champion_input(tracker, model_name, asset, wave.pieces[asset])
                except InputError as exc:
                    problems.append(f"asset {asset}: not written: {str(exc).removeprefix(f'asset {asset}: ')}")
                    continue
                table = loaded.result.table
                if kind == ENCODE:
                    own = latent_schema(bundle.config.model.latent_dim, asset=True)
                    rows = score_rows(bundle, table)
                    batches = latent_batches(table, code_batches(bundle, table), rows.score, sample, asset)
                    threshold = bundle.threshold.value if threshold is None else threshold
                else:
                    own = reconstructed_schema(bundle.sensors, asset=True)
                    values = reconstruction_batches(bundle, table, estimate=estimate)
                    batches = reconstructed_batches(table, bundle.sensors, values, asset)
                if schema is not None and own != schema:
                    problems.append(
                        f"asset {asset}: not written: its columns differ from the first asset's ({_differ(own, schema)})"
                    )
                    continue
                if writer is None:
                    schema = own
                    writer = pq.ParquetWriter(handle, schema)
                for batch in batches:
                    writer.write_batch(batch)
                versions[asset] = version
        if writer is None:
            writer = pq.ParquetWriter(handle, latent_schema(0, True) if kind == ENCODE else pa.schema([("asset", pa.string())]))
        writer.close()
    if kind == ENCODE and sample:
        _log_plot(tracker, sample, threshold, out_dir, tmp)
    version = ", ".join(f"{a}={v}" for a, v in versions.items())
    tracker.set_tags({"model_version": version[:5000]})
    return UsesOutcome(run_id, target, rows_in, pq.ParquetFile(target).metadata.num_rows, "", version, [], problems)


def _differ(own: pa.Schema, first: pa.Schema) -> str:
    mine, theirs = own.names[3:], first.names[3:]
    return f"{', '.join(mine[:4])} ... against {', '.join(theirs[:4])} ...; encode such assets in separate calls"


def _log_plot(tracker: Tracker, sample: list, threshold: float | None, out_dir: Path, tmp: Path) -> None:
    codes = np.concatenate([c for c, _ in sample]) if sample else np.zeros((0, 2))
    scores = np.concatenate([s for _, s in sample]) if sample else np.zeros(0)
    if len(codes) < 2:
        return
    points, share = principal_plane(codes)
    path = plots.latent_plot(points, scores, share, threshold if threshold is not None else np.inf, out_dir / LATENT_PLOT)
    tracker.log_artifact(path, PLOTS_FOLDER)


def _log_output(tracker: Tracker, outcome: UsesOutcome, kind: str) -> None:
    """The written file on the run: its sha256, row count, and its first rows as a dataset."""
    outcome.digest = file_digest(outcome.path)
    tracker.set_tags({"output_digest": outcome.digest, "output_file": outcome.path.name})
    tracker.log_metrics({"rows_in": outcome.rows_in, "rows_written": outcome.rows_written})
    parquet = pq.ParquetFile(outcome.path)
    head = next(parquet.iter_batches(batch_size=DATASET_SAMPLE_ROWS), None)
    sample = head.to_pandas() if head is not None else pd.DataFrame(columns=parquet.schema_arrow.names)
    tracker.log_dataset(sample, f"{outcome.path.name}", outcome.digest, [outcome.path], kind, n_rows=outcome.rows_written)
