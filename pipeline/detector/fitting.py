"""Fitting: the normal rows of a validated table -> a model bundle (scaler, autoencoder, error
normalisation, threshold) and a report of how it was fitted.

Normal rows are split in time order: the first part trains (its last ``validation_fraction``
drives early stopping), the last ``holdout_fraction`` calibrates. Training windows lie wholly in
the training part; early-stopping and calibration windows end in their own part and may reach
back into earlier rows as context (as a scored row's window does), so a few hundred normal rows
suffice even for long windows. The calibration windows are scored exactly as new data is
(``pipeline.detector.window_error``) and the threshold is fitted on those scores.

Operators' verdicts (``pipeline.detector.reviews``) move rows: a period reviewed ``false_alarm``
joins the normal rows, with the ``window_size - 1`` rows before it (the rest of the windows that
raised the alarm: without them the model never sees the change into the period), and always
trains (it never calibrates: the threshold stays calibrated on ordinary normal data), its
windows repeated to make ``review.false_alarm_share`` of the training windows
(``weigh_reviewed``); a period reviewed ``confirmed`` is never normal.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace

import numpy as np
import pandas as pd

from pipeline.config import PipelineConfig, resolve_durations
from pipeline.data.ingest import IngestResult
from pipeline.data.quality import sampling_interval_seconds
from pipeline.detector.bundle import ModelBundle
from pipeline.detector.drift import fit_reference
from pipeline.detector.latent import reconstruction_quality
from pipeline.detector.sampled import scoring_model
from pipeline.detector.threshold import calibrate_threshold
from pipeline.detector.window_error import (
    ErrorNormaliser,
    ErrorRule,
    fit_drift_rate,
    fit_error_scale,
    predicted_energy,
    smooth_trailing,
    window_scores,
)
from pipeline.errors import InputError, TrainingFailed
from pipeline.features.scaler import Scaler, fit_scaler, wandering_sensors
from pipeline.features.windows import segment_ids, window_starts
from pipeline.utc import utc_ns

log = logging.getLogger(__name__)

TRAIN, VALIDATION, CALIBRATION = 0, 1, 2  # the parts of the normal rows, in time order


@dataclass
class FitReport:
    history: dict[str, list[float]]
    best_epoch: int
    holdout_errors: np.ndarray  # the calibration windows' scores, (n_windows,)
    rows: dict[str, int]  # normal rows and windows per part
    # per sensor, on the calibration windows (``latent.reconstruction_quality``)
    reconstruction: list[dict] = field(default_factory=list)


def normal_mask(
    table: pd.DataFrame, config: PipelineConfig, in_period: np.ndarray | None = None, moved: np.ndarray | None = None
) -> np.ndarray:
    """Rows that training may use: in the asset's normal periods (``in_period``, fleets), else in
    its first ``normal_first`` (fleets); and before ``normal_until``; and labelled 0. All rows
    when none of these is set. Then the verdicts: ``moved`` (n_rows,) is +1 for a row of a period
    reviewed ``false_alarm`` (normal), -1 for one reviewed ``confirmed`` (not normal), else 0.
    """
    mask = np.ones(len(table), dtype=bool)
    if in_period is not None:
        mask &= in_period
    elif config.training.normal_first and len(table):
        first = table["timestamp"].iloc[0]
        mask &= (table["timestamp"] < first + pd.Timedelta(config.training.normal_first)).to_numpy()
    until = normal_until_utc(config)
    if until is not None:
        mask &= (table["timestamp"] < until).to_numpy()
    if config.ingest.label_column:
        mask &= (table["label"] == 0).to_numpy()
    if moved is not None:
        mask = (mask | (moved > 0)) & (moved >= 0)
    return mask


def normal_until_utc(config: PipelineConfig) -> pd.Timestamp | None:
    """``training.normal_until`` in UTC (a time without a zone is read in ``ingest.source_timezone``).

    Raises:
        InputError: it does not parse as a timestamp.
    """
    if not config.training.normal_until:
        return None
    try:
        until = pd.Timestamp(config.training.normal_until)
    except ValueError:
        raise InputError(f"--normal-until: cannot parse '{config.training.normal_until}' as a timestamp") from None
    return (until.tz_localize(config.ingest.source_timezone) if until.tzinfo is None else until).tz_convert("UTC")


def open_normal_stretch(
    table: pd.DataFrame, config: PipelineConfig, spans: list[tuple[int, int]] | None = None
) -> pd.Timestamp | None:
    """The end of a normal stretch the data has not reached yet, or None when none is open.

    A stretch is open while rows inside it may still arrive: a normal period of the asset
    (``spans``, UTC ns ``[start, end)``) that has begun but not ended by the last timestamp, the
    first ``normal_first`` when the data is shorter, or ``normal_until`` still ahead. Training
    now would cut it short, and a later run over the same rows would train another model.
    """
    if not len(table):
        return None
    first, last = table["timestamp"].min(), table["timestamp"].max()
    ends = []
    if spans:
        ends += [pd.Timestamp(end, tz="UTC") for start, end in spans if start <= last.value < end]
    elif config.training.normal_first:
        ends.append(first + pd.Timedelta(config.training.normal_first))
    until = normal_until_utc(config)
    if until is not None:
        ends.append(until)
    ahead = [end for end in ends if end > last]
    return max(ahead) if ahead else None


def rows_needed(config: PipelineConfig) -> int:
    """The fewest normal rows that give every part at least one window."""
    training, window = config.training, config.features.window_size
    fit_share = (1 - training.holdout_fraction) * (1 - training.validation_fraction)
    smallest_part = min(training.holdout_fraction, (1 - training.holdout_fraction) * training.validation_fraction)
    return max(int(np.ceil(window / fit_share)), int(np.ceil(1 / smallest_part)))


@dataclass
class Prepared:
    """One table's normal rows, scaled, with the start rows of each part's windows."""

    result: IngestResult
    config: PipelineConfig  # with durations resolved to rows of the measured interval
    scaler: Scaler
    values: np.ndarray  # scaled normal rows, (n_normal, n_sensors)
    times: pd.Series  # their timestamps
    stretch: np.ndarray  # gap-free stretch of consecutive normal rows of one part, per normal row
    part: np.ndarray  # TRAIN, VALIDATION or CALIBRATION, per normal row
    starts: dict[str, np.ndarray]  # "training", "validation", "calibration" -> window start rows
    train_windows_available: int  # before training.max_windows
    interval: float
    max_gap: float
    reference: dict  # each sensor's training distribution, for drift (``drift.fit_reference``)
    review_context_rows: int = 0  # rows joined as the context of reviewed false alarms' windows


def fit_bundle(
    result: IngestResult, config: PipelineConfig, in_period: np.ndarray | None = None, moved: np.ndarray | None = None
) -> tuple[ModelBundle, FitReport]:
    """Fit scaler, autoencoder, error normalisation and threshold on the normal rows of a table.

    ``in_period`` marks the rows in the asset's normal periods (fleets), ``moved`` the rows the
    verdicts move (see ``normal_mask``).

    Raises:
        InputError: too few normal rows, or no window in one of the parts.
    """
    prepared = prepare_fit(result, config, in_period, moved)
    return calibrate(prepared, train_on([prepared]))


def fit_shared(
    results: dict[str, IngestResult],
    config: PipelineConfig,
    in_periods: dict[str, np.ndarray | None],
    moved: dict[str, np.ndarray | None] | None = None,
) -> dict[str, tuple[ModelBundle, FitReport]]:
    """One autoencoder for all tables (``fleet.shared_model``), each scaled by its own scaler, with
    its own error normalisation and threshold.

    The model trains on every table's training windows (a window never spans two tables) and
    stops early on all their validation windows. A sensor that wanders in one table is judged by
    shape in all of them, since the model sees it centred.

    Raises:
        InputError: the tables do not have the same sensors, or one of them cannot be fitted.
    """
    first = next(iter(results.values()))
    for name, result in results.items():
        if result.sensors != first.sensors:
            raise InputError(f"fleet.shared_model needs the same sensors in every asset: {name} has {', '.join(result.sensors)}")
    moved = moved or {}
    prepared = {name: prepare_fit(result, config, in_periods.get(name), moved.get(name)) for name, result in results.items()}
    centred = sorted(set().union(*(p.scaler.centred for p in prepared.values())), key=first.sensors.index)
    prepared = {name: replace(p, scaler=replace(p.scaler, centred=centred)) for name, p in prepared.items()}
    windows = {p.config.features.window_size for p in prepared.values()}
    if len(windows) > 1:
        raise InputError(f"fleet.shared_model needs one window for every asset; window_duration gives {sorted(windows)} rows")
    trained = train_on(list(prepared.values()))
    return {name: calibrate(p, trained) for name, p in prepared.items()}


def prepare_fit(
    result: IngestResult, config: PipelineConfig, in_period: np.ndarray | None = None, moved: np.ndarray | None = None
) -> Prepared:
    """The normal rows of a table, scaled on its training rows, split in parts and cut into windows."""
    table = result.table
    normal = normal_mask(table, config, in_period, moved)
    n_normal = int(normal.sum())
    interval = sampling_interval_seconds(table["timestamp"][normal]) if n_normal > 1 else 1.0
    # Settings given as durations become rows of the interval measured here; the bundle keeps both.
    config = resolve_durations(config, interval)
    window = config.features.window_size
    forced = np.zeros(len(table), dtype=bool) if moved is None else moved > 0
    context = window_context(forced, window) & ~normal & (moved >= 0) if forced.any() else forced
    if context.any():  # the rows before a reviewed false alarm that its alarming windows reached back over
        normal, forced = normal | context, forced | context
        n_normal = int(normal.sum())
    needed = rows_needed(config)
    if n_normal < needed:
        raise InputError(
            f"{', '.join(sorted(table['source'].unique()))}: {n_normal} normal rows, need at least {needed} "
            f"for window_size={window} (fewer rows than the windows need; lower features.window_size or give more normal data)"
        )
    max_gap = config.features.max_gap_seconds or window * interval

    part = _parts(n_normal, config)
    # A window stays inside one stretch of consecutive normal rows of one part, with no long gap.
    segment = segment_ids(table["timestamp"], max_gap)
    changes = (np.diff(segment) != 0) | (np.diff(normal.astype(np.int8)) != 0)
    if forced.any():  # a reviewed false alarm trains, never calibrates, and is a stretch of its own
        changes |= np.diff(forced.astype(np.int8)) != 0
        part[forced[normal]] = TRAIN
    stretch = np.cumsum(np.concatenate([[0], changes]))[normal]

    raw = table[result.sensors].to_numpy(dtype=np.float64)[normal]
    reference = fit_reference(raw, result.sensors, config.drift.bins)
    scaler = fit_scaler(raw[part < CALIBRATION], result.sensors)
    values = scaler.transform(raw)
    wandering = wandering_sensors(values[part == TRAIN], result.sensors, config.features.wander_ratio)
    if wandering:
        log.info("judged by shape, not level (they wander in training): %s", ", ".join(wandering))
        scaler = replace(scaler, centred=wandering)
    stride = config.features.stride
    training = part_starts(stretch, part, TRAIN, window, stride)
    starts = {
        "training": weigh_reviewed(
            evenly_spaced(training, config.training.max_windows), forced[normal], window, config.review.false_alarm_share
        ),
        "validation": part_starts(stretch, part, VALIDATION, window, stride),
        "calibration": part_starts(stretch, part, CALIBRATION, window, 1),
    }
    for name, found in starts.items():
        if found.size == 0:
            raise InputError(f"no {name} windows: normal data is too short or too gappy for window_size={window}")
    log.info("training on %d windows, early stopping on %d, calibrating on %d", *(s.size for s in starts.values()))
    times = table["timestamp"][normal]
    prepared = Prepared(
        result, config, scaler, values, times, stretch, part, starts, int(training.size), interval, float(max_gap), reference
    )
    prepared.review_context_rows = int(context.sum())
    return prepared


def train_on(prepared: list[Prepared]):
    """The autoencoder trained on the training windows of all the prepared tables (one table: the usual case)."""
    from pipeline.model.training import train_autoencoder  # TensorFlow only where training needs it

    offsets = np.cumsum([0] + [len(p.values) for p in prepared[:-1]])
    values = np.concatenate([p.values for p in prepared]) if len(prepared) > 1 else prepared[0].values
    train_starts = np.concatenate([p.starts["training"] + o for p, o in zip(prepared, offsets)])
    val_starts = np.concatenate([p.starts["validation"] + o for p, o in zip(prepared, offsets)])
    config = prepared[0].config
    window = config.features.window_size
    return train_autoencoder(values, train_starts, val_starts, window, config.model, prepared[0].scaler.centred_mask)


def calibrate(prepared: Prepared, trained) -> tuple[ModelBundle, FitReport]:
    """Error normalisation and threshold of one table on its calibration windows, scored as new data will be."""
    config = prepared.config
    result, scaler, values, window = prepared.result, prepared.scaler, prepared.values, config.features.window_size
    holdout_starts = prepared.starts["calibration"]
    scoring = config.scoring
    rule = ErrorRule.from_config(scoring, scaler.centred_mask)
    model = scoring_model(trained.model, config.model)
    batches = predicted_energy(model, values, holdout_starts, window, scoring.batch_size, rule)
    energy = np.concatenate([batch for _, batch in batches])
    times = prepared.times
    times_ns = utc_ns(times)
    ends_ns = times_ns[holdout_starts + window - 1]
    error_scale = drift_rate = drift_reference = None
    if scoring.normalise_sensors:
        error_scale = fit_error_scale(energy / window)
        fit_rows = np.flatnonzero(prepared.part == TRAIN)
        drift_rate = fit_drift_rate(values[fit_rows], times_ns[fit_rows])
        drift_reference = times.iloc[int(fit_rows[-1])].isoformat()
        normaliser = ErrorNormaliser(
            np.asarray(error_scale), np.asarray(drift_rate), scoring.drift_allowance, int(times_ns[fit_rows[-1]])
        )
        rule = replace(rule, normaliser=normaliser)
    errors, _ = window_scores(energy, window, rule, ends_ns)
    if not np.all(np.isfinite(errors)):  # never a bundle with a NaN threshold
        raise TrainingFailed(
            f"training failed: {int((~np.isfinite(errors)).sum())} of {errors.size} held-out windows have no finite score; "
            "lower model.learning_rate or set model.clipnorm; "
            "check for a sensor with huge values or one constant in the normal rows"
        )
    errors = smooth_trailing(errors, scoring.smoothing_rows, prepared.stretch[holdout_starts])
    errors = errors[np.isfinite(errors)]
    threshold = calibrate_threshold(errors, config.threshold)
    if not np.isfinite(threshold.value):
        raise TrainingFailed(f"training failed: the threshold is {threshold.value}; check for a sensor with huge values")
    log.info("threshold %.5g (%s %s)", threshold.value, threshold.method, threshold.params)
    quality = reconstruction_quality(model, values, holdout_starts, window, scaler.sensors, scaler.scale, scaler.centred_mask)
    worst = min(quality, key=lambda q: q["variance_explained"] if np.isfinite(q["variance_explained"]) else 1.0)
    log.info(
        "reconstruction on held-out windows: %s explains the least of its variance (%.0f %%)",
        worst["sensor"],
        100 * worst["variance_explained"],
    )

    rows = {
        "normal_rows": len(values),
        "train_windows_available": prepared.train_windows_available,
        "train_windows": int(prepared.starts["training"].size),
        "train_windows_per_second": int(trained.windows_per_second),
        "train_batch_size": int(trained.batch_size),
        "validation_windows": int(prepared.starts["validation"].size),
        "calibration_windows": int(holdout_starts.size),
        "review_context_rows": prepared.review_context_rows,
    }
    bundle = ModelBundle(
        model=model,
        scaler=scaler,
        threshold=threshold,
        config=config,
        timestamp_column=result.timestamp_column,
        sampling_interval_seconds=prepared.interval,
        max_gap_seconds=prepared.max_gap,
        training={**rows, "normal_until": config.training.normal_until, "label_column": config.ingest.label_column},
        error_scale=error_scale,
        drift_rate=drift_rate,
        drift_reference=drift_reference,
        sensor_intervals={s: float(result.sensor_intervals[s]) for s in result.sensors if s in result.sensor_intervals},
        dayfirst=result.dayfirst,
        sensor_reference=prepared.reference,
    )
    return bundle, FitReport(trained.history, trained.best_epoch, errors, rows, quality)


def _parts(n_normal: int, config: PipelineConfig) -> np.ndarray:
    """Part of each normal row in time order: TRAIN, then VALIDATION, then CALIBRATION."""
    part = np.full(n_normal, TRAIN, dtype=np.int8)
    fit_rows = int(n_normal * (1 - config.training.holdout_fraction))
    part[int(fit_rows * (1 - config.training.validation_fraction)) :] = VALIDATION
    part[fit_rows:] = CALIBRATION
    return part


def evenly_spaced(starts: np.ndarray, limit: int | None) -> np.ndarray:
    """At most ``limit`` of ``starts`` (sorted start rows), spread evenly from the first to the last."""
    if limit is None or starts.size <= limit:
        return starts
    picks = np.unique(np.linspace(0, starts.size - 1, limit).round().astype(np.int64))
    log.info("training on %d of %d windows, evenly over time (training.max_windows)", picks.size, starts.size)
    return starts[picks]


def window_context(rows: np.ndarray, window: int) -> np.ndarray:
    """Rows within the ``window - 1`` rows before a True row of ``rows`` (n_rows,): the earlier rows
    of the windows ending in it."""
    ahead = np.cumsum(np.concatenate([[0], rows.astype(np.int64)]))
    n = rows.size
    last = np.minimum(np.arange(n) + window - 1, n - 1)
    return (ahead[last + 1] - ahead[np.arange(n) + 1]) > 0


def weigh_reviewed(starts: np.ndarray, reviewed: np.ndarray, window: int, share: float) -> np.ndarray:
    """Training window starts with each window ending in a reviewed false alarm (``reviewed``, per
    normal row) repeated, so that they make at least ``share`` of the training windows: a few
    reviewed periods among weeks of normal data would otherwise barely move the model."""
    ends_reviewed = reviewed[starts + window - 1] if starts.size else np.zeros(0, dtype=bool)
    n_reviewed = int(ends_reviewed.sum())
    if not n_reviewed or share <= 0 or n_reviewed == starts.size:
        return starts
    times = max(1, int(np.ceil(share * (starts.size - n_reviewed) / ((1 - share) * n_reviewed))))
    if times == 1:
        return starts
    log.info("reviewed false alarms: %d training windows, each used %d times (review.false_alarm_share)", n_reviewed, times)
    return np.sort(np.concatenate([starts, np.repeat(starts[ends_reviewed], times - 1)]))


def part_starts(stretch: np.ndarray, part: np.ndarray, which: int, window: int, stride: int) -> np.ndarray:
    """Start rows (among the normal rows) of the windows whose last row is in part ``which``.

    Parts come in time order, so a training window lies wholly in training rows.
    """
    starts = window_starts(stretch, window, 1)
    starts = starts[part[starts + window - 1] == which]
    return starts[::stride]
