"""The measured-and-not-adopted rules on hand-computed cases: Mahalanobis with a known covariance,
the dynamic threshold on a known series."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.detector.alternatives import dynamic_threshold, fit_residual_precision, mahalanobis_error, prune
from pipeline.detector.window_error import residual_energy


def test_mahalanobis_with_a_known_covariance():
    precision = np.linalg.inv(np.array([[1.0, 0.5], [0.5, 1.0]]))  # = [[4, -2], [-2, 4]] / 3
    together = np.array([[[1.0, 1.0]]])  # one window of one row: both sensors up, as they usually move
    against = np.array([[[1.0, -1.0]]])
    assert mahalanobis_error(together, precision, 0.0) == pytest.approx([4 / 3])  # (4 - 2 - 2 + 4) / 3
    assert mahalanobis_error(against, precision, 0.0) == pytest.approx([4.0])  # (4 + 2 + 2 + 4) / 3
    # Window of two rows, offset weight 3: mean over rows of r'Pr, plus 3 m'Pm for the mean residual m = (1, 0).
    window = np.array([[[1.0, 1.0], [1.0, -1.0]]])
    assert mahalanobis_error(window, precision, 3.0) == pytest.approx([(4 / 3 + 4) / 2 + 3 * 4 / 3])


def test_mahalanobis_with_a_diagonal_precision_is_the_variance_scaled_energy():
    rng = np.random.default_rng(0)
    residual = rng.normal(size=(5, 8, 3))
    variance = np.array([1.0, 4.0, 0.25])
    energy = residual_energy(residual, np.zeros_like(residual), offset_weight=2.0)  # (5, 3)
    expected = (energy / variance).sum(axis=1) / 8
    np.testing.assert_allclose(mahalanobis_error(residual, np.diag(1 / variance), 2.0), expected)


def test_ledoit_wolf_precision_recovers_a_known_covariance():
    covariance = np.array([[2.0, 0.8], [0.8, 1.0]])
    rows = np.random.default_rng(1).multivariate_normal([0, 0], covariance, size=20000)
    np.testing.assert_allclose(fit_residual_precision(rows), np.linalg.inv(covariance), rtol=0.05)


def test_dynamic_threshold_on_a_known_series():
    series = np.r_[np.ones(20), np.full(3, 10.0), np.ones(20)]
    mean, std = series.mean(), series.std()  # 1.628, 2.293
    # z = 2.5, 3 and 3.5 all put the threshold between 1 and 10 and flag the same 3 rows in one
    # sequence (the same criterion); the smallest wins. Above z = 3.65 nothing is flagged.
    returned = dynamic_threshold(series)
    assert returned == pytest.approx(mean + 2.5 * std)
    assert np.flatnonzero(series > returned).tolist() == [20, 21, 22]
    assert dynamic_threshold(np.ones(10)) == pytest.approx(1.0)  # no spread: mean + z * 0


def test_pruning_drops_sequences_whose_peaks_are_close_to_normal_errors():
    e = np.array([1.0, 5.0, 1.0, 1.1, 1.0, 1.0])
    flags = np.array([0, 1, 0, 1, 0, 0], dtype=bool)  # peaks 5.0 and 1.1; the largest unflagged error is 1.0
    # 5.0 -> 1.1 drops 78 %: kept; 1.1 -> 1.0 drops 9 % (< 13 %): pruned.
    np.testing.assert_array_equal(prune(e, flags), [0, 1, 0, 0, 0, 0])
