"""The Keras 3 autoencoders: 1-D convolutional (default), dense, LSTM encoder-decoder, and a
variational one (``vae``, on the convolutional body).

Every model maps windows (window_size, n_sensors) to their reconstruction and has a layer named
``latent`` whose output is the window's code (for the VAE: the mean of its latent distribution),
so the encoder half is the chain up to ``latent`` and the decoder half the rest (the NumPy twin
runs either). The model that is saved and scored is always a plain chain of standard layers:

* ``vae`` trains a model with a sampling step (``Sampling``: z = mean + exp(log_var / 2) * eps,
  KL term ``kl_weight`` x its mean over latent units added to the loss) and is saved as its mean
  path: ``latent_stats`` (a Dense layer giving mean and log-variance side by side) ->
  Reshape (2, k) -> Cropping1D keeping the mean -> Reshape ``latent`` -> decoder. The same
  weights; the mean path involves no custom layer, so the twin scores it exactly.
"""

from __future__ import annotations

import math

import keras
from keras import layers, ops

from pipeline.config import ModelConfig

LATENT = "latent"  # the code layer of every architecture
LATENT_STATS = "latent_stats"  # vae: mean and log-variance, (2 * latent_dim,)
LOG_VAR_LIMIT = 10.0  # vae: log-variances are clipped to +-this in the KL term and the sampling


def build_autoencoder(config: ModelConfig, window_size: int, n_sensors: int, steps_per_epoch: int = 1) -> keras.Model:
    """The model to train (compiled): windows (window_size, n_sensors) -> their reconstruction.

    For ``vae`` this is the training model with its sampling step; ``inference_model`` gives the
    chain that is saved and scored. ``steps_per_epoch`` sizes ``lr_schedule: cosine``.
    """
    keras.utils.set_random_seed(config.seed)
    inputs = keras.Input(shape=(window_size, n_sensors), name="window")
    if config.architecture == "vae":
        stats = _encoder(inputs, config, window_size)
        z = Sampling(config.kl_weight, config.latent_dim, config.seed, name="sampling")(stats)
        outputs = _decoder(z, config, window_size, n_sensors)
    else:
        outputs = _decoder(_encoder(inputs, config, window_size), config, window_size, n_sensors)
    model = keras.Model(inputs, outputs, name=f"{config.architecture}_autoencoder")
    model.compile(optimizer=_optimizer(config, steps_per_epoch), loss="mse")
    return model


def inference_model(model: keras.Model, config: ModelConfig) -> keras.Model:
    """The chain that is saved and scored: the model itself, or a VAE's mean path (same weights)."""
    if config.architecture != "vae":
        return model
    window_size, n_sensors = model.input_shape[1:]
    inputs = keras.Input(shape=(window_size, n_sensors), name="window")
    stats = _encoder(inputs, config, window_size)
    k = config.latent_dim
    x = layers.Reshape((2, k), name="latent_pair")(stats)
    x = layers.Cropping1D((0, 1), name="latent_mean")(x)
    x = layers.Reshape((k,), name=LATENT)(x)
    outputs = _decoder(x, config, window_size, n_sensors)
    chain = keras.Model(inputs, outputs, name="vae_autoencoder")
    trained = {layer.name: layer for layer in model.layers}
    for layer in chain.layers:
        if layer.weights:
            layer.set_weights(trained[layer.name].get_weights())
    return chain


def _optimizer(config: ModelConfig, steps_per_epoch: int = 1) -> keras.optimizers.Optimizer:
    """Adam at ``learning_rate`` (cosine-decayed to 1 % over the epochs with ``lr_schedule: cosine``;
    ``plateau`` is a callback, see training), gradients clipped to ``clipnorm`` when set."""
    rate = config.learning_rate
    if config.lr_schedule == "cosine":
        rate = keras.optimizers.schedules.CosineDecay(rate, decay_steps=max(1, config.epochs * steps_per_epoch), alpha=0.01)
    return keras.optimizers.Adam(rate, clipnorm=config.clipnorm)


