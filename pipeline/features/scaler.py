"""The scaler: per-sensor standardisation learned on normal training rows only, and which
sensors wander (are judged by shape, not level)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

TRANSFORM_BLOCK_ROWS = 1 << 16


@dataclass(frozen=True)
class Scaler:
    """Per-sensor standardisation learned on normal training rows.

    A sensor that was constant in training keeps scale 1.0 (no division by zero) and is listed
    in ``constant``: any later movement shows as error in its own units.
    """

    sensors: list[str]
    mean: list[float]
    scale: list[float]
    constant: list[str]
    centred: list[str] = field(default_factory=list)  # wandering sensors: each window centred on its own mean

    @property
    def centred_mask(self) -> np.ndarray | None:
        """Which columns ``gather_windows`` centres, or ``None`` when none are."""
        return np.isin(self.sensors, self.centred) if self.centred else None

    def transform(self, values: np.ndarray) -> np.ndarray:
        """(n_rows, n_sensors) raw values -> float32 standardised values.

        Computed in float64 a block of rows at a time, so the float64 temporaries stay small
        for long series.
        """
        mean, scale = np.asarray(self.mean), np.asarray(self.scale)
        out = np.empty(values.shape, dtype=np.float32)
        for lo in range(0, len(values), TRANSFORM_BLOCK_ROWS):
            block = slice(lo, lo + TRANSFORM_BLOCK_ROWS)
            out[block] = (values[block] - mean) / scale
        return out

    def transform_frame(self, frame: pd.DataFrame) -> np.ndarray:
        """The ``sensors`` columns of a frame -> float32 standardised values, (n_rows, n_sensors).

        Same values as ``transform(frame[sensors].to_numpy(float64))`` without the float64 copy
        of the whole table: one column at a time.
        """
        out = np.empty((len(frame), len(self.sensors)), dtype=np.float32)
        for i, (sensor, mean, scale) in enumerate(zip(self.sensors, self.mean, self.scale)):
            out[:, i] = (frame[sensor].to_numpy(dtype=np.float64) - mean) / scale
        return out

    def to_dict(self) -> dict:
        return {
            "sensors": self.sensors,
            "mean": self.mean,
            "scale": self.scale,
            "constant": self.constant,
            "centred": self.centred,
        }

    @classmethod
    def from_dict(cls, data: dict) -> Scaler:
        return cls(**data)


def fit_scaler(values: np.ndarray, sensors: list[str]) -> Scaler:
    """Fit on (n_rows, n_sensors) normal training values only."""
    from sklearn.preprocessing import StandardScaler  # fit time only: scoring never imports scikit-learn

    fitted = StandardScaler().fit(values)
    spread = np.sqrt(fitted.var_)
    constant = [s for s, sd, m in zip(sensors, spread, fitted.mean_) if sd <= 1e-9 * max(1.0, abs(m))]
    scale = [1.0 if s in constant else float(v) for s, v in zip(sensors, fitted.scale_)]
    return Scaler(sensors=list(sensors), mean=[float(m) for m in fitted.mean_], scale=scale, constant=constant)


WANDER_BLOCKS = 8


def wandering_sensors(values: np.ndarray, sensors: list[str], ratio: float) -> list[str]:
    """Sensors whose level moved between parts of the training rows more than it varies within one.

    The rows (in time order) are cut into ``WANDER_BLOCKS`` equal blocks; a sensor wanders when
    its spread over all rows exceeds ``ratio`` times its mean spread within a block. A sensor
    that warms for the whole training period wanders, and its later levels are new ones; a
    sensor whose daily cycle repeats within each block does not, its levels recur.
    """
    size = len(values) // WANDER_BLOCKS
    if ratio <= 0 or size < 2:
        return []
    blocks = values[: size * WANDER_BLOCKS].reshape(WANDER_BLOCKS, size, -1)
    within = blocks.std(axis=1).mean(axis=0)
    overall = values[: size * WANDER_BLOCKS].std(axis=0)
    return [s for s, o, w in zip(sensors, overall, within) if o > ratio * max(float(w), 1e-12)]
