"""Features: scaled sensor values and sliding windows over them.

Windows are never materialised all at once. A set of windows is described by the array of
their start rows (``window_starts``); ``window_view`` is a strided, read-only view of every
window over the scaled values (no copy), and ``gather_windows`` copies out one batch of it.
A window never crosses a gap in time longer than ``max_gap_seconds`` (a new segment starts
there), so a row's window always holds ``window_size`` consecutive readings of one stretch.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from sklearn.preprocessing import StandardScaler

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
        return {"sensors": self.sensors, "mean": self.mean, "scale": self.scale, "constant": self.constant, "centred": self.centred}

    @classmethod
    def from_dict(cls, data: dict) -> Scaler:
        return cls(**data)


def fit_scaler(values: np.ndarray, sensors: list[str]) -> Scaler:
    """Fit on (n_rows, n_sensors) normal training values only."""
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


def count_windows(n_rows: int, window_size: int, stride: int = 1) -> int:
    """Number of full windows in a run of ``n_rows`` rows."""
    return 0 if n_rows < window_size else (n_rows - window_size) // stride + 1


def segment_ids(timestamps: pd.Series, max_gap_seconds: float) -> np.ndarray:
    """Segment number per row: a new segment starts after each gap longer than ``max_gap_seconds``."""
    steps = timestamps.diff().dt.total_seconds().to_numpy()
    breaks = np.nan_to_num(steps, nan=0.0) > max_gap_seconds
    return np.cumsum(breaks)


def window_starts(segments: np.ndarray, window_size: int, stride: int = 1) -> np.ndarray:
    """Start rows of all full windows that stay inside one segment, ``stride`` apart per segment.

    Args:
        segments: segment number per row, non-decreasing, shape (n_rows,).
    """
    if segments.size == 0:
        return np.empty(0, dtype=np.int64)
    edges = np.flatnonzero(np.diff(segments)) + 1
    bounds = zip(np.concatenate([[0], edges]), np.concatenate([edges, [segments.size]]))
    starts = [np.arange(lo, hi - window_size + 1, stride) for lo, hi in bounds if hi - lo >= window_size]
    return np.concatenate(starts).astype(np.int64) if starts else np.empty(0, dtype=np.int64)


def window_view(values: np.ndarray, window_size: int) -> np.ndarray:
    """Every window of ``values`` as a read-only strided view (no copy).

    Args:
        values: shape (n_rows, n_sensors).

    Returns:
        shape (n_rows - window_size + 1, window_size, n_sensors); element ``[s]`` is the window
        beginning at row ``s``.
    """
    return np.lib.stride_tricks.sliding_window_view(values, window_size, axis=0).transpose(0, 2, 1)


def gather_windows(values: np.ndarray, starts: np.ndarray, window_size: int, centred: np.ndarray | None = None) -> np.ndarray:
    """Copy out the windows beginning at ``starts``: shape (len(starts), window_size, n_sensors).

    Args:
        centred: boolean mask of the sensors whose every window is centred on its own mean
            (``Scaler.centred_mask``); ``None`` leaves all as they are.
    """
    if starts.size and starts[-1] - starts[0] == starts.size - 1 and np.all(np.diff(starts) == 1):
        windows = np.array(window_view(values, window_size)[starts[0] : starts[-1] + 1], order="C")
    else:
        windows = window_view(values, window_size)[starts]
    if centred is not None and centred.any():
        windows[:, :, centred] -= windows[:, :, centred].mean(axis=1, keepdims=True)
    return windows