@keras.saving.register_keras_serializable(package="pipeline")
class Sampling(layers.Layer):
    """VAE reparameterisation on (batch, 2 * k) mean and log-variance: a draw of z while training,
    the mean otherwise; adds ``kl_weight`` x the KL divergence to N(0, I) (mean over the k units)."""

    def __init__(self, kl_weight: float, latent_dim: int, seed: int = 0, **kwargs):
        super().__init__(**kwargs)
        self.kl_weight, self.latent_dim, self.seed = float(kl_weight), int(latent_dim), int(seed)
        self.seed_generator = keras.random.SeedGenerator(seed)

    def call(self, stats, training=None):
        mean, log_var = stats[:, : self.latent_dim], ops.clip(stats[:, self.latent_dim :], -LOG_VAR_LIMIT, LOG_VAR_LIMIT)
        kl = 0.5 * ops.mean(ops.square(mean) + ops.exp(log_var) - 1.0 - log_var, axis=-1)
        self.add_loss(self.kl_weight * ops.mean(kl))
        if not training:
            return mean
        eps = keras.random.normal(ops.shape(mean), seed=self.seed_generator)
        return mean + ops.exp(0.5 * log_var) * eps

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.latent_dim)

    def get_config(self):
        return {**super().get_config(), "kl_weight": self.kl_weight, "latent_dim": self.latent_dim, "seed": self.seed}


def _reduced(config: ModelConfig, window_size: int) -> int:
    return math.ceil(window_size / 2 ** len(config.filters))


def _encoder(inputs, config: ModelConfig, window_size: int):
    """Windows -> the code (``latent``), or for ``vae`` its mean and log-variance (``latent_stats``)."""
    if config.architecture == "lstm":
        x = layers.LSTM(config.lstm_units, name="encoder_lstm")(inputs)
        return layers.Dense(config.latent_dim, name=LATENT)(x)
    if config.architecture == "dense":
        x = layers.Flatten(name="flatten")(inputs)
        for i, width in enumerate(config.units):
            x = layers.Dense(width, activation="relu", name=f"encoder_dense_{i}")(x)
        return layers.Dense(config.latent_dim, name=LATENT)(x)
    x = inputs
    for i, width in enumerate(config.filters):  # each layer halves the time axis
        x = layers.Conv1D(width, config.kernel_size, strides=2, padding="same", activation="relu", name=f"encoder_conv_{i}")(x)
    x = layers.Flatten(name="flatten")(x)
    if config.architecture == "vae":
        return layers.Dense(2 * config.latent_dim, name=LATENT_STATS)(x)
    return layers.Dense(config.latent_dim, name=LATENT)(x)


def _decoder(z, config: ModelConfig, window_size: int, n_sensors: int):
    """Codes -> reconstructed windows (the last layer is ``reconstruction``)."""
    if config.architecture == "lstm":
        x = layers.RepeatVector(window_size, name="repeat")(z)
        x = layers.LSTM(config.lstm_units, return_sequences=True, name="decoder_lstm")(x)
        return layers.Dense(n_sensors, name="reconstruction")(x)
    if config.architecture == "dense":
        x = z
        for i, width in enumerate(reversed(config.units)):
            x = layers.Dense(width, activation="relu", name=f"decoder_dense_{i}")(x)
        x = layers.Dense(window_size * n_sensors, name="decoder_out")(x)
        return layers.Reshape((window_size, n_sensors), name="reconstruction")(x)
    reduced = _reduced(config, window_size)
    x = layers.Dense(reduced * config.filters[-1], activation="relu", name="decoder_dense")(z)
    x = layers.Reshape((reduced, config.filters[-1]), name="decoder_reshape")(x)
    for i, width in enumerate(reversed(config.filters)):
        x = layers.Conv1DTranspose(
            width, config.kernel_size, strides=2, padding="same", activation="relu", name=f"decoder_conv_{i}"
        )(x)
    excess = reduced * 2 ** len(config.filters) - window_size
    if excess:  # window sizes that are not a power-of-two multiple come out a little long
        x = layers.Cropping1D((0, excess), name="decoder_crop")(x)
    return layers.Conv1D(n_sensors, config.kernel_size, padding="same", name="reconstruction")(x)
