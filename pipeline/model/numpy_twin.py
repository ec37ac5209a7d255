"""Run a saved Keras 3 autoencoder in pure NumPy, without importing TensorFlow or Keras.

Importing TensorFlow costs ~750 MB of resident memory, more than half the scoring budget, so
the ``score`` path can load the trained model with ``NumpyAutoencoder.from_keras_file`` and use
its ``predict_on_batch`` as a drop-in for the Keras model's.

A ``.keras`` file is a zip holding ``config.json`` (the architecture), ``metadata.json`` and
``model.weights.h5``. In the weights file each layer's variables are at
``layers/<snake_case class name, deduplicated with _1, _2... in layer order>/vars/<i>`` (kernel
is ``0``, bias ``1``) and the ``vars`` group carries the layer's name as an attribute.

Only what ``pipeline.model`` builds is supported: a simple chain of InputLayer, Conv1D,
Conv1DTranspose, Dense, Flatten, Reshape, Cropping1D, RepeatVector and LSTM (tanh / sigmoid,
not stateful, forwards, no return_state) with relu/linear activations, channels_last, no
dilation. An LSTM's weights are in the ``cell/vars`` group under its layer's group.
``encode`` runs the chain up to the layer named ``latent`` (the code), ``decode`` the rest.
Anything else raises ``UnsupportedModel`` naming the layer and the
field, so the caller can fall back to Keras.

Keras (TensorFlow backend) semantics reproduced here:

* Conv1D ``same``: output length ``ceil(L / s)``; total padding
  ``max((ceil(L / s) - 1) * s + k - L, 0)``, the smaller half (``total // 2``) on the left.
  ``valid``: no padding, output length ``(L - k) // s + 1``.
* Conv1DTranspose (kernel stored as ``(k, filters, in_channels)``) is the adjoint of a Conv1D:
  each input step ``i`` scatters ``x[i] @ W[j].T`` to full position ``i * s + j`` (full length
  ``(L - 1) * s + k``). ``same`` gives ``N = L * s`` outputs: with the padding a Conv1D from ``N``
  to ``L`` steps would use, ``total = max((L - 1) * s + k - N, 0)``, output ``n`` is full position
  ``n + total // 2`` (zero beyond the full length). ``valid`` gives
  ``(L - 1) * s + max(k, s)`` outputs starting at full position 0.
* Flatten and Reshape are row-major over (time, channels).

Speed: each Conv1D is one im2col copy and one matmul (or, for narrow stride-1 outputs, one
matmul and k shifted adds); each Conv1DTranspose is one matmul of ceil(k / s)-step windows
against a matrix holding all s output phases, so no zeros are inserted. Batches run through
the network ``chunk_size`` windows at a time so the intermediates stay in cache.
"""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

import h5py
import numpy as np

from pipeline.model.twin_layers import (
    LSTM,
    SUPPORTED_LAYERS,
    Conv1D,
    Conv1DTranspose,
    Cropping1D,
    Dense,
    Flatten,
    Layer,
    RepeatVector,
    Reshape,
    UnsupportedModel,
    activation_name,
    one_value,
    snake_case,
)

LATENT = "latent"  # the code layer of every autoencoder pipeline.model builds


def _check_common(name: str, cls: str, config: dict) -> None:
    data_format = config.get("data_format", "channels_last")
    if data_format not in (None, "channels_last"):
        raise UnsupportedModel(f"layer {name!r} ({cls}): data_format={data_format!r}; only channels_last is supported")
    dtype = config.get("dtype")
    policy = dtype.get("config", {}).get("name") if isinstance(dtype, dict) else dtype
    if policy not in (None, "float32"):
        raise UnsupportedModel(f"layer {name!r} ({cls}): dtype={policy!r}; only float32 is supported")


def _check_conv(name: str, cls: str, config: dict) -> tuple[int, int, str]:
    """(kernel_size, stride, padding) of a Conv1D/Conv1DTranspose config, after the checks."""
    kernel_size = one_value(name, "kernel_size", config.get("kernel_size"))
    stride = one_value(name, "strides", config.get("strides", 1))
    dilation = one_value(name, "dilation_rate", config.get("dilation_rate", 1))
    if dilation != 1:
        raise UnsupportedModel(f"layer {name!r} ({cls}): dilation_rate={dilation}; only 1 is supported")
    padding = config.get("padding", "valid")
    if padding not in ("same", "valid"):
        raise UnsupportedModel(f"layer {name!r} ({cls}): padding={padding!r}; only 'same' and 'valid' are supported")
    if config.get("groups", 1) != 1:
        raise UnsupportedModel(f"layer {name!r} ({cls}): groups={config.get('groups')}; only 1 is supported")
    if cls == "Conv1DTranspose" and config.get("output_padding") is not None:
        raise UnsupportedModel(f"layer {name!r} ({cls}): output_padding={config.get('output_padding')!r}; only None is supported")
    if kernel_size < 1 or stride < 1:
        raise UnsupportedModel(f"layer {name!r} ({cls}): kernel_size={kernel_size}, strides={stride}")
    return kernel_size, stride, padding


