"""The registered model as an MLflow pyfunc: a raw sensor frame in, per-row scores out.

``AnomalyModel.predict`` runs the same ingest, scoring and event code as ``anomaly-pipeline
score`` on one frame (one stream), so ``mlflow.pyfunc.load_model("models:/NAME@champion")
.predict(frame)`` returns the rows of ``scores.csv`` for it: ``source``, ``timestamp``,
``score``, ``threshold``, ``anomaly``, ``event_id``, ``contrib_<sensor>`` and ``status``.

The model's state is the bundle folder (``model.keras`` + ``bundle.json``), shipped as the
pyfunc's ``bundle`` artifact; the package code travels with it (``code_paths``). The model is
logged from code (``pipeline/pyfunc_model.py``), so nothing is pickled.
"""

from __future__ import annotations

from importlib import metadata
from pathlib import Path
from typing import Any

import mlflow.pyfunc
import pandas as pd

from pipeline.bundle import ModelBundle, load_bundle
from pipeline.ingest import IngestResult, RawSource, iso_utc, validate
from pipeline.report import scores_table
from pipeline.tracking import PYFUNC_BUNDLE_ARTIFACT

DEFAULT_SOURCE = "input"
EXAMPLE_EXTRA_ROWS = 8  # beyond one window, so the input example yields scores
# What scoring imports (TensorFlow is not needed: the NumPy twin runs the model).
REQUIREMENTS = ["mlflow", "numpy", "pandas", "pyarrow", "h5py", "pydantic", "pyyaml", "matplotlib", "tqdm", "scikit-learn", "scipy"]


def predict_frame(bundle: ModelBundle, frame: pd.DataFrame, source: str = DEFAULT_SOURCE) -> pd.DataFrame:
    """Score one raw sensor frame as ``anomaly-pipeline score`` scores one file.

    Args:
        bundle: a loaded model bundle.
        frame: rows of one stream, with the bundle's timestamp column and sensor columns (other
            columns are ignored), shape (n_rows, n_columns).
        source: the name reported in the ``source`` column.

    Returns:
        One row per input row, in input order, with the ``scores.csv`` columns; ``status`` is
        empty text for rows scored normally.

    Raises:
        InputError: a column is missing or no row is usable.
    """
    from pipeline.runner import (  # runner imports MLflow
        LoadedInput,
        reading_config,
        score_events,
    )

    config = reading_config(bundle.config)
    raw = RawSource(name=source, frame=frame.reset_index(drop=True), digest="")
    result = validate([raw], config.ingest, sensors=bundle.sensors, timestamp_column=bundle.timestamp_column)
    rows, event, _ = score_events(bundle, LoadedInput(result, {}, {}, [source]), "", "")
    out = scores_table(result, rows, event, bundle.threshold.value, [source]).to_pandas()
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


class AnomalyModel(mlflow.pyfunc.PythonModel):
    """The pyfunc wrapper: loads the bundle artifact, predicts with ``predict_frame``."""

    def load_context(self, context: Any) -> None:
        self.bundle = load_bundle(Path(context.artifacts[PYFUNC_BUNDLE_ARTIFACT]))

    def predict(self, context: Any, model_input: pd.DataFrame, params: dict[str, Any] | None = None) -> pd.DataFrame:
        """Per-row scores of ``model_input``; ``params={"source": NAME}`` names the stream."""
        source = str((params or {}).get("source") or DEFAULT_SOURCE)
        return predict_frame(self.bundle, pd.DataFrame(model_input), source)
