"""Train: normal windows -> fitted autoencoder and its per-epoch history."""

from __future__ import annotations

import logging
import sys
import time
from dataclasses import dataclass

import keras
import numpy as np
import tensorflow as tf

from pipeline.config import ModelConfig
from pipeline.errors import TrainingFailed
from pipeline.features.windows import gather_windows
from pipeline.model.autoencoder import build_autoencoder, inference_model

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


class WindowFeed:
    """The training feed as a ``tf.data`` pipeline: the windows ``WindowBatches`` yields, in the
    same batches and the same per-epoch order, gathered inside TensorFlow from one copy of the
    scaled values (never a per-window copy in Python) and prefetched while the model trains.

    Each epoch's order is the next shuffle of the start rows from the same seeded generator
    ``WindowBatches`` uses, drawn by ``next_epoch`` (Keras calls it through ``callback()`` as each
    epoch begins) into a variable the pipeline reads. Not ``Dataset.from_generator``: TensorFlow
    keeps every generator it wraps, and what the generator holds, for the life of the process
    (about 13 MB per model), which grows without end when one process fits a fleet's models.
    Input noise, when asked for, is drawn by TensorFlow (the inputs' noise differs from
    ``WindowBatches``'s, the windows do not).
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
        self.values = tf.constant(np.asarray(values, dtype=np.float32))
        self.window_size, self.batch_size = window_size, batch_size
        self.order = np.asarray(starts, dtype=np.int64).copy()
        self.epoch_order = tf.Variable(self.order, trainable=False)
        self.rng = None if shuffle_seed is None else np.random.default_rng(shuffle_seed)
        self.input_noise = float(input_noise)
        self.noise_seed = 0 if shuffle_seed is None else shuffle_seed + 1
        self.centred = None if centred is None or not np.any(centred) else tf.constant(np.asarray(centred, dtype=np.float32))

    def __len__(self) -> int:
        return int(np.ceil(len(self.order) / self.batch_size))

    def next_epoch(self) -> None:
        """The next epoch's window order: a fresh shuffle, when shuffling."""
        if self.rng is not None:
            self.rng.shuffle(self.order)
            self.epoch_order.assign(self.order)

    def callback(self) -> keras.callbacks.Callback:
        """The Keras callback that draws each epoch's order as the epoch begins."""
        return _NextEpoch(self)

    def windows(self, starts: tf.Tensor) -> tf.Tensor:
        """The windows beginning at ``starts``: (len(starts), window_size, n_sensors)."""
        windows = tf.gather(self.values, starts[:, None] + tf.range(self.window_size, dtype=tf.int64))
        if self.centred is not None:  # as gather_windows: centred sensors about their own window mean
            windows = windows - tf.reduce_mean(windows, axis=1, keepdims=True) * self.centred
        return windows

    def dataset(self) -> tf.data.Dataset:
        n, size = len(self.order), self.batch_size

        def pair(batch: tf.Tensor):
            windows = self.windows(self.epoch_order[batch * size : tf.minimum((batch + 1) * size, n)])
            return windows, windows

        pairs = tf.data.Dataset.range(len(self)).map(pair, num_parallel_calls=tf.data.AUTOTUNE)
        if self.input_noise > 0:  # denoising: noisy inputs, clean targets
            noise = tf.random.Generator.from_seed(self.noise_seed)

            def noisy(x, y):
                return x + noise.normal(tf.shape(x), stddev=self.input_noise), y

            pairs = pairs.map(noisy)
        return pairs.prefetch(tf.data.AUTOTUNE)


class _NextEpoch(keras.callbacks.Callback):
    def __init__(self, feed: WindowFeed):
        super().__init__()
        self.feed = feed

    def on_epoch_begin(self, epoch, logs=None):
        self.feed.next_epoch()


class _EpochLog(keras.callbacks.Callback):
    """One log line per epoch, for runs without a terminal (cron, CI)."""

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        log.info(
            "epoch %d: loss %.5f, val_loss %.5f", epoch + 1, logs.get("loss", float("nan")), logs.get("val_loss", float("nan"))
        )


