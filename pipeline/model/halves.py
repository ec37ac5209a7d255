"""The encoder and decoder halves of a Keras autoencoder, with the NumPy twin's interface
(``encode``, ``encode_to``, ``decode``), for models the twin cannot run (it has them itself)."""

from __future__ import annotations

import keras
import numpy as np

from pipeline.model.autoencoder import LATENT


class KerasHalves:
    """A Keras autoencoder whose chain has a layer ``latent``: codes out, windows back from codes."""

    thread_safe = False

    def __init__(self, model: keras.Model):
        self.model = model
        self._encoders: dict[str, keras.Model] = {}
        names = [layer.name for layer in model.layers]
        if LATENT not in names:
            raise ValueError(f"{model.name}: no layer named {LATENT!r}, so no latent code to give")
        after = model.layers[names.index(LATENT) + 1 :]
        codes = keras.Input(shape=model.get_layer(LATENT).output.shape[1:], name="code")
        x = codes
        for layer in after:
            x = layer(x)
        self._decoder = keras.Model(codes, x, name="decoder")

    def predict_on_batch(self, windows: np.ndarray) -> np.ndarray:
        return np.asarray(self.model.predict_on_batch(windows))

    def encode_to(self, windows: np.ndarray, layer_name: str) -> np.ndarray:
        if layer_name not in self._encoders:
            self._encoders[layer_name] = keras.Model(self.model.inputs, self.model.get_layer(layer_name).output)
        return np.asarray(self._encoders[layer_name].predict_on_batch(np.asarray(windows, np.float32)))

    def encode(self, windows: np.ndarray) -> np.ndarray:
        return self.encode_to(windows, LATENT)

    def decode(self, codes: np.ndarray) -> np.ndarray:
        return np.asarray(self._decoder.predict_on_batch(np.asarray(codes, np.float32)))

    def save(self, path) -> None:
        self.model.save(path)
