"""Every setting of the pipeline and its default, in one place.

A YAML file passed with ``--config`` is validated against these models on load; command-line
flags override the same settings afterwards (see ``with_overrides``).
"""

from __future__ import annotations

import re
from datetime import date, datetime
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from pipeline.errors import InputError

DEFAULT_MODEL_NAME = "anomaly-autoencoder"
SCORE_CHUNK_ROWS = 200_000  # score reads long files this many rows at a time (flat memory; 0: all at once)


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


def _positive_duration(value: str | None) -> str | None:
    """A pandas duration such as '10min', '7D' or '30s', kept as its text; ``None`` passes."""
    if value is not None:
        import pandas as pd  # the CLI parses arguments without pandas

        try:
            ok = pd.Timedelta(value) > pd.Timedelta(0)
        except ValueError:
            ok = False
        if not ok:
            raise ValueError("must be a positive duration, e.g. '10min', '30s' or '7D'")
    return value


class IngestConfig(_Section):
    """How raw sensor files are read and repaired."""

    timestamp_column: str | None = None  # default: the first column that parses as datetimes
    sensors: list[str] | None = None  # default: every numeric column but label and excluded ones
    label_column: str | None = None  # 0 = normal, anything else = anomalous
    exclude_columns: list[str] = Field(default_factory=list)
    delimiter: str | None = None  # default: sniffed from the header line among , ; tab |
    decimal: Literal[".", ","] = "."
    source_timezone: str = "UTC"  # zone of naive timestamps; aware ones are converted to UTC
    max_fill_rows: int = Field(default=5, ge=0)  # NaN runs up to this long are forward-filled
    flatline_rows: int = Field(default=60, ge=2)  # identical values this long are a quality flag
    # Fleets: each asset is its own stream with its own model (see README "Fleets").
    asset_column: str | None = None  # the column naming each row's asset
    asset_folders: bool = False  # the first folder level under an input folder names the asset

    @model_validator(mode="after")
    def _one_asset_source(self) -> IngestConfig:
        if self.asset_column and self.asset_folders:
            raise ValueError("asset_column and asset_folders name the asset two ways: set one")
        return self

    @property
    def fleet(self) -> bool:
        return bool(self.asset_column or self.asset_folders)

    # Timestamps (issue 16): one format per column, decided from the whole column.
    timestamp_format: str | None = None  # a strftime pattern, used exactly (default: decided from the values)
    dayfirst: bool | None = None  # numeric dates such as 02.01.2026: true = 2 January, false = February 1
    # Sensors at different rates: a slower sensor's reading holds until its next one (its own
    # interval, measured at training); or, with ``resample`` (a pandas offset such as "1min"),
    # every sensor is put on one grid with an aggregate per bin ("mean" or "last", or a mapping
    # sensor -> aggregate for the sensors that differ from "mean").
    resample: str | None = None
    resample_aggregate: Literal["mean", "last"] | dict[str, Literal["mean", "last"]] = "mean"
    # Tall (historian) exports: one row per reading, pivoted to one row per timestamp.
    layout: Literal["wide", "tall"] = "wide"
    tag_column: str | None = None  # tall: the column naming the sensor of a reading
    value_column: str | None = None  # tall: the column holding its value
    quality_column: str | None = None  # tall: optional quality flag of a reading
    good_quality: list[str] = Field(default_factory=lambda: ["good", "192"])  # quality values that mean good (any case)
    # A file with more than this share of its rows set aside is named in one line (train stops).
    max_set_aside_share: float = Field(default=0.2, ge=0, le=1)

    @field_validator("resample")
    @classmethod
    def _offset(cls, value: str | None) -> str | None:
        if value is not None:
            import pandas as pd  # only when a grid is asked for: the CLI parses arguments without pandas

            try:
                offset = pd.tseries.frequencies.to_offset(value)
                pd.Timedelta(offset)
            except (ValueError, TypeError):
                raise ValueError("must be a fixed time step such as '1min', '10s' or '1h'") from None
        return value

    @model_validator(mode="after")
    def _tall_columns(self) -> IngestConfig:
        if self.layout == "tall" and (not self.tag_column or not self.value_column):
            raise ValueError("layout 'tall' needs ingest.tag_column and ingest.value_column")
        return self


