"""What else the autoencoder gives besides the score: each row's latent code and its
reconstructed (denoised) values, and the VAE's negative log-likelihood score.

Every output of a row comes from the window of ``window_size`` rows ending at that row, as its
score does (causal: nothing after the row is used), so a row has a code and a reconstruction
exactly when it has a score.

* **Code** (``encode``): the output of the model's ``latent`` layer for that window (for a VAE,
  the mean of the latent distribution).
* **Reconstruction** (``reconstruct``): the reconstructed window's *last* row, in the sensor's
  original units (scaled back; a centred sensor gets its window's measured mean added back,
  since the model saw it centred). The last row is the only estimate that is causal, like the
  score: the mean over every window holding the row would average up to ``window_size``
  estimates but needs the ``window_size - 1`` rows after it, so a row's value would change
  as data arrive. ``benchmark denoise`` measures both; ``reconstruct --estimate mean`` writes the
  mean (offline use).
* **VAE NLL** (``model.vae_score: nll``): ``pipeline.detector.sampled``.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from pipeline.detector.sampled import halves
from pipeline.features.windows import gather_windows, segment_ids, window_starts

if TYPE_CHECKING:
    from pipeline.detector.bundle import ModelBundle


def _windows(
    bundle: ModelBundle, table: pd.DataFrame, batch_size: int | None
) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray | None]]:
    """(row of each window's last row, the windows as the model sees them, the centred sensors'
    window means before centring or None) of a validated table, a batch at a time in time order."""
    values = bundle.scaler.transform_frame(table)
    window = bundle.window_size
    centred = bundle.scaler.centred_mask
    starts = window_starts(segment_ids(table["timestamp"], bundle.max_gap_seconds), window, stride=1)
    size = batch_size or bundle.config.scoring.batch_size
    for lo in range(0, len(starts), size):
        batch = starts[lo : lo + size]
        windows = gather_windows(values, batch, window)
        means = None
        if centred is not None:  # as gather_windows centres them, keeping the level it took away
            means = windows.mean(axis=1)
            windows[:, :, centred] -= means[:, None, centred]
        yield batch + (window - 1), windows, means


def code_batches(
    bundle: ModelBundle, table: pd.DataFrame, batch_size: int | None = None
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(row indices into ``table``, latent codes (n, latent_dim)) for every row with a full window."""
    model = halves(bundle.model)
    for ends, windows, _ in _windows(bundle, table, batch_size):
        yield ends, model.encode(windows)


ESTIMATES = ("last", "mean")  # of a row's reconstructed value (module docstring)


