"""Train: normal windows -> fitted autoencoder and its per-epoch history."""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass

import keras
import numpy as np

from pipeline.config import ModelConfig
from pipeline.features.windows import gather_windows
from pipeline.model.autoencoder import build_autoencoder

log = logging.getLogger(__name__)


class WindowBatches(keras.utils.PyDataset):
    """Batches of (window, window) pairs copied out of a scaled array, one batch at a time.

    Args:
        values: scaled sensor values, shape (n_rows, n_sensors).
        starts: start row of each window.
        shuffle_seed: reshuffle the windows every epoch with this seed; ``None`` keeps order.
    """

    def __init__(
        self,
        values: np.ndarray,
        starts: np.ndarray,
        window_size: int,
        batch_size: int,
        shuffle_seed: int | None = None,
        input_noise: float = 0.0,
        centred: np.ndarray | None = None,
    ):
        super().__init__()
        self.values, self.window_size, self.batch_size = values, window_size, batch_size
        self.order = starts.copy()
        self.rng = None if shuffle_seed is None else np.random.default_rng(shuffle_seed)
        self.input_noise = input_noise
        self.centred = centred
        self.noise_rng = np.random.default_rng(None if shuffle_seed is None else shuffle_seed + 1)
        self.on_epoch_end()

    def __len__(self) -> int:
        return int(np.ceil(len(self.order) / self.batch_size))

    def __getitem__(self, index: int):
        starts = self.order[index * self.batch_size : (index + 1) * self.batch_size]
        windows = gather_windows(self.values, starts, self.window_size, self.centred)
        if self.input_noise > 0:  # denoising: noisy inputs, clean targets
            noisy = windows + self.noise_rng.normal(0.0, self.input_noise, windows.shape).astype(windows.dtype)
            return noisy, windows
        return windows, windows

    def on_epoch_end(self) -> None:
        if self.rng is not None:
            self.rng.shuffle(self.order)


class _EpochLog(keras.callbacks.Callback):
    """One log line per epoch, for runs without a terminal (cron, CI)."""

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        log.info(
            "epoch %d: loss %.5f, val_loss %.5f", epoch + 1, logs.get("loss", float("nan")), logs.get("val_loss", float("nan"))
        )


@dataclass
class TrainedModel:
    model: keras.Model
    history: dict[str, list[float]]  # per-epoch 'loss' and 'val_loss'
    best_epoch: int  # 1-based epoch whose weights were kept


def train_autoencoder(
    values: np.ndarray,
    train_starts: np.ndarray,
    validation_starts: np.ndarray,
    window_size: int,
    config: ModelConfig,
    centred: np.ndarray | None = None,
) -> TrainedModel:
    """Fit an autoencoder on normal windows, stopping early on the validation windows' loss.

    Args:
        values: scaled sensor values, shape (n_rows, n_sensors).
        train_starts: start rows of the training windows.
        validation_starts: start rows of the early-stopping windows (disjoint rows).
        centred: sensors whose windows are centred on their own mean (``Scaler.centred_mask``).
    """
    model = build_autoencoder(config, window_size, values.shape[1])
    train = WindowBatches(
        values,
        train_starts,
        window_size,
        config.batch_size,
        shuffle_seed=config.seed,
        input_noise=config.input_noise,
        centred=centred,
    )
    validation = WindowBatches(values, validation_starts, window_size, config.batch_size, centred=centred)
    stop = keras.callbacks.EarlyStopping(monitor="val_loss", patience=config.patience, restore_best_weights=True)
    interactive = sys.stderr.isatty()
    fitted = model.fit(
        train,
        validation_data=validation,
        epochs=config.epochs,
        callbacks=[stop] if interactive else [stop, _EpochLog()],
        verbose=1 if interactive else 0,
    )
    history = {key: [float(v) for v in values_] for key, values_ in fitted.history.items()}
    best_epoch = int(np.argmin(history["val_loss"])) + 1
    return TrainedModel(model=model, history=history, best_epoch=best_epoch)