class _Watch(keras.callbacks.Callback):
    """Stops training at the first loss that is NaN or infinite (training or validation) and
    remembers where: ``train_autoencoder`` then fails the run instead of keeping such a model."""

    def __init__(self):
        super().__init__()
        self.epoch = 0
        self.bad: tuple[int, str, float] | None = None  # (1-based epoch, which loss, its value)

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch + 1

    def on_train_batch_end(self, batch, logs=None):
        loss = (logs or {}).get("loss")
        if loss is not None and not np.isfinite(loss) and self.bad is None:
            self.bad = (self.epoch, "loss", float(loss))
            self.model.stop_training = True

    def on_epoch_end(self, epoch, logs=None):
        for key in ("loss", "val_loss"):
            value = (logs or {}).get(key)
            if value is not None and not np.isfinite(value) and self.bad is None:
                self.bad = (epoch + 1, key, float(value))
                self.model.stop_training = True


class _EarlyStopping(keras.callbacks.EarlyStopping):
    """Keras's early stopping on ``val_loss`` with the best epoch's weights restored, which may not
    stop before ``min_epochs`` epochs (every epoch still competes for best, unlike Keras's
    ``start_from_epoch``, which ignores the epochs before it), and, with ``average`` > 1, keeps
    the weights of the last ``average`` epochs and of the ``average`` ending at the best one, so
    that ``averaged_weights`` can take the mean of the latter."""

    def __init__(self, patience: int, min_epochs: int = 0, average: int = 1):
        super().__init__(monitor="val_loss", patience=patience, restore_best_weights=True)
        self.min_epochs, self.average = min_epochs, average
        self.kept: dict[int, list[np.ndarray]] = {}  # 0-based epoch -> its weights (average > 1 only)

    def on_train_begin(self, logs=None):
        super().on_train_begin(logs)
        self.kept = {}

    def on_epoch_end(self, epoch, logs=None):
        stopping = self.model.stop_training  # already stopped by another callback (a NaN loss): leave it so
        super().on_epoch_end(epoch, logs)
        if not stopping and self.model.stop_training and epoch + 1 < self.min_epochs:
            self.model.stop_training, self.stopped_epoch = False, 0
        if self.average > 1:
            self.kept[epoch] = self.model.get_weights()
            window = range(self.best_epoch - self.average + 1, self.best_epoch + 1)  # the best one's
            for old in [e for e in self.kept if e <= epoch - self.average and e not in window]:
                del self.kept[old]  # in neither the best epoch's window nor a later best's

    def averaged_weights(self) -> tuple[list[np.ndarray], int] | None:
        """The mean weights of the ``average`` epochs ending at the best one (those kept), and how
        many epochs that was; ``None`` when averaging is off or only the best epoch is at hand."""
        epochs = [e for e in range(self.best_epoch - self.average + 1, self.best_epoch + 1) if e in self.kept]
        if self.average == 1 or len(epochs) < 2:
            return None
        best = self.kept[self.best_epoch]
        mean = [
            np.mean([self.kept[e][i] for e in epochs], axis=0).astype(w.dtype) if np.issubdtype(w.dtype, np.floating) else w
            for i, w in enumerate(best)  # non-float state (a seed) as in the best epoch
        ]
        return mean, len(epochs)


BASELINE_FACTOR = 2.0  # a validation loss this many times that of an all-zeros reconstruction: diverged

HINT = (
    "lower model.learning_rate (now {rate:g}) or set model.clipnorm (e.g. 1.0); "
    "check for a sensor with huge values or one that is constant in the normal rows"
)


def check_training(
    history: dict[str, list[float]], bad: tuple[int, str, float] | None, config: ModelConfig, baseline: float = np.inf
) -> None:
    """Raise ``TrainingFailed`` (one line: the epoch, the loss, a hint) for a loss that became NaN or
    infinite, or a validation loss that no later epoch improved on its first one's while the
    training loss did not fall either (the optimiser is not learning: a diverging step size), or
    while it is more than ``BASELINE_FACTOR`` times ``baseline`` (the validation loss of rebuilding
    every window as all zeros, i.e. each sensor at its training mean: the model is worse than
    knowing nothing).

    A validation loss that stalls after epoch 1 while the training loss falls, near or below the
    baseline, is logged as a warning only (a short training of a small model on little data does
    that; its validation rows may also be few or unlike the training rows).
    """
    hint = HINT.format(rate=config.learning_rate)
    if bad is not None:
        epoch, key, value = bad
        raise TrainingFailed(f"training failed: {key} became {value} in epoch {epoch}; {hint}")
    val, loss = history.get("val_loss", []), history.get("loss", [])
    if len(val) > 1 and not min(val[1:]) < val[0]:
        stalled = f"validation loss never improved on epoch 1 ({val[0]:.4g}; epochs 2-{len(val)}: {min(val[1:]):.4g} at best)"
        if len(loss) > 1 and not min(loss[1:]) < loss[0]:
            raise TrainingFailed(f"training failed: {stalled}, nor did the training loss ({loss[0]:.4g}); {hint}")
        if not val[0] <= BASELINE_FACTOR * baseline:
            raise TrainingFailed(
                f"training failed: {stalled}, more than {BASELINE_FACTOR:g} times the loss of rebuilding every window "
                f"as the training mean ({baseline:.4g}); {hint}"
            )
        log.warning("%s; the weights of epoch 1 are kept", stalled)


