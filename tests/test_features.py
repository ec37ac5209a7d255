from dataclasses import replace

import numpy as np
import pandas as pd
from hypothesis import given
from hypothesis import strategies as st

from pipeline.features.scaler import fit_scaler, wandering_sensors
from pipeline.features.windows import (
    count_windows,
    gather_windows,
    segment_ids,
    window_starts,
)


@given(n=st.integers(0, 300), window=st.integers(1, 40), stride=st.integers(1, 7))
def test_window_count_matches_formula(n, window, stride):
    segments = np.zeros(n, dtype=np.int64)
    returned = window_starts(segments, window, stride)
    expected = count_windows(n, window, stride)
    assert returned.size == expected
    if stride == 1:
        assert expected == max(0, n - window + 1)
    assert np.all(returned + window <= n)


def test_windows_never_cross_a_segment():
    segments = np.array([0] * 5 + [1] * 2 + [2] * 4)
    returned = window_starts(segments, 3)
    expected = np.array([0, 1, 2, 7, 8])
    np.testing.assert_array_equal(returned, expected)


def test_segments_break_at_long_gaps():
    seconds = [0, 1, 2, 30, 31]
    timestamps = pd.Series(pd.Timestamp("2026-01-01") + pd.to_timedelta(seconds, unit="s"))
    returned = segment_ids(timestamps, max_gap_seconds=10)
    expected = np.array([0, 0, 0, 1, 1])
    np.testing.assert_array_equal(returned, expected)


def test_gather_windows_copies_the_right_rows():
    values = np.arange(12, dtype=np.float32).reshape(6, 2)
    returned = gather_windows(values, np.array([0, 3]), 3)
    expected = np.array([values[0:3], values[3:6]])
    np.testing.assert_array_equal(returned, expected)


def test_scaler_standardises_and_survives_a_constant_sensor():
    values = np.array([[1.0, 5.0], [3.0, 5.0], [5.0, 5.0]])
    scaler = fit_scaler(values, ["a", "flat"])
    assert scaler.constant == ["flat"]
    assert scaler.scale[1] == 1.0
    returned = scaler.transform(values)
    assert np.isfinite(returned).all()
    np.testing.assert_allclose(returned[:, 0], [-1.2247449, 0.0, 1.2247449], rtol=1e-6)
    np.testing.assert_allclose(returned[:, 1], 0.0)
    assert returned.dtype == np.float32


def test_scaler_round_trips_through_json_data():
    scaler = fit_scaler(np.array([[1.0], [2.0], [4.0]]), ["a"])
    assert type(scaler).from_dict(scaler.to_dict()) == scaler


def test_a_sensor_warming_through_training_wanders_and_a_cycling_one_does_not():
    rng = np.random.default_rng(0)
    rows = np.arange(800)
    warming = rows / 100 + rng.normal(0, 0.3, rows.size)  # a temperature rising all the time
    cycling = np.sin(2 * np.pi * rows / 50) + rng.normal(0, 0.3, rows.size)  # its cycle repeats in each eighth
    noise = rng.normal(0, 1, rows.size)
    values = np.column_stack([warming, cycling, noise])
    assert wandering_sensors(values, ["warming", "cycling", "noise"], ratio=1.5) == ["warming"]
    assert wandering_sensors(values, ["warming", "cycling", "noise"], ratio=0) == []


def test_gather_windows_centres_only_the_masked_sensors():
    values = np.column_stack([np.arange(6, dtype=np.float32), np.arange(6, dtype=np.float32) * 10])
    before = values.copy()
    returned = gather_windows(values, np.array([0, 3]), 3, centred=np.array([False, True]))
    np.testing.assert_array_equal(returned[:, :, 0], [[0, 1, 2], [3, 4, 5]])
    np.testing.assert_array_equal(returned[:, :, 1], [[-10, 0, 10], [-10, 0, 10]])  # each window about its own mean
    np.testing.assert_array_equal(values, before)  # the source is never changed


def test_scaler_with_centred_sensors_round_trips():
    scaler = replace(fit_scaler(np.array([[1.0, 2.0], [2.0, 0.0], [4.0, 1.0]]), ["a", "b"]), centred=["b"])
    assert type(scaler).from_dict(scaler.to_dict()) == scaler
    np.testing.assert_array_equal(scaler.centred_mask, [False, True])
    assert fit_scaler(np.array([[1.0], [2.0]]), ["a"]).centred_mask is None