def _weights(name: str, cls: str, group: h5py.Group | None, use_bias: bool) -> tuple[np.ndarray, np.ndarray | None]:
    expected = 2 if use_bias else 1
    found = sorted(group.keys()) if group is not None else []
    if found != [str(i) for i in range(expected)]:
        raise UnsupportedModel(f"layer {name!r} ({cls}): expected {expected} weight arrays, found {found} in model.weights.h5")
    kernel = np.asarray(group["0"], dtype=np.float32)
    bias = np.asarray(group["1"], dtype=np.float32) if use_bias else None
    return kernel, bias


def _build_layer(cls: str, config: dict, name: str, group: h5py.Group | None) -> Layer | None:
    """The NumPy layer for one saved layer (None for the InputLayer)."""
    _check_common(name, cls, config)
    if cls == "InputLayer":
        return None
    if cls in ("Conv1D", "Conv1DTranspose"):
        kernel_size, stride, padding = _check_conv(name, cls, config)
        activation = activation_name(name, config)
        use_bias = bool(config.get("use_bias", True))
        kernel, bias = _weights(name, cls, group, use_bias)
        filters = config.get("filters")
        if kernel.ndim != 3 or kernel.shape[0] != kernel_size or kernel.shape[2 if cls == "Conv1D" else 1] != filters:
            raise UnsupportedModel(
                f"layer {name!r} ({cls}): kernel shape {kernel.shape} does not match filters={filters}, kernel_size={kernel_size}"
            )
        if bias is not None and bias.shape != (filters,):
            raise UnsupportedModel(f"layer {name!r} ({cls}): bias shape {bias.shape} does not match filters={filters}")
        layer_cls = Conv1D if cls == "Conv1D" else Conv1DTranspose
        return layer_cls(name, kernel, bias, stride, padding, activation)
    if cls == "Dense":
        for key in ("lora_rank", "quantization_config"):
            if config.get(key):
                raise UnsupportedModel(f"layer {name!r} (Dense): {key}={config[key]!r} is not supported")
        activation = activation_name(name, config)
        use_bias = bool(config.get("use_bias", True))
        kernel, bias = _weights(name, cls, group, use_bias)
        units = config.get("units")
        if kernel.ndim != 2 or kernel.shape[1] != units or (bias is not None and bias.shape != (units,)):
            raise UnsupportedModel(f"layer {name!r} (Dense): weight shapes {kernel.shape} do not match units={units}")
        return Dense(name, kernel, bias, activation)
    if cls == "LSTM":
        return _lstm(name, config, group)
    if cls == "RepeatVector":
        n = config.get("n")
        if not isinstance(n, int) or n < 1:
            raise UnsupportedModel(f"layer {name!r} (RepeatVector): n={n!r}")
        return RepeatVector(name, n)
    if cls == "Flatten":
        return Flatten(name)
    if cls == "Reshape":
        target = config.get("target_shape")
        if not isinstance(target, (list, tuple)) or not all(isinstance(d, int) for d in target):
            raise UnsupportedModel(f"layer {name!r} (Reshape): target_shape={target!r}")
        return Reshape(name, tuple(target))
    if cls == "Cropping1D":
        cropping = config.get("cropping")
        if isinstance(cropping, int):
            cropping = (cropping, cropping)
        if (
            not isinstance(cropping, (list, tuple))
            or len(cropping) != 2
            or not all(isinstance(c, int) and c >= 0 for c in cropping)
        ):
            raise UnsupportedModel(f"layer {name!r} (Cropping1D): cropping={cropping!r}")
        return Cropping1D(name, cropping[0], cropping[1])
    raise UnsupportedModel(f"layer {name!r}: class_name={cls!r} is not supported (only {', '.join(SUPPORTED_LAYERS)})")


_LSTM_FIXED = {
    "activation": "tanh",
    "recurrent_activation": "sigmoid",
    "go_backwards": False,
    "stateful": False,
    "return_state": False,
}


