import numpy as np
import pytest

from pipeline.config import ThresholdConfig
from pipeline.detector.threshold import Threshold, calibrate_threshold
from pipeline.errors import InputError


def test_quantile_threshold_on_known_errors():
    errors = np.arange(1, 101, dtype=float)  # 1..100
    returned = calibrate_threshold(errors, ThresholdConfig(method="quantile", quantile=0.9, margin=1.0))
    expected = 90.1  # numpy's linear interpolation between 90 and 91
    assert returned.value == pytest.approx(expected)
    assert returned.method == "quantile" and returned.params == {"quantile": 0.9}
    assert returned.n_windows == 100


def test_mean_std_threshold_on_known_errors():
    errors = np.array([1.0, 2.0, 3.0, 4.0, 5.0])  # mean 3, population std sqrt(2)
    returned = calibrate_threshold(errors, ThresholdConfig(method="mean_std", k=2.0, margin=1.0))
    expected = 3.0 + 2.0 * np.sqrt(2.0)
    assert returned.value == pytest.approx(expected)
    assert returned.params == {"k": 2.0}


def test_threshold_is_not_the_maximum_error():
    errors = np.random.default_rng(0).gamma(2.0, size=5000)
    returned = calibrate_threshold(errors, ThresholdConfig(method="quantile", margin=1.0))
    assert returned.value < errors.max()
    assert returned.error_stats["max"] == pytest.approx(errors.max())


def test_quantile_threshold_gives_its_false_alarm_share_on_normal_errors():
    rng = np.random.default_rng(1)
    threshold = calibrate_threshold(rng.normal(size=20000) ** 2, ThresholdConfig(method="quantile", quantile=0.99, margin=1.0))
    fresh = rng.normal(size=20000) ** 2
    assert np.mean(fresh > threshold.value) == pytest.approx(0.01, abs=0.003)


def test_threshold_round_trips_and_refuses_no_errors():
    threshold = calibrate_threshold(np.array([1.0, 2.0]), ThresholdConfig())
    assert Threshold.from_dict(threshold.to_dict()) == threshold
    with pytest.raises(InputError, match="no held-out normal windows"):
        calibrate_threshold(np.array([]), ThresholdConfig())


@pytest.mark.parametrize("risk", [1e-3, 1e-4])
def test_pot_threshold_on_an_exponential_tail(risk):
    # Exp(1): excesses over any level are Exp(1) again (GPD shape 0, scale 1), and the error
    # exceeded with probability q is -ln q.
    errors = np.random.default_rng(1).exponential(size=20_000)
    returned = calibrate_threshold(errors, ThresholdConfig(method="pot", risk=risk, pot_level=0.95, margin=1.0))
    assert returned.value == pytest.approx(-np.log(risk), rel=0.1)
    assert abs(returned.params["gpd_shape"]) < 0.1 and returned.params["gpd_scale"] == pytest.approx(1.0, rel=0.1)
    assert returned.params["n_peaks"] == pytest.approx(1000, abs=2)


def test_pot_threshold_on_a_pareto_tail_extrapolates_beyond_the_sample():
    # Pareto with tail index 4 (GPD shape 0.25): P(X > x) = x**-4, so the 1e-5 level is 10**1.25.
    errors = np.random.default_rng(2).pareto(4.0, size=50_000) + 1.0
    returned = calibrate_threshold(errors, ThresholdConfig(method="pot", risk=1e-5, pot_level=0.98, margin=1.0))
    assert returned.value == pytest.approx(10**1.25, rel=0.25)
    assert returned.params["gpd_shape"] == pytest.approx(0.25, abs=0.1)
    assert np.quantile(errors, 0.9999) < returned.value  # beyond what a quantile of the sample can give


def test_pot_falls_back_to_a_quantile_with_too_few_peaks_and_margin_scales():
    errors = np.linspace(0.0, 1.0, 30)  # 3 values above the 0.9 quantile: too few to fit a tail
    returned = calibrate_threshold(errors, ThresholdConfig(method="pot", risk=0.01, pot_level=0.9, margin=2.0))
    assert returned.params["fallback_quantile"] == pytest.approx(0.99)
    assert returned.params["before_margin"] == pytest.approx(np.quantile(errors, 0.99))
    assert returned.value == pytest.approx(2.0 * np.quantile(errors, 0.99))
