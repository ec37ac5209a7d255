"""The Keras 3 autoencoders: a 1-D convolutional one (default) and a dense one."""

from __future__ import annotations

import math

import keras
from keras import layers

from pipeline.config import ModelConfig


def build_autoencoder(config: ModelConfig, window_size: int, n_sensors: int) -> keras.Model:
    """An autoencoder mapping windows (window_size, n_sensors) to their reconstruction."""
    keras.utils.set_random_seed(config.seed)
    inputs = keras.Input(shape=(window_size, n_sensors), name="window")
    if config.architecture == "conv":
        outputs = _conv(inputs, config, window_size, n_sensors)
    else:
        outputs = _dense(inputs, config, window_size, n_sensors)
    model = keras.Model(inputs, outputs, name=f"{config.architecture}_autoencoder")
    model.compile(optimizer=keras.optimizers.Adam(config.learning_rate), loss="mse")
    return model


def _conv(inputs, config: ModelConfig, window_size: int, n_sensors: int):
    x = inputs
    for width in config.filters:  # each layer halves the time axis
        x = layers.Conv1D(width, config.kernel_size, strides=2, padding="same", activation="relu")(x)
    reduced = math.ceil(window_size / 2 ** len(config.filters))
    x = layers.Flatten()(x)
    x = layers.Dense(config.latent_dim, name="latent")(x)
    x = layers.Dense(reduced * config.filters[-1], activation="relu")(x)
    x = layers.Reshape((reduced, config.filters[-1]))(x)
    for width in reversed(config.filters):
        x = layers.Conv1DTranspose(width, config.kernel_size, strides=2, padding="same", activation="relu")(x)
    excess = reduced * 2 ** len(config.filters) - window_size
    if excess:  # window sizes that are not a power-of-two multiple come out a little long
        x = layers.Cropping1D((0, excess))(x)
    return layers.Conv1D(n_sensors, config.kernel_size, padding="same", name="reconstruction")(x)


def _dense(inputs, config: ModelConfig, window_size: int, n_sensors: int):
    x = layers.Flatten()(inputs)
    for width in config.units:
        x = layers.Dense(width, activation="relu")(x)
    x = layers.Dense(config.latent_dim, name="latent")(x)
    for width in reversed(config.units):
        x = layers.Dense(width, activation="relu")(x)
    x = layers.Dense(window_size * n_sensors)(x)
    return layers.Reshape((window_size, n_sensors), name="reconstruction")(x)