def _lstm(name: str, config: dict, group: h5py.Group | None) -> LSTM:
    for key, expected in _LSTM_FIXED.items():
        if config.get(key, expected) != expected:
            raise UnsupportedModel(f"layer {name!r} (LSTM): {key}={config.get(key)!r}; only {expected!r} is supported")
    use_bias = bool(config.get("use_bias", True))
    found = sorted(group.keys()) if group is not None else []
    expected = [str(i) for i in range(3 if use_bias else 2)]
    if found != expected:
        raise UnsupportedModel(f"layer {name!r} (LSTM): expected weight arrays {expected}, found {found} in model.weights.h5")
    kernel, recurrent = (np.asarray(group[k], dtype=np.float32) for k in ("0", "1"))
    bias = np.asarray(group["2"], dtype=np.float32) if use_bias else None
    units = config.get("units")
    if kernel.shape[1] != 4 * units or recurrent.shape != (units, 4 * units):
        raise UnsupportedModel(
            f"layer {name!r} (LSTM): weight shapes {kernel.shape}, {recurrent.shape} do not match units={units}"
        )
    return LSTM(name, kernel, recurrent, bias, bool(config.get("return_sequences", False)))


def _chain(model_config: dict) -> list[dict]:
    """The saved layers in order, after checking the model is a simple chain."""
    cls = model_config.get("class_name")
    config = model_config.get("config", {})
    layers = config.get("layers")
    if cls not in ("Functional", "Sequential") or not isinstance(layers, list) or not layers:
        raise UnsupportedModel(f"model: class_name={cls!r}; only Functional and Sequential models of layers are supported")
    for layer in layers:  # name an unsupported layer before judging the wiring
        if layer.get("class_name") not in SUPPORTED_LAYERS:
            _build_layer(layer.get("class_name"), {}, layer.get("config", {}).get("name") or layer.get("name"), None)
    if cls == "Sequential":
        return layers
    names = [layer.get("name") or layer.get("config", {}).get("name") for layer in layers]
    for position, layer in enumerate(layers):
        nodes = layer.get("inbound_nodes", [])
        if position == 0:
            if layer.get("class_name") != "InputLayer" or nodes:
                raise UnsupportedModel(f"layer {names[0]!r}: the first layer must be the only InputLayer")
            continue
        args = nodes[0].get("args", []) if len(nodes) == 1 else None
        tensors = (
            [a for a in args if isinstance(a, dict) and a.get("class_name") == "__keras_tensor__"] if args is not None else []
        )
        if (
            args is None
            or len(args) != 1
            or len(tensors) != 1
            or any(v not in (None, False) for v in (nodes[0].get("kwargs") or {}).values())  # LSTM: training=False, mask=None
            or tensors[0]["config"]["keras_history"][0] != names[position - 1]
        ):
            raise UnsupportedModel(
                f"layer {names[position]!r}: inbound_nodes do not take exactly the previous layer "
                f"{names[position - 1]!r}; only simple chains are supported"
            )
    first, last = names[0], names[-1]
    if config.get("input_layers") not in ([first, 0, 0], [[first, 0, 0]]) or config.get("output_layers") not in (
        [last, 0, 0],
        [[last, 0, 0]],
    ):
        raise UnsupportedModel(
            f"model: input_layers={config.get('input_layers')!r}, output_layers={config.get('output_layers')!r}; "
            f"expected one input {first!r} and one output {last!r}"
        )
    return layers


def _input_shape(layer: dict) -> tuple[int, ...] | None:
    config = layer.get("config", {})
    shape = config.get("batch_shape") or config.get("batch_input_shape")
    if shape is None and layer.get("build_config"):
        shape = layer["build_config"].get("input_shape")
    if shape is None:
        return None
    if any(d is None for d in shape[1:]):
        raise UnsupportedModel(f"layer {config.get('name')!r}: input shape {shape} must be fixed apart from the batch axis")
    return tuple(shape[1:])