class TrainingConfig(_Section):
    """Which rows are normal and how they are split."""

    normal_until: str | None = None  # rows strictly before this timestamp are normal

    @field_validator("normal_until", mode="before")
    @classmethod
    def _timestamp_text(cls, value: Any) -> Any:
        # YAML reads an unquoted 2026-10-01 12:00:00 as a datetime; keep it as the text it was.
        if isinstance(value, (date, datetime)):
            return value.isoformat(sep=" ") if isinstance(value, datetime) else value.isoformat()
        if isinstance(value, str) and not re.search(r"\d{4}-\d{2}-\d{2}|\d{1,2}[/.]\d{1,2}[/.]\d{2,4}", value):
            raise ValueError("must be a timestamp with a date, e.g. '2026-10-10 00:00:00'")
        return value

    holdout_fraction: float = Field(default=0.2, gt=0, lt=1)  # last part of normal rows, for calibration
    validation_fraction: float = Field(default=0.1, gt=0, lt=1)  # last part of the rest, for early stopping
    # Fleets: a CSV asset,start,end of each asset's normal periods (start <= timestamp < end).
    normal_periods: str | None = None
    # Fleets: for an asset without a period, its first stretch this long is normal (e.g. '7D').
    normal_first: str | None = None

    @field_validator("normal_first")
    @classmethod
    def _duration(cls, value: str | None) -> str | None:
        return _positive_duration(value)

    # Train even when more than ingest.max_set_aside_share of a file's rows were set aside (--allow-set-aside).
    allow_set_aside: bool = False
    # At most this many training windows, taken evenly over time (every k-th start row), so a
    # year of 1 s data trains in bounded time; None = every window (recorded in the run either way).
    max_windows: int | None = Field(default=None, ge=1)


class FeaturesConfig(_Section):
    """Sliding windows over the scaled sensors."""

    window_size: int = Field(default=32, ge=2)
    stride: int = Field(default=1, ge=1)  # between training windows; scoring always uses 1 (one score per row)
    max_gap_seconds: float | None = Field(default=None, gt=0)  # default: one window of sampling intervals
    # A sensor whose spread over the training rows exceeds this many times its mean spread within
    # an eighth of them wanders (a temperature warming all through training): each window of it is
    # centred on its own mean, so it is judged by its shape, not by a level it never held (0 = off).
    wander_ratio: float = Field(default=1.5, ge=0)
    # The window as a duration ('10min'): at training it becomes window_size rows of the sampling
    # interval measured on the normal rows (at least 2), and the bundle records both.
    window_duration: str | None = None

    @field_validator("window_duration")
    @classmethod
    def _duration(cls, value: str | None) -> str | None:
        return _positive_duration(value)


class ModelConfig(_Section):
    """The Keras autoencoder."""

    # conv: 1-D convolutional; dense; lstm: an LSTM encoder-decoder; vae: variational (conv body)
    architecture: Literal["conv", "dense", "lstm", "vae"] = "conv"
    filters: list[int] = Field(default_factory=lambda: [32, 16], min_length=1)  # conv (and vae) encoder layers
    kernel_size: int = Field(default=5, ge=1)
    units: list[int] = Field(default_factory=lambda: [128, 64], min_length=1)  # dense encoder layers
    lstm_units: int = Field(default=64, ge=1)  # lstm: units of the encoder and of the decoder LSTM
    latent_dim: int = Field(default=16, ge=1)
    kl_weight: float = Field(default=0.05, ge=0)  # vae: weight of the KL term (per latent unit) beside the squared error
    vae_score: Literal["mean", "nll"] = "mean"  # vae: reconstruction from the latent mean, or NLL under the decoder
    vae_samples: int = Field(default=16, ge=1)  # vae_score nll: latent draws per window (fixed, so scores repeat)
    epochs: int = Field(default=30, ge=1)
    batch_size: int = Field(default=128, ge=1)
    # Few training windows: the batch shrinks so that an epoch takes this many steps (1 = off; README).
    min_steps_per_epoch: int = Field(default=1, ge=1)
    learning_rate: float = Field(default=1e-3, gt=0)
    lr_schedule: Literal["constant", "cosine", "plateau"] = "constant"  # cosine decay over the epochs, or halve on plateaus
    clipnorm: float | None = Field(default=None, gt=0)  # gradient clipping: largest gradient norm (null = none)
    patience: int = Field(default=5, ge=1)  # early stopping on validation loss
    min_train_steps: int = Field(default=0, ge=0)  # early stopping waits this many gradient steps (epochs rise to match; 0 = off)
    average_epochs: int = Field(default=1, ge=1)  # keep the mean weights of this many epochs ending at the best (1 = off)
    input_noise: float = Field(default=0.0, ge=0)  # denoising: std of Gaussian noise on training inputs (scaled units)
    seed: int = 42

    @model_validator(mode="after")
    def _positive_widths(self) -> ModelConfig:
        for name in ("filters", "units"):
            if any(width < 1 for width in getattr(self, name)):
                raise ValueError(f"{name} must all be >= 1, got {getattr(self, name)}")
        return self