def _zero_loss(values: np.ndarray, starts: np.ndarray, window_size: int, centred: np.ndarray | None) -> float:
    """The mean squared value of the windows: the loss of a model that rebuilds them as zeros."""
    total, count = 0.0, 0
    for lo in range(0, len(starts), 4096):
        windows = gather_windows(values, starts[lo : lo + 4096], window_size, centred)
        total += float(np.square(windows, dtype=np.float64).sum())
        count += windows.size
    return total / max(count, 1)


@dataclass
class TrainedModel:
    model: keras.Model  # the chain that is saved and scored (for a VAE, its mean path)
    history: dict[str, list[float]]  # per-epoch 'loss' and 'val_loss'
    best_epoch: int  # 1-based epoch whose weights were kept
    windows_per_second: float = 0.0  # training windows fitted per second of model.fit, validation included
    batch_size: int = 0  # windows per gradient step (``training_batch_size``)


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

    Raises:
        TrainingFailed: a loss became NaN or infinite, or validation loss never improved on its
            first epoch (``check_training``).
    """
    batch_size = training_batch_size(len(train_starts), config)
    steps = int(np.ceil(len(train_starts) / batch_size))
    if batch_size < config.batch_size:
        log.info(
            "%d training windows: batches of %d, %d steps an epoch (model.min_steps_per_epoch)",
            len(train_starts),
            batch_size,
            steps,
        )
    min_epochs = -(-config.min_train_steps // steps)  # whole epochs holding min_train_steps steps
    if min_epochs > config.epochs:
        log.info("model.min_train_steps %d: at least %d epochs of %d steps", config.min_train_steps, min_epochs, steps)
        config = config.model_copy(update={"epochs": min_epochs})
    model = build_autoencoder(config, window_size, values.shape[1], steps_per_epoch=steps)
    train = WindowFeed(
        values,
        train_starts,
        window_size,
        batch_size,
        shuffle_seed=config.seed,
        input_noise=config.input_noise,
        centred=centred,
    )
    validation = WindowFeed(values, validation_starts, window_size, config.batch_size, centred=centred)
    stop = _EarlyStopping(config.patience, min_epochs, config.average_epochs)
    watch = _Watch()
    callbacks = [train.callback(), watch, stop]
    if config.lr_schedule == "plateau":
        callbacks.append(keras.callbacks.ReduceLROnPlateau(monitor="val_loss", factor=0.5, patience=max(1, config.patience // 2)))
    interactive = sys.stderr.isatty()
    started = time.perf_counter()
    fitted = model.fit(
        train.dataset(),
        validation_data=validation.dataset(),
        shuffle=False,  # the feed shuffles, the same way every run
        epochs=config.epochs,
        callbacks=callbacks if interactive else [*callbacks, _EpochLog()],
        verbose=1 if interactive else 0,
    )
    history = {key: [float(v) for v in values_] for key, values_ in fitted.history.items() if key != "learning_rate"}
    check_training(history, watch.bad, config, _zero_loss(values, validation_starts, window_size, centred))
    best_epoch = int(np.argmin(history["val_loss"])) + 1
    averaged = stop.averaged_weights()
    if averaged is not None:
        model.set_weights(averaged[0])
        log.info("kept the mean weights of epochs %d-%d (model.average_epochs)", best_epoch - averaged[1] + 1, best_epoch)
    rate = len(train_starts) * len(history["loss"]) / max(time.perf_counter() - started, 1e-9)
    return TrainedModel(inference_model(model, config), history, best_epoch, rate, batch_size)


def training_batch_size(n_windows: int, config: ModelConfig) -> int:
    """``model.batch_size``, or smaller when the training windows are too few for
    ``model.min_steps_per_epoch`` steps per epoch at that size (at least 1)."""
    return max(1, min(config.batch_size, n_windows // config.min_steps_per_epoch))