class NumpyAutoencoder:
    """A saved Keras autoencoder evaluated with NumPy: ``predict_on_batch`` like the Keras model."""

    chunk_size = 256
    thread_safe = True  # predict_on_batch keeps no state between calls: batches may run in threads side by side

    def __init__(self, layers: list[Layer], input_shape: tuple[int, ...], name: str = "model") -> None:
        self.layers = layers
        self.input_shape = tuple(input_shape)
        self.name = name
        shape = self.input_shape
        for layer in layers:
            shape = layer.output_shape(shape)
        self.output_shape = shape

    @classmethod
    def from_keras_file(cls, path: str | Path) -> NumpyAutoencoder:
        """Load a Keras 3 ``.keras`` file; ``UnsupportedModel`` if it uses anything not implemented here."""
        with zipfile.ZipFile(path) as archive:
            names = set(archive.namelist())
            if "config.json" not in names or "model.weights.h5" not in names:
                raise UnsupportedModel(f"{path}: expected config.json and model.weights.h5 in the archive, found {sorted(names)}")
            model_config = json.loads(archive.read("config.json"))
            weights_bytes = archive.read("model.weights.h5")
        saved = _chain(model_config)
        input_shape = _input_shape(saved[0])  # an InputLayer, or a Sequential model's first layer's build input
        if input_shape is None:
            raise UnsupportedModel("model: the input shape is not saved")
        with h5py.File(io.BytesIO(weights_bytes), "r") as weights:
            groups = weights.get("layers")
            by_name = {}
            if groups is not None:
                for _, group in groups.items():
                    if "vars" in group and "name" in group["vars"].attrs:
                        # a recurrent layer keeps its weights in its cell's group
                        held = group["cell"]["vars"] if "cell" in group and "vars" in group["cell"] else group["vars"]
                        by_name[str(group["vars"].attrs["name"])] = held
            used: dict[str, int] = {}
            layers = []
            for layer in saved:
                layer_cls = layer.get("class_name")
                config = layer.get("config", {})
                name = config.get("name") or layer.get("name")
                # the group path Keras derives from the class name, deduplicated in layer order
                key = snake_case(layer_cls or "")
                used[key] = used.get(key, -1) + 1
                path = key if used[key] == 0 else f"{key}_{used[key]}"
                group = by_name.get(name)
                if group is None and groups is not None and path in groups and "vars" in groups[path]:
                    group = groups[path]["cell"]["vars"] if "cell" in groups[path] else groups[path]["vars"]
                built = _build_layer(layer_cls, config, name, group)
                if isinstance(built, LSTM) and layers and isinstance(layers[-1], RepeatVector):
                    built.repeated_input = True
                if built is not None:
                    layers.append(built)
        return cls(layers, input_shape, model_config.get("config", {}).get("name", "model"))

    def predict_on_batch(self, windows: np.ndarray) -> np.ndarray:
        """Reconstruct a batch of windows (batch, *input_shape) -> (batch, *output_shape) float32."""
        x = np.asarray(windows, dtype=np.float32)
        if x.shape[1:] != self.input_shape:
            raise ValueError(
                f"{self.name}: expected inputs of shape (batch, {', '.join(map(str, self.input_shape))}), got {x.shape}"
            )
        result = np.empty((len(x), *self.output_shape), dtype=np.float32)
        # A few hundred windows at a time keep every intermediate in cache (and off fresh,
        # page-faulting allocations): several times faster than whole-batch arrays.
        for lo in range(0, len(x), self.chunk_size):
            y = x[lo : lo + self.chunk_size]
            for layer in self.layers:
                y = layer(y)
            result[lo : lo + len(y)] = y
        return result

    def _latent_index(self) -> int:
        for index, layer in enumerate(self.layers):
            if layer.name == LATENT:
                return index
        raise UnsupportedModel(f"{self.name}: no layer named {LATENT!r}, so no latent code to give")

    def _run(self, x: np.ndarray, layers: list[Layer], out_shape: tuple[int, ...]) -> np.ndarray:
        result = np.empty((len(x), *out_shape), dtype=np.float32)
        for lo in range(0, len(x), self.chunk_size):
            y = x[lo : lo + self.chunk_size]
            for layer in layers:
                y = layer(y)
            result[lo : lo + len(y)] = y
        return result

    def encode(self, windows: np.ndarray) -> np.ndarray:
        """The code of each window, (batch, *input_shape) -> (batch, latent_dim): the chain up to ``latent``."""
        return self.encode_to(windows, LATENT)

    def encode_to(self, windows: np.ndarray, layer_name: str) -> np.ndarray:
        """The output of the layer ``layer_name`` for each window (the chain up to it)."""
        x = np.asarray(windows, dtype=np.float32)
        if x.shape[1:] != self.input_shape:
            shape = ", ".join(map(str, self.input_shape))
            raise ValueError(f"{self.name}: expected inputs of shape (batch, {shape}), got {x.shape}")
        names = [layer.name for layer in self.layers]
        if layer_name not in names:
            raise UnsupportedModel(f"{self.name}: no layer named {layer_name!r}")
        upto = self.layers[: names.index(layer_name) + 1]
        shape = self.input_shape
        for layer in upto:
            shape = layer.output_shape(shape)
        return self._run(x, upto, shape)

    def decode(self, codes: np.ndarray) -> np.ndarray:
        """Reconstructed windows from codes, (batch, latent_dim) -> (batch, *output_shape): the chain after ``latent``."""
        index = self._latent_index()
        shape = self.input_shape
        for layer in self.layers[: index + 1]:
            shape = layer.output_shape(shape)
        x = np.asarray(codes, dtype=np.float32)
        if x.shape[1:] != shape:
            raise ValueError(f"{self.name}: expected codes of shape (batch, {', '.join(map(str, shape))}), got {x.shape}")
        return self._run(x, self.layers[index + 1 :], self.output_shape)

    def __call__(self, windows: np.ndarray) -> np.ndarray:
        return self.predict_on_batch(windows)

    def __repr__(self) -> str:
        kinds = ", ".join(type(layer).__name__.lstrip("_") for layer in self.layers)
        return f"NumpyAutoencoder({self.name!r}, input_shape={self.input_shape}, layers=[{kinds}])"
