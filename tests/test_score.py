"""How window errors are formed: the offset term and the combination over sensors."""

import numpy as np

from pipeline.score import ErrorRule, combine_sensors, reconstruction_errors


class _Zero:
    """A reconstructor that rebuilds every window as zeros: the residual is the window itself."""

    def predict_on_batch(self, windows: np.ndarray) -> np.ndarray:
        return np.zeros_like(windows)


def test_a_sustained_offset_weighs_more_than_noise_of_the_same_energy():
    noise = np.tile([1.0, -1.0], 8)[:, None]  # mean 0, mean square 1
    offset = np.ones((16, 1))  # mean 1, mean square 1
    values = np.concatenate([noise, offset]).astype(np.float32)
    starts = np.array([0, 16])
    plain, _ = reconstruction_errors(_Zero(), values, starts, 16, batch_size=8)
    weighted, _ = reconstruction_errors(_Zero(), values, starts, 16, batch_size=8, rule=ErrorRule(offset_weight=3.0))
    np.testing.assert_allclose(plain, [1.0, 1.0])
    np.testing.assert_allclose(weighted, [1.0, 4.0])  # 1 + 3 * mean**2


def test_the_worst_sensor_decides_with_max_and_is_diluted_with_mean():
    per_sensor = np.array([[1.0, 1.0, 1.0, 9.0], [1.0, 1.0, 1.0, 1.0]])
    np.testing.assert_allclose(combine_sensors(per_sensor, "max"), [9.0, 1.0])
    np.testing.assert_allclose(combine_sensors(per_sensor, "mean"), [3.0, 1.0])


def test_shares_follow_the_sensors_errors_whatever_the_combination():
    values = np.column_stack([np.full(8, 1.0), np.full(8, 3.0)]).astype(np.float32)  # squared errors 1 and 9
    errors, shares = reconstruction_errors(_Zero(), values, np.array([0]), 8, batch_size=4, rule=ErrorRule(combine="max"))
    np.testing.assert_allclose(errors, [9.0])
    np.testing.assert_allclose(shares, [[0.1, 0.9]])
