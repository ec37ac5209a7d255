"""Early stopping's minimum of gradient steps and the averaging of the last epochs' weights, with
real Keras training on tiny data."""

import keras
import numpy as np

from pipeline.config import ModelConfig
from pipeline.model.training import _EarlyStopping, train_autoencoder


def _tiny_model(learning_rate: float) -> keras.Model:
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2), keras.layers.Dense(3)])
    model.compile(optimizer=keras.optimizers.SGD(learning_rate), loss="mse")
    return model


class _Record(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.weights: list[list[np.ndarray]] = []

    def on_epoch_end(self, epoch, logs=None):
        self.weights.append(self.model.get_weights())


def _fit(model: keras.Model, stop: _EarlyStopping, epochs: int, record: _Record | None = None):
    x = np.random.default_rng(1).normal(size=(64, 3)).astype("float32")
    callbacks = [stop] if record is None else [record, stop]
    return model.fit(x, x, validation_data=(x[:16], x[:16]), batch_size=16, epochs=epochs, callbacks=callbacks, verbose=0)


def test_early_stopping_waits_for_the_minimum_and_stops_right_after_it():
    # A learning rate of 0: the validation loss never improves on epoch 1.
    plain = _fit(_tiny_model(0.0), _EarlyStopping(patience=2), epochs=20)
    assert len(plain.history["loss"]) == 3  # Keras's rule: epoch 1, then 2 epochs without a better one
    held = _fit(_tiny_model(0.0), _EarlyStopping(patience=2, min_epochs=7), epochs=20)
    assert len(held.history["loss"]) == 7  # not before epoch 7, and there at once (patience long exceeded)


def test_average_epochs_keeps_the_mean_weights_of_the_epochs_ending_at_the_best():
    model, record = _tiny_model(0.05), _Record()
    stop = _EarlyStopping(patience=20, average=3)
    fitted = _fit(model, stop, epochs=8, record=record)
    best = int(np.argmin(fitted.history["val_loss"]))
    assert best >= 2  # learning: the window of three epochs ending at the best exists
    mean, count = stop.averaged_weights()
    assert count == 3
    expected = [np.mean([record.weights[e][i] for e in range(best - 2, best + 1)], axis=0) for i in range(4)]
    for got, want in zip(mean, expected):
        np.testing.assert_allclose(got, want, rtol=1e-6)
    assert not all(np.allclose(got, single) for got, single in zip(mean, record.weights[best]))
    assert set(stop.kept) == set(range(best - 2, best + 1)) | {5, 6, 7}  # the best's window and the last three only


def test_min_train_steps_raises_the_epochs_and_average_epochs_changes_the_kept_model():
    values = np.random.default_rng(0).normal(size=(400, 2)).astype("float32")
    base = ModelConfig(filters=[4], latent_dim=2, epochs=1, batch_size=100, patience=1, seed=0)
    config = base.model_copy(update={"min_train_steps": 7})  # 300 windows in batches of 100: 3 steps an epoch
    train, validation = np.arange(0, 300), np.arange(310, 390)
    trained = train_autoencoder(values, train, validation, 8, config)
    assert len(trained.history["loss"]) == 3  # ceil(7 / 3) epochs, though model.epochs is 1
    averaged = train_autoencoder(values, train, validation, 8, config.model_copy(update={"average_epochs": 3}))
    assert averaged.history == trained.history  # the same training ...
    windows = np.stack([values[s : s + 8] for s in validation])
    rebuilt = averaged.model.predict(windows, verbose=0)
    assert not np.allclose(rebuilt, trained.model.predict(windows, verbose=0))  # ... another model
