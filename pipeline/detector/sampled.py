"""The model's halves, and a VAE scored by its negative log-likelihood (``model.vae_score: nll``).

A window's per-sensor energy is then its expected residual energy under the encoder's
distribution, the mean over ``vae_samples`` fixed draws z = mean + sigma * eps_l (the same eps
for every window, so scores repeat and do not depend on batches): with a unit-variance Gaussian
decoder, this is its negative log-likelihood up to a constant and a factor (a Monte Carlo
"reconstruction probability", An & Cho 2015).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from pipeline.config import ModelConfig
from pipeline.detector.window_error import residual_energy

LATENT_STATS = "latent_stats"  # the VAE's mean and log-variance layer (pipeline.model.autoencoder)
LOG_VAR_LIMIT = 10.0


def halves(model: Any) -> Any:
    """The model with ``encode``/``encode_to``/``decode``: the NumPy twin has them; a Keras model gets ``KerasHalves``."""
    if hasattr(model, "encode") and hasattr(model, "decode"):
        return model
    from pipeline.model.halves import KerasHalves  # Keras only for models the twin cannot run

    return KerasHalves(model)


class SampledNLL:
    """A VAE scored by its negative log-likelihood (module docstring): ``energy_on_batch`` gives
    the per-sensor energies; ``predict_on_batch`` (contributions' signals) stays the mean path."""

    def __init__(self, model: Any, config: ModelConfig):
        self.inner = model
        self.halves = halves(model)
        self.latent_dim = config.latent_dim
        self.eps = np.random.default_rng(config.seed).standard_normal((config.vae_samples, config.latent_dim)).astype(np.float32)
        self.thread_safe = getattr(model, "thread_safe", False)

    def predict_on_batch(self, windows: np.ndarray) -> np.ndarray:
        return self.inner.predict_on_batch(windows)

    def energy_on_batch(self, windows: np.ndarray, offset_weight: float) -> np.ndarray:
        stats = self.halves.encode_to(windows, LATENT_STATS)
        k = self.latent_dim
        mean, sigma = stats[:, :k], np.exp(0.5 * np.clip(stats[:, k:], -LOG_VAR_LIMIT, LOG_VAR_LIMIT))
        energy = np.zeros((len(windows), windows.shape[2]), dtype=np.float64)
        for eps in self.eps:
            energy += residual_energy(windows, self.halves.decode(mean + sigma * eps), offset_weight)
        return (energy / len(self.eps)).astype(np.float32)

    def __getattr__(self, name: str) -> Any:  # save, encode, decode, ... of the model itself
        return getattr(self.inner, name)


def scoring_model(model: Any, config: ModelConfig) -> Any:
    """The model as scoring uses it: wrapped in ``SampledNLL`` for ``vae`` with ``vae_score: nll``."""
    if config.architecture == "vae" and config.vae_score == "nll" and not isinstance(model, SampledNLL):
        return SampledNLL(model, config)
    return model
