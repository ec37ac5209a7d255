"""The model bundle: the Keras model plus everything learned at fit time, as JSON (never pickle).

On disk, a bundle is a folder with ``model.keras`` and ``bundle.json``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import keras

from pipeline.calibrate import Threshold
from pipeline.config import PipelineConfig
from pipeline.errors import InputError
from pipeline.features import Scaler

BUNDLE_FORMAT = 1
MODEL_FILE = "model.keras"
BUNDLE_FILE = "bundle.json"


@dataclass
class ModelBundle:
    model: keras.Model
    scaler: Scaler
    threshold: Threshold
    config: PipelineConfig
    timestamp_column: str
    sampling_interval_seconds: float
    max_gap_seconds: float
    training: dict[str, Any] = field(default_factory=dict)  # provenance: rows, normal period, digest

    @property
    def sensors(self) -> list[str]:
        return self.scaler.sensors

    @property
    def window_size(self) -> int:
        return self.config.features.window_size

    def describe(self) -> dict[str, Any]:
        """Everything but the Keras model, as JSON-ready data."""
        return {
            "format": BUNDLE_FORMAT,
            "sensors": self.sensors,
            "window_size": self.window_size,
            "timestamp_column": self.timestamp_column,
            "sampling_interval_seconds": self.sampling_interval_seconds,
            "max_gap_seconds": self.max_gap_seconds,
            "scaler": self.scaler.to_dict(),
            "threshold": self.threshold.to_dict(),
            "config": self.config.model_dump(),
            "training": self.training,
        }

    def save(self, folder: Path) -> Path:
        folder.mkdir(parents=True, exist_ok=True)
        self.model.save(folder / MODEL_FILE)
        (folder / BUNDLE_FILE).write_text(json.dumps(self.describe(), indent=2))
        return folder


def load_bundle(folder: Path) -> ModelBundle:
    """Read a bundle folder written by ``ModelBundle.save``.

    Raises:
        InputError: the folder is not a bundle of a known format.
    """
    meta_path = folder / BUNDLE_FILE
    if not meta_path.is_file() or not (folder / MODEL_FILE).is_file():
        raise InputError(f"{folder}: not a model bundle (expected {MODEL_FILE} and {BUNDLE_FILE})")
    meta = json.loads(meta_path.read_text())
    if meta.get("format") != BUNDLE_FORMAT:
        raise InputError(f"{meta_path}: bundle format {meta.get('format')!r}, this version reads {BUNDLE_FORMAT}")
    return ModelBundle(
        model=keras.models.load_model(folder / MODEL_FILE, compile=False),
        scaler=Scaler.from_dict(meta["scaler"]),
        threshold=Threshold.from_dict(meta["threshold"]),
        config=PipelineConfig.model_validate(meta["config"]),
        timestamp_column=meta["timestamp_column"],
        sampling_interval_seconds=meta["sampling_interval_seconds"],
        max_gap_seconds=meta["max_gap_seconds"],
        training=meta.get("training", {}),
    )