def reconstruction_batches(
    bundle: ModelBundle, table: pd.DataFrame, batch_size: int | None = None, estimate: str = "last"
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(row indices into ``table``, reconstructed values (n, n_sensors) in original units) for every
    row with a full window, in time order.

    ``estimate="last"`` (default, causal): the last row of the reconstruction of the window ending
    at the row. ``"mean"``: the mean over every window holding the row (it uses the
    ``window_size - 1`` rows after it); kept a batch at a time, a row is given once no later window
    can hold it.
    """
    if estimate not in ESTIMATES:
        raise ValueError(f"estimate {estimate!r}: expected one of {', '.join(ESTIMATES)}")
    scale, mean = np.asarray(bundle.scaler.scale), np.asarray(bundle.scaler.mean)
    centred = bundle.scaler.centred_mask
    if estimate == "mean":
        for ends, values in _mean_of_windows(bundle, table, batch_size):
            yield ends, values * scale + mean
        return
    for ends, windows, means in _windows(bundle, table, batch_size):
        last = np.asarray(bundle.model.predict_on_batch(windows))[:, -1, :].astype(np.float64)
        if means is not None:  # the model saw these centred: their level is the window's measured mean
            last[:, centred] += means[:, centred]
        yield ends, last * scale + mean


def _mean_of_windows(bundle: ModelBundle, table: pd.DataFrame, batch_size: int | None) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Scaled mean reconstruction over every window holding each window-end row, in time order.

    Sums and counts are kept only for the rows a later window may still cover: from the first
    row of the oldest end not yet given to the last row seen.
    """
    window = bundle.window_size
    centred = bundle.scaler.centred_mask
    base, total, count = 0, None, None  # accumulators of rows base .. base + len(count) - 1
    waiting = np.empty(0, dtype=np.int64)  # window ends seen, not yet given
    for ends, windows, means in _windows(bundle, table, batch_size):
        starts = ends - (window - 1)
        if total is not None:  # rows before this batch's first start are final
            ready = waiting[waiting < starts[0]]
            if ready.size:
                yield ready, total[ready - base] / count[ready - base, None]
            waiting = waiting[waiting >= starts[0]]
            keep = int(min(starts[0], waiting[0] if waiting.size else starts[0])) - base
            base, total, count = base + keep, total[keep:], count[keep:]
        rebuilt = np.asarray(bundle.model.predict_on_batch(windows), dtype=np.float64)
        if means is not None:
            rebuilt[:, :, centred] += means[:, None, centred]
        if total is None:
            base, total, count = int(starts[0]), np.zeros((0, rebuilt.shape[2])), np.zeros(0, dtype=np.int64)
        grow = int(ends[-1]) + 1 - base - len(count)
        if grow > 0:
            total = np.concatenate([total, np.zeros((grow, total.shape[1]))])
            count = np.concatenate([count, np.zeros(grow, dtype=np.int64)])
        for offset in range(window):  # for one offset the rows are distinct: plain fancy-index adds
            rows = starts + offset - base
            total[rows] += rebuilt[:, offset]
            count[rows] += 1
        waiting = np.concatenate([waiting, ends])
    if total is not None and waiting.size:
        yield waiting, total[waiting - base] / count[waiting - base, None]


QUALITY_MAX_WINDOWS = 20_000  # held-out windows the per-sensor reconstruction quality is measured on, at most


def reconstruction_quality(
    model: Any, values: np.ndarray, starts: np.ndarray, window: int, sensors: list[str], scale: list[float], centred=None
) -> list[dict[str, Any]]:
    """How well the model rebuilds each sensor on held-out windows (at most ``QUALITY_MAX_WINDOWS``,
    evenly spread): its RMSE in original units and in scaled units, and the share of its variance
    over those windows (as the model sees them: centred sensors centred) that it explains,
    1 - MSE / variance (1 = perfect, 0 = no better than the windows' mean, below 0 = worse).
    """
    if starts.size > QUALITY_MAX_WINDOWS:
        starts = starts[np.unique(np.linspace(0, starts.size - 1, QUALITY_MAX_WINDOWS).round().astype(np.int64))]
    n = len(sensors)
    squared, total, total_sq, count = np.zeros(n), np.zeros(n), np.zeros(n), 0
    for lo in range(0, len(starts), 4096):
        windows = gather_windows(values, starts[lo : lo + 4096], window, centred)
        rebuilt = np.asarray(model.predict_on_batch(windows), dtype=np.float64)
        squared += np.square(windows - rebuilt).sum(axis=(0, 1))
        total += windows.sum(axis=(0, 1), dtype=np.float64)
        total_sq += np.square(windows, dtype=np.float64).sum(axis=(0, 1))
        count += windows.shape[0] * windows.shape[1]
    count = max(count, 1)
    mse = squared / count
    variance = np.maximum(total_sq / count - np.square(total / count), 0.0)
    explained = np.where(variance > 1e-12, 1.0 - mse / np.where(variance > 1e-12, variance, 1.0), np.nan)
    return [
        {
            "sensor": sensor,
            "rmse": float(np.sqrt(mse[i]) * scale[i]),
            "rmse_scaled": float(np.sqrt(mse[i])),
            "variance_explained": float(explained[i]),
        }
        for i, sensor in enumerate(sensors)
    ]
