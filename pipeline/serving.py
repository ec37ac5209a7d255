"""Prediction on a frame, MLflow-free: what the registered model serves.

``predict_frame`` runs the same ingest, scoring and event code as ``anomaly-pipeline score`` on
one frame (one stream), so the pyfunc (``pipeline.tracking.AnomalyModel``) returns the rows of
``scores.csv`` for it: ``source``, ``timestamp``, ``score``, ``threshold``, ``anomaly``,
``event_id``, ``contrib_<sensor>`` and ``status``. With ``output="latent"`` it returns the rows of
``latent.parquet`` (``anomaly-pipeline encode``), with ``output="reconstruction"`` those of
``reconstructed.parquet`` (``anomaly-pipeline reconstruct``).
"""

from __future__ import annotations

from importlib import metadata

import pandas as pd
import pyarrow as pa

from pipeline.config import IngestConfig
from pipeline.data.files import RawSource
from pipeline.data.ingest import IngestResult, validate
from pipeline.detector.bundle import ModelBundle
from pipeline.detector.latent import ESTIMATES, code_batches, reconstruction_batches
from pipeline.detector.scoring import flag_events, score_rows
from pipeline.errors import InputError
from pipeline.reports.latent import latent_batches, latent_schema, reconstructed_batches, reconstructed_schema
from pipeline.reports.tables import scores_table
from pipeline.utc import iso_utc

DEFAULT_SOURCE = "input"
OUTPUTS = ("scores", "latent", "reconstruction")  # what predict_frame returns, by its ``output``
EXAMPLE_EXTRA_ROWS = 8  # beyond one window, so the input example yields scores
# What scoring imports (TensorFlow is not needed: the NumPy twin runs the model).
REQUIREMENTS = [
    "mlflow",
    "numpy",
    "pandas",
    "pyarrow",
    "h5py",
    "pydantic",
    "pyyaml",
    "matplotlib",
    "tqdm",
    "scikit-learn",
    "scipy",
]


def scoring_ingest(bundle: ModelBundle, label_column: str | None = None) -> IngestConfig:
    """The model's reading settings for data to score: no label column (unless one is asked
    for, to judge against), even when the model was trained on labelled rows."""
    return bundle.config.ingest.model_copy(update={"label_column": label_column})


def predict_frame(
    bundle: ModelBundle, frame: pd.DataFrame, source: str = DEFAULT_SOURCE, output: str = "scores", estimate: str = "last"
) -> pd.DataFrame:
    """Score one raw sensor frame as ``anomaly-pipeline score`` scores one file (or encode or
    reconstruct it as ``encode`` and ``reconstruct`` do).

    Args:
        bundle: a loaded model bundle.
        frame: rows of one stream, with the bundle's timestamp column and sensor columns (other
            columns are ignored), shape (n_rows, n_columns).
        source: the name reported in the ``source`` column.
        output: ``scores`` (default), ``latent`` or ``reconstruction`` (``OUTPUTS``).
        estimate: for ``reconstruction``, ``last`` (default) or ``mean`` (``reconstruct --estimate``).

    Returns:
        ``scores``: one row per input row, in input order, with the ``scores.csv`` columns;
        ``status`` is empty text for rows scored normally. ``latent``: the ``latent.parquet``
        rows (``source``, ``timestamp``, ``latent_0..``, ``score``) of every row with a full
        window, in time order. ``reconstruction``: the ``reconstructed.parquet`` rows
        (``source``, ``timestamp``, one column per sensor in original units).

    Raises:
        InputError: a column is missing, no row is usable, or ``output`` is not one of ``OUTPUTS``.
    """
    if output not in OUTPUTS:
        raise InputError(f"output {output!r}: expected one of {', '.join(OUTPUTS)}")
    if estimate not in ESTIMATES:
        raise InputError(f"estimate {estimate!r}: expected one of {', '.join(ESTIMATES)}")
    raw = RawSource(name=source, frame=frame.reset_index(drop=True), digest="")
    result = validate(
        [raw], scoring_ingest(bundle), sensors=bundle.sensors, timestamp_column=bundle.timestamp_column, **bundle.input_hints()
    )
    table = result.table
    if output == "reconstruction":
        values = reconstruction_batches(bundle, table, estimate=estimate)
        batches = list(reconstructed_batches(table, bundle.sensors, values))
        return pa.Table.from_batches(batches, reconstructed_schema(bundle.sensors)).to_pandas()
    rows = score_rows(bundle, table)
    if output == "latent":
        batches = list(latent_batches(table, code_batches(bundle, table), rows.score))
        return pa.Table.from_batches(batches, latent_schema(bundle.config.model.latent_dim)).to_pandas()
    out = scores_table(result, rows, flag_events(bundle, rows), bundle.threshold.value, [source]).to_pandas()
    out["status"] = out["status"].fillna("").astype(object)
    return out


def input_example(result: IngestResult, bundle: ModelBundle) -> pd.DataFrame:
    """A few raw-looking rows of a validated table (ISO text timestamps), one window and more."""
    head = result.table.head(bundle.window_size + EXAMPLE_EXTRA_ROWS)
    frame = pd.DataFrame({bundle.timestamp_column: iso_utc(head["timestamp"]).astype(object).to_numpy()})
    for sensor in bundle.sensors:
        frame[sensor] = head[sensor].to_numpy(dtype="float64")
    return frame


def requirements() -> list[str]:
    """Pinned versions of what the served model imports, as installed here."""
    return [f"{name}=={metadata.version(name)}" for name in REQUIREMENTS]
