"""The NumPy runtime of saved autoencoders reproduces Keras without importing it."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import keras
import numpy as np
import pytest
from keras import layers

from pipeline.config import ModelConfig
from pipeline.model.autoencoder import build_autoencoder
from pipeline.model.numpy_twin import NumpyAutoencoder, UnsupportedModel

ROOT = Path(__file__).resolve().parents[1]


def _randomize_biases(model: keras.Model, seed: int = 0) -> None:
    """Non-zero biases (freshly built layers have zero ones), kernels as initialised."""
    rng = np.random.default_rng(seed)
    for weight in model.weights:
        if weight.path.endswith("bias"):
            weight.assign(rng.normal(0.0, 0.3, weight.shape).astype("float32"))


def _save(model: keras.Model, path: Path) -> Path:
    model.save(path)
    return path


def _assert_matches(model: keras.Model, path: Path, batch: int = 37, seed: int = 1) -> NumpyAutoencoder:
    numpy_model = NumpyAutoencoder.from_keras_file(path)
    windows = np.random.default_rng(seed).normal(size=(batch, *model.input_shape[1:])).astype("float32")
    expected = np.asarray(model.predict_on_batch(windows))
    got = numpy_model.predict_on_batch(windows)
    assert got.dtype == np.float32 and got.shape == expected.shape
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)
    return numpy_model


CONV_CASES = [  # window, filters, kernel, sensors
    (8, [8], 3, 1),
    (10, [8, 4], 5, 8),
    (30, [8, 4], 3, 8),
    (30, [32, 16], 5, 1),
    (32, [32, 16], 5, 8),
    (32, [8], 5, 8),
    (10, [32, 16], 3, 1),
]


@pytest.mark.parametrize(("window", "filters", "kernel", "sensors"), CONV_CASES)
def test_conv_autoencoder_matches_keras(tmp_path, window, filters, kernel, sensors):
    model = build_autoencoder(ModelConfig(filters=filters, kernel_size=kernel, latent_dim=6), window, sensors)
    _randomize_biases(model)
    numpy_model = _assert_matches(model, _save(model, tmp_path / "m.keras"))
    assert numpy_model.input_shape == (window, sensors)


def test_trained_conv_autoencoder_matches_keras_across_chunks(tmp_path):
    model = build_autoencoder(ModelConfig(filters=[8, 4], kernel_size=3, latent_dim=4), 10, 3)
    data = np.random.default_rng(2).normal(size=(256, 10, 3)).astype("float32")
    model.fit(data, data, epochs=1, batch_size=64, verbose=0)
    numpy_model = _assert_matches(model, _save(model, tmp_path / "m.keras"), batch=700)
    assert numpy_model.predict_on_batch(np.zeros((0, 10, 3), np.float32)).shape == (0, 10, 3)
    with pytest.raises(ValueError, match="expected inputs"):
        numpy_model.predict_on_batch(np.zeros((2, 11, 3), np.float32))


@pytest.mark.parametrize("window", [7, 16])
def test_dense_autoencoder_matches_keras(tmp_path, window):
    config = ModelConfig(architecture="dense", units=[24, 12], latent_dim=5)
    model = build_autoencoder(config, window, 4)
    _randomize_biases(model)
    _assert_matches(model, _save(model, tmp_path / "m.keras"))


def _chain(window: int, sensors: int, *stack) -> keras.Model:
    keras.utils.set_random_seed(0)
    inputs = keras.Input(shape=(window, sensors))
    x = inputs
    for layer in stack:
        x = layer(x)
    model = keras.Model(inputs, x)
    _randomize_biases(model)
    return model


def test_other_conv_geometries_match_keras(tmp_path):
    """valid padding, strides 1 and 3, even and short kernels, no bias, symmetric cropping."""
    model = _chain(
        23,
        3,
        layers.Conv1D(6, 4, strides=3, padding="same", activation="relu"),
        layers.Conv1D(5, 2, strides=1, padding="valid", use_bias=False),
        layers.Conv1DTranspose(4, 4, strides=3, padding="same", activation="relu"),
        layers.Conv1DTranspose(7, 2, strides=3, padding="valid"),
        layers.Cropping1D((2, 1)),
        layers.Conv1DTranspose(3, 1, strides=2, padding="same", use_bias=False),
        layers.Conv1D(2, 3, strides=2, padding="valid", activation="relu"),
        layers.Conv1D(1, 3, padding="same"),
        layers.Flatten(),
        layers.Dense(6, activation="relu"),
        layers.Reshape((3, -1)),
    )
    _assert_matches(model, _save(model, tmp_path / "m.keras"))


def test_sequential_model_matches_keras(tmp_path):
    model = keras.Sequential(
        [
            keras.Input(shape=(12, 2)),
            layers.Conv1D(4, 3, strides=2, padding="same", activation="relu"),
            layers.Flatten(),
            layers.Dense(24),
            layers.Reshape((12, 2)),
        ]
    )
    _randomize_biases(model)
    _assert_matches(model, _save(model, tmp_path / "m.keras"))


@pytest.mark.parametrize(
    ("stack", "match"),
    [
        ([layers.Flatten(), layers.Dropout(0.1, name="drop"), layers.Dense(8)], r"'drop'.*class_name='Dropout'"),
        ([layers.GRU(4, name="gru")], r"'gru'.*class_name='GRU'"),
        ([layers.LSTM(4, go_backwards=True, name="lstm")], r"'lstm'.*go_backwards=True"),  # LSTM itself is supported
        ([layers.Flatten(), layers.Dense(8, activation="tanh", name="squash")], r"'squash'.*activation='tanh'"),
        ([layers.Conv1D(4, 3, dilation_rate=2, padding="same", name="wide")], r"'wide'.*dilation_rate=2"),
        ([layers.Conv1D(4, 3, padding="causal", name="causal")], r"'causal'.*padding='causal'"),
        ([layers.Conv1D(4, 3, data_format="channels_first", name="cf")], r"'cf'.*data_format='channels_first'"),
    ],
)
def test_unsupported_layers_are_named(tmp_path, stack, match):
    model = _chain(8, 4, *stack)
    with pytest.raises(UnsupportedModel, match=match):
        NumpyAutoencoder.from_keras_file(_save(model, tmp_path / "m.keras"))


def test_branching_model_is_unsupported(tmp_path):
    inputs = keras.Input(shape=(8, 2))
    left = layers.Dense(2, name="left")(inputs)
    right = layers.Dense(2, name="right")(inputs)
    model = keras.Model(inputs, [left, right])
    with pytest.raises(UnsupportedModel, match="right"):
        NumpyAutoencoder.from_keras_file(_save(model, tmp_path / "m.keras"))


def test_runs_without_importing_tensorflow_or_keras(tmp_path):
    model = build_autoencoder(ModelConfig(filters=[8, 4], kernel_size=3, latent_dim=4), 10, 2)
    _randomize_biases(model)
    path = _save(model, tmp_path / "m.keras")
    windows = np.random.default_rng(3).normal(size=(5, 10, 2)).astype("float32")
    np.save(tmp_path / "windows.npy", windows)
    np.save(tmp_path / "expected.npy", np.asarray(model.predict_on_batch(windows)))
    script = textwrap.dedent(
        f"""
        import sys
        import numpy as np
        import pipeline.model.numpy_twin
        model = pipeline.model.numpy_twin.NumpyAutoencoder.from_keras_file({str(path)!r})
        got = model.predict_on_batch(np.load({str(tmp_path / "windows.npy")!r}))
        np.testing.assert_allclose(got, np.load({str(tmp_path / "expected.npy")!r}), rtol=1e-4, atol=1e-5)
        loaded = sorted(m for m in sys.modules if m.split('.')[0] in ('tensorflow', 'keras', 'tf_keras', 'jax', 'torch'))
        assert not loaded, loaded
        """
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    result = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
