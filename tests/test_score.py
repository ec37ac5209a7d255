"""How window errors are formed: the offset term, the combination over sensors, and that
calibration and scoring form the same scores."""

import numpy as np
import pandas as pd

from pipeline.config import ScoringConfig
from pipeline.detector.scoring import score_table
from pipeline.detector.window_error import ErrorNormaliser, ErrorRule, combine_sensors, window_errors
from pipeline.features.scaler import Scaler


class _Zero:
    """A reconstructor that rebuilds every window as zeros: the residual is the window itself."""

    def predict_on_batch(self, windows: np.ndarray) -> np.ndarray:
        return np.zeros_like(windows)


MEAN = ErrorRule(offset_weight=0.0, combine="mean")


def test_a_sustained_offset_weighs_more_than_noise_of_the_same_energy():
    noise = np.tile([1.0, -1.0], 8)[:, None]  # mean 0, mean square 1
    offset = np.ones((16, 1))  # mean 1, mean square 1
    values = np.concatenate([noise, offset]).astype(np.float32)
    starts = np.array([0, 16])
    plain, _ = window_errors(_Zero(), values, starts, 16, 8, MEAN)
    weighted, _ = window_errors(_Zero(), values, starts, 16, 8, ErrorRule(offset_weight=3.0, combine="mean"))
    np.testing.assert_allclose(plain, [1.0, 1.0])
    np.testing.assert_allclose(weighted, [1.0, 4.0])  # 1 + 3 * mean**2


def test_the_worst_sensor_decides_with_max_and_is_diluted_with_mean():
    per_sensor = np.array([[1.0, 1.0, 1.0, 9.0], [1.0, 1.0, 1.0, 1.0]])
    np.testing.assert_allclose(combine_sensors(per_sensor, "max"), [9.0, 1.0])
    np.testing.assert_allclose(combine_sensors(per_sensor, "mean"), [3.0, 1.0])


def test_shares_follow_the_sensors_errors_whatever_the_combination():
    values = np.column_stack([np.full(8, 1.0), np.full(8, 3.0)]).astype(np.float32)  # squared errors 1 and 9
    errors, shares = window_errors(_Zero(), values, np.array([0]), 8, 4, ErrorRule(offset_weight=0.0, combine="max"))
    np.testing.assert_allclose(errors, [9.0])
    np.testing.assert_allclose(shares, [[0.1, 0.9]])


def test_the_normaliser_divides_each_sensors_error_before_combining():
    values = np.column_stack([np.full(8, 1.0), np.full(8, 3.0)]).astype(np.float32)  # squared errors 1 and 9
    normaliser = ErrorNormaliser(np.array([1.0, 9.0]), np.zeros(2), 0.0, 0)
    errors, shares = window_errors(_Zero(), values, np.array([0]), 8, 4, ErrorRule(0.0, "max", normaliser=normaliser))
    np.testing.assert_allclose(errors, [1.0])  # both sensors at their normal level
    np.testing.assert_allclose(shares, [[0.5, 0.5]])


def test_the_rule_follows_the_scoring_config_not_a_default_of_its_own():
    expected = ScoringConfig()
    returned = ErrorRule.from_config(expected, centred=None)
    assert (returned.combine, returned.offset_weight) == (expected.combine, expected.offset_weight)


def test_row_scores_are_the_window_errors_of_the_windows_ending_at_each_row():
    rng = np.random.default_rng(0)
    n, window = 40, 8
    table = pd.DataFrame(
        {
            "timestamp": pd.date_range("2026-01-01", periods=n, freq="s", tz="UTC"),
            "a": rng.normal(size=n),
            "b": rng.normal(size=n),
        }
    )
    scaler = Scaler(sensors=["a", "b"], mean=[0.0, 0.0], scale=[1.0, 1.0], constant=[])
    rule = ErrorRule(offset_weight=3.0, combine="max", normaliser=ErrorNormaliser(np.array([2.0, 0.5]), np.zeros(2), 0.0, 0))
    rows = score_table(_Zero(), scaler, table, window, max_gap_seconds=10.0, batch_size=5, rule=rule)
    values = table[["a", "b"]].to_numpy(np.float32)
    errors, shares = window_errors(_Zero(), values, np.arange(n - window + 1), window, 7, rule)
    assert np.isnan(rows.score[: window - 1]).all()
    np.testing.assert_allclose(rows.score[window - 1 :], errors, rtol=1e-6)
    np.testing.assert_allclose(rows.contributions[window - 1 :], shares, rtol=1e-6)
