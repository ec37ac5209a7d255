"""Model, training, calibration wiring and the bundle, on tiny data with real TensorFlow."""

import json

import numpy as np
import pandas as pd
import pytest

from pipeline.config import ModelConfig
from pipeline.data.ingest import IngestResult
from pipeline.detector.bundle import load_bundle
from pipeline.detector.fitting import fit_bundle, normal_mask
from pipeline.detector.scoring import score_rows
from pipeline.errors import InputError
from pipeline.model.autoencoder import build_autoencoder
from pipeline.model.training import training_batch_size
from tests.conftest import TINY_NORMAL_UNTIL, tiny_config


def _result(frame: pd.DataFrame) -> IngestResult:
    sensors = [c for c in frame.columns if c != "timestamp"]
    table = frame.assign(source="pump.csv", row=np.arange(len(frame)))
    table["timestamp"] = table["timestamp"].dt.tz_localize("UTC")
    return IngestResult(
        table=table,
        rejected=pd.DataFrame(columns=["source", "row", "timestamp", "status"]),
        sensors=sensors,
        timestamp_column="timestamp",
    )


@pytest.mark.parametrize("architecture,window", [("conv", 8), ("conv", 10), ("dense", 7)])
def test_autoencoder_output_matches_its_input_shape(architecture, window):
    model = build_autoencoder(ModelConfig(architecture=architecture, filters=[4, 4], units=[8], latent_dim=2), window, 3)
    returned = model.predict_on_batch(np.zeros((2, window, 3), dtype=np.float32))
    assert returned.shape == (2, window, 3)


def test_normal_rows_come_from_normal_until_and_labels():
    table = pd.DataFrame(
        {
            "timestamp": pd.to_datetime(["2026-01-01 00:00", "2026-01-01 00:01", "2026-01-01 00:02"], utc=True),
            "label": [0.0, 1.0, 0.0],
        }
    )
    config = tiny_config().model_copy(deep=True)
    config.training.normal_until = "2026-01-01 00:02"
    np.testing.assert_array_equal(normal_mask(table, config), [True, True, False])
    config.ingest.label_column = "label"
    np.testing.assert_array_equal(normal_mask(table, config), [True, False, False])


def test_scaler_never_sees_scoring_data(tiny_frame):
    frame = tiny_frame.copy()
    after = frame["timestamp"] >= pd.Timestamp(TINY_NORMAL_UNTIL)
    frame.loc[after, "motor_current"] += 1000.0  # scoring-period values far from anything normal
    bundle, _ = fit_bundle(_result(frame), tiny_config())
    normal = frame.loc[~after]
    fit_rows = normal.iloc[: int(len(normal) * 0.8)]  # calibration rows are held out too
    assert bundle.scaler.mean[bundle.sensors.index("motor_current")] == pytest.approx(fit_rows["motor_current"].mean())
    assert bundle.scaler.mean[bundle.sensors.index("motor_current")] < 100


def test_fit_calibrates_on_held_out_windows_and_flags_the_faults(tiny_frame, tmp_path):
    result = _result(tiny_frame)
    config = tiny_config()
    bundle, report = fit_bundle(result, config)
    assert len(report.history["loss"]) >= 1 and len(report.history["val_loss"]) == len(report.history["loss"])
    assert report.rows["calibration_windows"] == report.holdout_errors.size > 0
    assert bundle.threshold.n_windows == report.holdout_errors.size
    # The default threshold: a tail fit above the held-out errors' pot_level quantile, times the margin.
    before = bundle.threshold.params["before_margin"]
    assert bundle.threshold.value == pytest.approx(before * config.threshold.margin)
    assert before > np.quantile(report.holdout_errors, config.threshold.pot_level)

    rows = score_rows(bundle, result.table)
    window = bundle.window_size
    assert np.isnan(rows.score[: window - 1]).all() and np.isfinite(rows.score[window - 1 :]).all()
    np.testing.assert_allclose(np.nansum(rows.contributions[window:], axis=1), 1.0, rtol=1e-4)
    spikes = (tiny_frame["timestamp"] >= "2026-10-01 20:10") & (tiny_frame["timestamp"] < "2026-10-01 21:00")
    assert np.median(rows.score[spikes.to_numpy()]) > bundle.threshold.value

    short = score_rows(bundle, result.table.iloc[: window - 1])
    assert np.isnan(short.score).all()  # fewer rows than one window: every score empty, no error

    loaded = load_bundle(bundle.save(tmp_path / "bundle"))
    assert loaded.describe() == bundle.describe()
    assert type(loaded.model).__name__ == "NumpyAutoencoder"  # scoring runs without TensorFlow
    again = score_rows(loaded, result.table)
    np.testing.assert_allclose(again.score, rows.score, rtol=1e-5)
    with_keras = load_bundle(tmp_path / "bundle", keras_model=True)
    assert type(with_keras.model).__name__ == "Functional"

    # A bundle written before the scoring settings below existed keeps scoring as it was calibrated.
    meta = json.loads((tmp_path / "bundle" / "bundle.json").read_text())
    for key in ("combine", "offset_weight"):
        del meta["config"]["scoring"][key]
    (tmp_path / "bundle" / "bundle.json").write_text(json.dumps(meta))
    older = load_bundle(tmp_path / "bundle")
    assert (older.config.scoring.combine, older.config.scoring.offset_weight) == ("mean", 0.0)

    # A bundle written before issue 16 (no per-sensor intervals, date order or new ingest settings)
    # loads, and scoring takes every sensor to be at the table's rate, as it did.
    for key in ("sensor_intervals", "dayfirst"):
        del meta[key]
    for key in ("timestamp_format", "dayfirst", "resample", "layout", "max_set_aside_share"):
        del meta["config"]["ingest"][key]
    (tmp_path / "bundle" / "bundle.json").write_text(json.dumps(meta))
    before_16 = load_bundle(tmp_path / "bundle")
    assert before_16.sensor_intervals is None and before_16.input_hints() == {"dayfirst": None, "intervals": {}}
    assert before_16.config.ingest.layout == "wide"


