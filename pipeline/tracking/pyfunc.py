"""The registered model itself: ``AnomalyModel``, an MLflow pyfunc that loads the bundle artifact
and predicts with ``pipeline.serving`` (MLflow-free)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import mlflow.pyfunc
import pandas as pd

from pipeline import serving
from pipeline.detector.bundle import load_bundle
from pipeline.store.names import BUNDLE_FOLDER


class AnomalyModel(mlflow.pyfunc.PythonModel):
    """The registered pyfunc: loads the bundle artifact, predicts with ``serving.predict_frame``."""

    def load_context(self, context: Any) -> None:
        self.bundle = load_bundle(Path(context.artifacts[BUNDLE_FOLDER]))

    def predict(self, context: Any, model_input: pd.DataFrame, params: dict[str, Any] | None = None) -> pd.DataFrame:
        """Per-row scores of ``model_input``; ``params={"source": NAME}`` names the stream,
        ``params={"output": "latent"}`` or ``{"output": "reconstruction"}`` returns the rows of
        ``encode``'s ``latent.parquet`` or ``reconstruct``'s ``reconstructed.parquet`` instead
        (``"estimate": "mean"`` as ``reconstruct --estimate mean``)."""
        params = params or {}
        source = str(params.get("source") or serving.DEFAULT_SOURCE)
        output, estimate = str(params.get("output") or "scores"), str(params.get("estimate") or "last")
        return serving.predict_frame(self.bundle, pd.DataFrame(model_input), source, output, estimate)