class ThresholdConfig(_Section):
    """How the alarm threshold is calibrated on held-out normal errors."""

    method: Literal["quantile", "mean_std", "pot"] = "pot"
    quantile: float = Field(default=0.995, gt=0, lt=1)
    k: float = Field(default=4.0, gt=0)  # for mean_std: mean + k * std
    risk: float = Field(default=1e-3, gt=0, lt=1)  # for pot: chance that a normal window's error exceeds the threshold
    pot_level: float = Field(default=0.9, gt=0, lt=1)  # for pot: quantile above which the tail is fitted
    margin: float = Field(default=3.0, gt=0)  # the threshold is the method's value times this


class EventsConfig(_Section):
    """How flagged rows become events (an alarm state machine; README "How it decides")."""

    min_event_rows: int = Field(default=3, ge=1)  # shorter runs above threshold are not flagged
    merge_gap_rows: int = Field(default=0, ge=0)  # events this close are merged into one
    # Hysteresis: once entered, an event goes on while the score stays above release_ratio x
    # threshold, and ends only after release_rows rows in a row at or below it (a shorter dip
    # joins the event). 1.0 and 1: it ends with the last row above threshold.
    release_ratio: float = Field(default=0.5, gt=0, le=1)
    release_rows: int = Field(default=1, ge=1)
    # The same settings in time ('60s', '5min'), converted with the sampling interval measured at
    # training (``resolve_events``); each takes the larger of its row count and its duration in rows.
    min_event_duration: str | None = "60s"  # an event's entry run lasts at least this long (an on-delay)
    merge_gap_duration: str | None = None
    release_duration: str | None = None

    @field_validator("min_event_duration", "merge_gap_duration", "release_duration")
    @classmethod
    def _duration(cls, value: str | None) -> str | None:
        return _positive_duration(value)


class ScoringConfig(_Section):
    """How window errors become row scores."""

    batch_size: int = Field(default=4096, ge=1)  # windows per prediction batch (bounds memory)
    normalise_sensors: bool = True  # divide each sensor's error by its mean on held-out normal windows
    combine: Literal["max", "mean"] = "max"  # a window's error: its worst sensor's (normalised) error, or the mean over sensors
    # A sensor's error in a window is its mean squared residual plus this times its squared mean
    # residual: a sustained offset from the reconstruction (a level a fault moved) weighs more
    # than noise of the same energy, which averages out over the window.
    offset_weight: float = Field(default=3.0, ge=0)
    smoothing_rows: int = Field(default=1, ge=1)  # trailing mean of the score over this many rows (1 = none)
    drift_allowance: float = Field(default=0.0, ge=0)  # share of a training-period trend's growth forgiven later (0 = off)


class PromotionConfig(_Section):
    """The gate ``promote`` applies before a challenger becomes champion."""

    # without labels: most flagged/scored rows allowed; with labels marking no anomaly: the FAR allowed above the champion's
    alarm_rate_budget: float = Field(default=0.05, ge=0, le=1)
    f1_tolerance: float = Field(default=0.0, ge=0, le=1)  # with labels: how much lower than the champion's F1 may be


class EngineConfig(_Section):
    """How per-asset work is spread (fleets)."""

    kind: Literal["local", "spark"] = "local"  # local: worker processes on this machine; spark: a Spark session
    workers: int | None = Field(default=None, ge=1)  # local: parallel processes; default: the number of cores
    spark_master: str = "local[*]"  # spark: the master URL (local[N], spark://host:7077, yarn, ...)


class FleetConfig(_Section):
    """Fleets: how the assets' models are trained."""

    shared_model: bool = False  # one autoencoder for all assets (each scaled, normalised and thresholded on its own)


class DriftConfig(_Section):
    """Data drift of each sensor against its training distribution (README "Drift")."""

    bins: int = Field(default=10, ge=2)  # training-quantile bins of the population stability index
    psi_limit: float = Field(default=0.25, gt=0)  # PSI above this is past the limit (0.25: a major shift, by convention)
    mean_shift_limit: float = Field(default=3.0, gt=0)  # |batch mean - training mean| in training standard deviations
    outside_range_limit: float = Field(default=0.05, gt=0, le=1)  # share of values outside the training min..max
    min_rows: int = Field(default=100, ge=1)  # a sensor with fewer values in a batch is not judged
    stale_batches: int = Field(default=3, ge=1)  # past a limit this many batches in a row: the model is stale


class ReviewConfig(_Section):
    """How an event is recognised as a repeat of one reviewed false_alarm (README "Reviewing events")."""

    match_top_sensors: int = Field(default=2, ge=1, le=3)  # the same leading sensors (as a set) in top_sensors
    profile_ratio: float = Field(default=2.0, gt=1)  # peak and mean score each within this factor of the reviewed event's
    # At training, the windows of periods reviewed false_alarm are repeated to make at least this
    # share of the training windows (0 = each once, as any normal window).
    false_alarm_share: float = Field(default=0.2, ge=0, lt=1)


