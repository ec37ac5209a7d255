"""Sliding windows over the scaled sensor values.

Windows are never materialised all at once. A set of windows is described by the array of
their start rows (``window_starts``); ``window_view`` is a strided, read-only view of every
window over the scaled values (no copy), and ``gather_windows`` copies out one batch of it.
A window never crosses a gap in time longer than ``max_gap_seconds`` (a new segment starts
there), so a row's window always holds ``window_size`` consecutive readings of one stretch.
"""

from __future__ import annotations

import numpy as np
import pandas as pd


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
