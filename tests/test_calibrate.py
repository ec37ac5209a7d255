import numpy as np
import pytest

from pipeline.calibrate import Threshold, calibrate_threshold
from pipeline.config import ThresholdConfig
from pipeline.errors import InputError


def test_quantile_threshold_on_known_errors():
    errors = np.arange(1, 101, dtype=float)  # 1..100
    returned = calibrate_threshold(errors, ThresholdConfig(method="quantile", quantile=0.9))
    expected = 90.1  # numpy's linear interpolation between 90 and 91
    assert returned.value == pytest.approx(expected)
    assert returned.method == "quantile" and returned.params == {"quantile": 0.9}
    assert returned.n_windows == 100


def test_mean_std_threshold_on_known_errors():
    errors = np.array([1.0, 2.0, 3.0, 4.0, 5.0])  # mean 3, population std sqrt(2)
    returned = calibrate_threshold(errors, ThresholdConfig(method="mean_std", k=2.0))
    expected = 3.0 + 2.0 * np.sqrt(2.0)
    assert returned.value == pytest.approx(expected)
    assert returned.params == {"k": 2.0}


def test_threshold_is_not_the_maximum_error():
    errors = np.random.default_rng(0).gamma(2.0, size=5000)
    returned = calibrate_threshold(errors, ThresholdConfig())
    assert returned.value < errors.max()
    assert returned.error_stats["max"] == pytest.approx(errors.max())


def test_quantile_threshold_gives_its_false_alarm_share_on_normal_errors():
    rng = np.random.default_rng(1)
    threshold = calibrate_threshold(rng.normal(size=20000) ** 2, ThresholdConfig(quantile=0.99))
    fresh = rng.normal(size=20000) ** 2
    assert np.mean(fresh > threshold.value) == pytest.approx(0.01, abs=0.003)


def test_threshold_round_trips_and_refuses_no_errors():
    threshold = calibrate_threshold(np.array([1.0, 2.0]), ThresholdConfig())
    assert Threshold.from_dict(threshold.to_dict()) == threshold
    with pytest.raises(InputError, match="no held-out normal windows"):
        calibrate_threshold(np.array([]), ThresholdConfig())