class PipelineConfig(_Section):
    """The whole configuration, one section per stage."""

    ingest: IngestConfig = Field(default_factory=IngestConfig)
    training: TrainingConfig = Field(default_factory=TrainingConfig)
    features: FeaturesConfig = Field(default_factory=FeaturesConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    threshold: ThresholdConfig = Field(default_factory=ThresholdConfig)
    events: EventsConfig = Field(default_factory=EventsConfig)
    scoring: ScoringConfig = Field(default_factory=ScoringConfig)
    promotion: PromotionConfig = Field(default_factory=PromotionConfig)
    engine: EngineConfig = Field(default_factory=EngineConfig)
    fleet: FleetConfig = Field(default_factory=FleetConfig)
    drift: DriftConfig = Field(default_factory=DriftConfig)
    review: ReviewConfig = Field(default_factory=ReviewConfig)

    def flat(self) -> dict[str, Any]:
        """Every setting as ``section.key`` -> value, for logging as parameters."""
        return {f"{section}.{key}": value for section, values in self.model_dump().items() for key, value in values.items()}


def _rows(duration: str, interval_seconds: float, rounding: str) -> int:
    import math

    import pandas as pd

    ratio = pd.Timedelta(duration).total_seconds() / interval_seconds
    return {"ceil": math.ceil(ratio - 1e-9), "floor": math.floor(ratio + 1e-9), "round": round(ratio)}[rounding]


def resolve_events(events: EventsConfig, interval_seconds: float) -> EventsConfig:
    """The event policy with its durations (if any) in rows of ``interval_seconds``: each row count
    becomes the larger of itself and its duration in rows (``min_event`` and ``release``: rounded
    up, ``merge_gap``: down). Applying it twice changes nothing."""
    update = {}
    if events.min_event_duration:
        update["min_event_rows"] = max(events.min_event_rows, _rows(events.min_event_duration, interval_seconds, "ceil"))
    if events.merge_gap_duration:
        update["merge_gap_rows"] = max(events.merge_gap_rows, _rows(events.merge_gap_duration, interval_seconds, "floor"))
    if events.release_duration:
        update["release_rows"] = max(events.release_rows, _rows(events.release_duration, interval_seconds, "ceil"))
    return events.model_copy(update=update) if update else events


def resolve_durations(config: PipelineConfig, interval_seconds: float) -> PipelineConfig:
    """``config`` with every duration setting turned into rows of the sampling interval.

    ``features.window_duration`` -> ``window_size`` (rounded, at least 2); the event durations
    as in ``resolve_events``. The durations stay in the config beside the rows they gave.
    """
    features = config.features
    if features.window_duration:
        features = features.model_copy(update={"window_size": max(2, _rows(features.window_duration, interval_seconds, "round"))})
    events = resolve_events(config.events, interval_seconds)
    if features is config.features and events is config.events:
        return config
    return config.model_copy(update={"features": features, "events": events})


def _describe(error: ValidationError, origin: str) -> str:
    first = error.errors()[0]
    field = ".".join(str(part) for part in first["loc"]) or "(top level)"
    return f"{origin}: field '{field}': {first['msg']}; got {first.get('input')!r}"


def load_config(path: str | Path | None) -> PipelineConfig:
    """Load and validate a YAML config file; ``None`` gives the defaults.

    Raises:
        InputError: the file is missing, not YAML, or a value is not allowed.
    """
    if path is None:
        return PipelineConfig()
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: config file not found")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise InputError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from None
    if not isinstance(raw, dict):
        raise InputError(f"{path}: expected a mapping of sections, got {type(raw).__name__}")
    try:
        return PipelineConfig.model_validate(raw)
    except ValidationError as exc:
        raise InputError(_describe(exc, str(path))) from None


def with_overrides(config: PipelineConfig, overrides: dict[str, Any]) -> PipelineConfig:
    """Return a copy with ``section.key`` settings replaced; ``None`` values are ignored.

    Settings neither the config nor an override set stay unset (``model_fields_set``): the run
    tells a setting given from a default by that.

    Raises:
        InputError: an override is not allowed for its field.
    """
    data = config.model_dump(exclude_unset=True)
    for dotted, value in overrides.items():
        if value is None:
            continue
        section, key = dotted.split(".")
        data.setdefault(section, {})[key] = value
    try:
        return PipelineConfig.model_validate(data)
    except ValidationError as exc:
        raise InputError(_describe(exc, "command line")) from None


def to_yaml(config: PipelineConfig) -> str:
    return yaml.safe_dump(config.model_dump(), sort_keys=False)
