"""The model bundle: the Keras model plus everything learned at fit time, as JSON (never pickle).

On disk, a bundle is a folder with ``model.keras`` and ``bundle.json``. For scoring, the model
is loaded as its NumPy twin (``pipeline.model.numpy_twin``), which gives the same reconstructions
without importing TensorFlow (about 0.7 GB less memory and seconds less start-up); a model with
layers the twin does not know is loaded with Keras instead.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline.config import PipelineConfig
from pipeline.detector.sampled import scoring_model
from pipeline.detector.threshold import Threshold
from pipeline.detector.window_error import Reconstructor
from pipeline.errors import InputError
from pipeline.features.scaler import Scaler
from pipeline.store.names import BUNDLE_FILE, MODEL_FILE

log = logging.getLogger(__name__)

BUNDLE_FORMAT = 1
# Scoring settings added after bundles were first written, with the value those bundles were
# calibrated under: an older bundle keeps scoring as it did, whatever the new defaults are.
SCORING_BEFORE_SETTING = {"combine": "mean", "offset_weight": 0.0}
# Bundles made before the event policy had hysteresis and durations: no release, no durations.
EVENTS_BEFORE_SETTING = {"release_ratio": 1.0, "release_rows": 1, "min_event_duration": None}


@dataclass
class ModelBundle:
    model: Reconstructor  # a keras.Model, or its NumPy twin when loaded for scoring
    scaler: Scaler
    threshold: Threshold
    config: PipelineConfig
    timestamp_column: str
    sampling_interval_seconds: float
    max_gap_seconds: float
    training: dict[str, Any] = field(default_factory=dict)  # provenance: rows, normal period, digest
    error_scale: list[float] | None = None  # per-sensor divisor of the squared error (None: 1.0)
    drift_rate: list[float] | None = None  # per-sensor trend in the training rows, scaled units per second
    drift_reference: str | None = None  # UTC time the drift allowance counts from (end of the training rows)
    # Each sensor's own sampling interval in seconds, measured at training (None in bundles
    # written before: every sensor is then taken to be at the table's rate, as those bundles were).
    sensor_intervals: dict[str, float] | None = None
    dayfirst: bool | None = None  # the date order of the training data's numeric dates (None: none)
    # Each sensor's training distribution for drift (``pipeline.detector.drift.fit_reference``);
    # None in bundles written before: drift is then not computed.
    sensor_reference: dict[str, dict] | None = None

    @property
    def sensors(self) -> list[str]:
        return self.scaler.sensors

    @property
    def window_size(self) -> int:
        return self.config.features.window_size

    @property
    def context_rows(self) -> int:
        """Earlier rows a row's score depends on: the window's, plus the smoothing's."""
        return self.window_size - 1 + self.config.scoring.smoothing_rows - 1

    def input_hints(self) -> dict[str, Any]:
        """What ingest takes from the model (``validate``'s ``dayfirst`` and ``intervals``)."""
        return {"dayfirst": self.dayfirst, "intervals": dict(self.sensor_intervals or {})}

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
            "error_scale": self.error_scale,
            "drift_rate": self.drift_rate,
            "drift_reference": self.drift_reference,
            "sensor_intervals": self.sensor_intervals,
            "dayfirst": self.dayfirst,
            "sensor_reference": self.sensor_reference,
            "config": self.config.model_dump(),
            "training": self.training,
        }

    def save(self, folder: Path) -> Path:
        folder.mkdir(parents=True, exist_ok=True)
        self.model.save(folder / MODEL_FILE)
        (folder / BUNDLE_FILE).write_text(json.dumps(self.describe(), indent=2))
        return folder


def load_model(path: Path, keras_model: bool = False) -> Reconstructor:
    """The NumPy twin of a saved model, or the Keras model itself when asked or when needed."""
    if not keras_model:
        from pipeline.model.numpy_twin import NumpyAutoencoder, UnsupportedModel

        try:
            return NumpyAutoencoder.from_keras_file(path)
        except UnsupportedModel as exc:
            log.info("scoring with Keras: %s", exc)
    import keras  # heavy: TensorFlow comes with it

    return keras.models.load_model(path, compile=False)


def load_bundle(folder: Path, keras_model: bool = False) -> ModelBundle:
    """Read a bundle folder written by ``ModelBundle.save``; ``keras_model`` forces a Keras model.

    Raises:
        InputError: the folder is not a bundle of a known format.
    """
    meta_path = folder / BUNDLE_FILE
    if not meta_path.is_file() or not (folder / MODEL_FILE).is_file():
        raise InputError(f"{folder}: not a model bundle (expected {MODEL_FILE} and {BUNDLE_FILE})")
    meta = json.loads(meta_path.read_text())
    if meta.get("format") != BUNDLE_FORMAT:
        raise InputError(f"{meta_path}: bundle format {meta.get('format')!r}, this version reads {BUNDLE_FORMAT}")
    config = PipelineConfig.model_validate(_with_settings_it_was_made_under(meta["config"]))
    return ModelBundle(
        model=scoring_model(load_model(folder / MODEL_FILE, keras_model), config.model),
        scaler=Scaler.from_dict(meta["scaler"]),
        threshold=Threshold.from_dict(meta["threshold"]),
        config=config,
        timestamp_column=meta["timestamp_column"],
        sampling_interval_seconds=meta["sampling_interval_seconds"],
        max_gap_seconds=meta["max_gap_seconds"],
        training=meta.get("training", {}),
        error_scale=meta.get("error_scale"),
        drift_rate=meta.get("drift_rate"),
        drift_reference=meta.get("drift_reference"),
        sensor_intervals=meta.get("sensor_intervals"),
        dayfirst=meta.get("dayfirst"),
        sensor_reference=meta.get("sensor_reference"),
    )


def _with_settings_it_was_made_under(config: dict[str, Any]) -> dict[str, Any]:
    scoring = config.get("scoring", {})
    events = config.get("events", {})
    return {**config, "scoring": {**SCORING_BEFORE_SETTING, **scoring}, "events": {**EVENTS_BEFORE_SETTING, **events}}