def test_too_few_normal_rows_is_a_clear_error(tiny_frame):
    config = tiny_config().model_copy(deep=True)
    config.training.normal_until = "2026-10-01 00:10"  # 10 rows: fewer than window 8 needs for its three parts
    with pytest.raises(InputError, match="normal rows, need at least"):
        fit_bundle(_result(tiny_frame), config)


def test_denoising_batches_have_noisy_inputs_and_clean_targets():
    from pipeline.model.training import WindowBatches

    values = np.arange(40, dtype=np.float32).reshape(20, 2)
    starts = np.arange(0, 16)
    inputs, targets = WindowBatches(values, starts, 4, 8, shuffle_seed=0, input_noise=0.5)[0]
    clean_inputs, clean_targets = WindowBatches(values, starts, 4, 8, shuffle_seed=0)[0]
    np.testing.assert_array_equal(targets, clean_targets)
    np.testing.assert_array_equal(clean_inputs, clean_targets)
    noise = inputs - targets
    assert noise.std() == pytest.approx(0.5, rel=0.3) and abs(noise.mean()) < 0.2


def test_a_sensor_that_wanders_in_training_is_judged_by_shape_and_a_step_elsewhere_is_flagged():
    rng = np.random.default_rng(1)
    n = 1000
    frame = pd.DataFrame(
        {
            "timestamp": pd.date_range("2026-01-01", periods=n, freq="s"),
            "temperature": np.arange(n) * 0.01 + rng.normal(0, 0.05, n),  # warms all the time, far past its training range
            "flow": rng.normal(0, 1, n),
            "pressure": rng.normal(0, 1, n),
        }
    )
    frame.loc[800:899, "flow"] += 6.0  # the fault: a step in a sensor that is steady in training
    config = tiny_config().model_copy(deep=True)
    config.training.normal_until = "2026-01-01 00:10:00"  # the first 600 rows
    bundle, _ = fit_bundle(_result(frame), config)
    assert bundle.scaler.centred == ["temperature"]
    flagged = bundle.threshold.value < score_rows(bundle, _result(frame).table).score
    assert not flagged[600:800].any()  # only the temperature is new there: no alarm
    assert flagged[810:900].mean() > 0.9


def test_window_and_event_durations_are_converted_with_the_measured_interval_and_kept(tiny_frame, tmp_path):
    config = tiny_config().model_copy(
        update={
            "features": tiny_config().features.model_copy(update={"window_duration": "16min"}),
            "events": tiny_config().events.model_copy(update={"min_event_duration": "3min"}),
        }
    )
    bundle, _ = fit_bundle(_result(tiny_frame), config)  # one row a minute
    assert bundle.sampling_interval_seconds == 60.0
    assert bundle.window_size == 16 and bundle.config.events.min_event_rows == 3
    again = load_bundle(bundle.save(tmp_path / "bundle"))
    assert again.window_size == 16 and again.config.features.window_duration == "16min"
    assert again.config.events.min_event_duration == "3min" and again.config.events.min_event_rows == 3


def test_max_windows_caps_the_training_windows_and_the_report_says_so(tiny_frame):
    config = tiny_config().model_copy(deep=True)
    config.training.max_windows = 50
    config.model.min_steps_per_epoch = 16
    _, report = fit_bundle(_result(tiny_frame), config)
    assert report.rows["train_windows"] == 50 < report.rows["train_windows_available"]
    assert report.rows["train_windows_per_second"] > 0
    # 50 windows are too few for 16 steps of 64: batches of 50 // 16 = 3 (17 steps per epoch).
    assert report.rows["train_batch_size"] == 3


def test_few_training_windows_shrink_the_batch_to_keep_the_steps_per_epoch():
    config = ModelConfig(batch_size=128, min_steps_per_epoch=16)
    assert training_batch_size(20_000, config) == 128  # plenty of windows: the batch as configured
    assert training_batch_size(2048, config) == 128  # exactly 16 steps of 128
    assert training_batch_size(2047, config) == 127
    assert training_batch_size(257, config) == 16  # SKAB's 400 training rows: 17 steps instead of 3
    assert training_batch_size(10, config) == 1  # never below one window
    assert training_batch_size(257, ModelConfig()) == 128  # the default, 1: off, batches as configured
