"""Run a saved Keras 3 autoencoder in pure NumPy, without importing TensorFlow or Keras.

Importing TensorFlow costs ~750 MB of resident memory, more than half the scoring budget, so
the ``score`` path can load the trained model with ``NumpyAutoencoder.from_keras_file`` and use
its ``predict_on_batch`` as a drop-in for the Keras model's.

A ``.keras`` file is a zip holding ``config.json`` (the architecture), ``metadata.json`` and
``model.weights.h5``. In the weights file each layer's variables are at
``layers/<snake_case class name, deduplicated with _1, _2... in layer order>/vars/<i>`` (kernel
is ``0``, bias ``1``) and the ``vars`` group carries the layer's name as an attribute.

Only what ``pipeline.model`` builds is supported: a simple chain of InputLayer, Conv1D,
Conv1DTranspose, Dense, Flatten, Reshape and Cropping1D with relu/linear activations,
channels_last, no dilation. Anything else raises ``UnsupportedModel`` naming the layer and the
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
import math
import re
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np
from numpy.lib.stride_tricks import as_strided


class UnsupportedModel(ValueError):
    """The saved model uses something this NumPy runtime does not implement; use Keras instead."""


_ACTIVATIONS = ("relu", "linear")
_SUPPORTED = ("InputLayer", "Conv1D", "Conv1DTranspose", "Dense", "Flatten", "Reshape", "Cropping1D")


def _snake_case(name: str) -> str:
    """Keras' ``naming.to_snake_case``, which names the layers' groups in the weights file."""
    name = re.sub(r"\W+", "", name)
    name = re.sub("(.)([A-Z][a-z]+)", r"\1_\2", name)
    return re.sub("([a-z])([A-Z])", r"\1_\2", name).lower()


def _one(layer: str, field_name: str, value: Any) -> int:
    """A 1-D conv setting saved as ``[n]`` (or ``n``) -> ``n``."""
    if isinstance(value, int):
        return value
    if isinstance(value, (list, tuple)) and len(value) == 1 and isinstance(value[0], int):
        return value[0]
    raise UnsupportedModel(f"layer {layer!r}: {field_name}={value!r} is not a single integer")


def _activation(layer: str, config: dict) -> str:
    activation = config.get("activation", "linear")
    if activation is None:
        activation = "linear"
    if activation not in _ACTIVATIONS:
        raise UnsupportedModel(f"layer {layer!r}: activation={activation!r} is not one of {_ACTIVATIONS}")
    return activation


_zeros = np.zeros(0, dtype=np.float32)


def _apply_activation(x: np.ndarray, activation: str) -> np.ndarray:
    """Apply the activation in place. (np.maximum against a zeros array is several times faster
    than against the scalar 0, which takes a slow broadcasting loop.)"""
    global _zeros
    if activation == "relu":
        if x.flags.c_contiguous:
            if _zeros.size < x.size:
                _zeros = np.zeros(x.size, dtype=np.float32)
            np.maximum(x, _zeros[: x.size].reshape(x.shape), out=x)
        else:
            np.maximum(x, 0, out=x)
    return x


def _same_conv_padding(length: int, kernel: int, stride: int) -> tuple[int, int, int]:
    """TensorFlow's 'same' padding of a conv over ``length`` steps: (left, right, output length)."""
    out = -(-length // stride)
    total = max((out - 1) * stride + kernel - length, 0)
    return total // 2, total - total // 2, out


# --- layers ------------------------------------------------------------------------------------
# Each layer knows its output shape (per window, without the batch axis) from its input shape and
# maps a float32 batch (batch, *shape) to its output batch.


@dataclass
class _Layer:
    name: str

    def output_shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        raise NotImplementedError

    def __call__(self, x: np.ndarray) -> np.ndarray:
        raise NotImplementedError


def _im2col(x: np.ndarray, left: int, length: int, taps: int, stride: int, count: int, ones: bool) -> np.ndarray:
    """Rows ``padded[t * stride : t * stride + taps]`` flattened, for t < count: (batch * count, taps * C),
    with a last column of ones if ``ones`` (so the bias is a row of the matmul's matrix: cheaper
    than adding it afterwards).

    ``padded`` is ``x`` (batch, steps, C) with ``left`` zero steps before it and zeros after it up
    to ``length`` steps. A row's values are contiguous in ``padded`` (time-major), so this is
    one strided view and one copy.
    """
    batch, steps, channels = x.shape
    padded = np.zeros((batch, max(length, left + steps), channels), dtype=np.float32)
    padded[:, left : left + steps] = x
    sb, sl, sc = padded.strides
    view = as_strided(padded, (batch, count, taps * channels), (sb, stride * sl, sc), writeable=False)
    width = taps * channels
    rows = np.empty((batch * count, width + ones), dtype=np.float32)
    np.copyto(rows[:, :width].reshape(batch, count, width), view)
    if ones:
        rows[:, width] = 1.0
    return rows


@dataclass
class _Conv1D(_Layer):
    kernel: np.ndarray  # (k, in_channels, filters), as Keras stores it
    bias: np.ndarray | None
    stride: int
    padding: str
    activation: str
    _matrix: np.ndarray = field(init=False, repr=False)

    def __post_init__(self) -> None:
        k, c, f = self.kernel.shape
        # im2col needs one (k * c, f) matmul; a narrow output (few filters, stride 1, e.g. the
        # reconstruction layer) is faster as one (k * f, c) matmul over the padded steps and k
        # shifted adds of its row blocks.
        self._shift_add = self.stride == 1 and f <= c
        if self._shift_add:
            self._matrix = np.ascontiguousarray(self.kernel.transpose(0, 2, 1).reshape(k * f, c))  # row j * f + filter
        else:
            self._matrix = self.kernel.reshape(k * c, f)  # row j * c + channel
            if self.bias is not None:
                self._matrix = np.concatenate([self._matrix, self.bias[None, :]])
            self._matrix = np.ascontiguousarray(self._matrix)

    def _geometry(self, length: int) -> tuple[int, int]:
        """(left padding, output length)."""
        k = self.kernel.shape[0]
        if self.padding == "same":
            left, _, out = _same_conv_padding(length, k, self.stride)
            return left, out
        if length < k:
            raise UnsupportedModel(f"layer {self.name!r}: input length {length} is shorter than kernel_size={k}")
        return 0, (length - k) // self.stride + 1

    def output_shape(self, shape):
        length, channels = _check_3d(self.name, shape)
        if channels != self.kernel.shape[1]:
            raise UnsupportedModel(f"layer {self.name!r}: kernel expects {self.kernel.shape[1]} channels, gets {channels}")
        return (self._geometry(length)[1], self.kernel.shape[2])

    def __call__(self, x):
        # out[t] = sum_j padded[t * s + j] @ W[j]
        batch, steps, channels = x.shape
        k, _, f = self.kernel.shape
        s = self.stride
        left, out = self._geometry(steps)
        needed = (out - 1) * s + k
        if not self._shift_add:  # im2col, then one matmul
            y = _im2col(x, left, needed, k, s, out, self.bias is not None) @ self._matrix
            return _apply_activation(y, self.activation).reshape(batch, out, f)
        # With all windows' padded steps as one run of r = b * length + t, z[j * f + g, r] =
        # W[j][:, g] . padded[r], so out[b, t, g] = sum_j z[j * f + g, r + j]: one matmul and k
        # shifted adds of long contiguous rows (transposed so the rows are long), then transpose back.
        length = max(needed, left + steps)
        padded = np.zeros((batch, length, channels), dtype=np.float32)
        padded[:, left : left + steps] = x
        z = self._matrix @ padded.reshape(batch * length, channels).T
        rows = batch * length - (k - 1)
        y = np.empty((f, batch * length), dtype=np.float32)
        y[:, rows:] = 0
        if self.bias is not None:
            np.add(z[:f, :rows], self.bias[:, None], out=y[:, :rows])
        else:
            y[:, :rows] = z[:f, :rows]
        for j in range(1, k):
            y[:, :rows] += z[j * f : (j + 1) * f, j : j + rows]
        y = np.ascontiguousarray(y.T)
        return _apply_activation(y, self.activation).reshape(batch, length, f)[:, :out]


@dataclass
class _Conv1DTranspose(_Layer):
    kernel: np.ndarray  # (k, filters, in_channels), as Keras stores it
    bias: np.ndarray | None
    stride: int
    padding: str
    activation: str
    _matrix: np.ndarray = field(init=False, repr=False)

    def __post_init__(self) -> None:
        # Full (uncropped) output: full[i * s + j] = sum over input steps i and taps j of
        # x[i] @ W[j].T. Split the full positions by phase p: full[q * s + p] =
        # sum_{d < m} x[q - d] @ W[d * s + p].T with m = ceil(k / s) (taps past k are zero). So one
        # matmul of the m-step windows x[q - m + 1 .. q] against an (m * C, s * F) matrix gives all
        # s phases of position q side by side, which reshape interleaves in output order.
        k, f, c = self.kernel.shape
        s = self.stride
        m = -(-k // s)
        matrix = np.zeros((m, c, s, f), dtype=np.float32)
        for w in range(m):  # window row w holds x[q - d] with d = m - 1 - w
            for p in range(s):
                j = (m - 1 - w) * s + p
                if j < k:
                    matrix[w, :, p, :] = self.kernel[j].T
        self._taps = m
        self._matrix = matrix.reshape(m * c, s * f)
        if self.bias is not None:
            self._matrix = np.ascontiguousarray(np.concatenate([self._matrix, np.tile(self.bias, s)[None, :]]))

    def _geometry(self, length: int) -> tuple[int, int]:
        """(offset of the output in the full scatter, output length)."""
        k, s = self.kernel.shape[0], self.stride
        if self.padding == "same":
            out = length * s
            total = max((length - 1) * s + k - out, 0)  # the padding of the conv this is the adjoint of
            return total // 2, out
        return 0, (length - 1) * s + max(k, s)

    def output_shape(self, shape):
        length, channels = _check_3d(self.name, shape)
        if channels != self.kernel.shape[2]:
            raise UnsupportedModel(f"layer {self.name!r}: kernel expects {self.kernel.shape[2]} channels, gets {channels}")
        return (self._geometry(length)[1], self.kernel.shape[1])

    def __call__(self, x):
        batch = len(x)
        f, s, m = self.kernel.shape[1], self.stride, self._taps
        offset, out = self._geometry(x.shape[1])
        q0, q1 = offset // s, -(-(offset + out) // s)  # the positions q covering the output
        # window for q starts at padded step q when x is preceded by m - 1 zero steps
        rows = _im2col(x[:, max(q0 - m + 1, 0) :], max(m - 1 - q0, 0), q1 - q0 + m - 1, m, 1, q1 - q0, self.bias is not None)
        y = rows @ self._matrix
        y = _apply_activation(y, self.activation).reshape(batch, (q1 - q0) * s, f)
        start = offset - q0 * s
        return y[:, start : start + out]


@dataclass
class _Dense(_Layer):
    kernel: np.ndarray  # (in, units)
    bias: np.ndarray | None
    activation: str

    def output_shape(self, shape):
        if not shape or shape[-1] != self.kernel.shape[0]:
            raise UnsupportedModel(f"layer {self.name!r}: kernel expects {self.kernel.shape[0]} inputs, gets shape {shape}")
        return (*shape[:-1], self.kernel.shape[1])

    def __call__(self, x):
        y = x @ self.kernel
        if self.bias is not None:
            y += self.bias
        return _apply_activation(y, self.activation)


@dataclass
class _Flatten(_Layer):
    def output_shape(self, shape):
        return (math.prod(shape),)

    def __call__(self, x):
        return x.reshape(len(x), -1)


@dataclass
class _Reshape(_Layer):
    target_shape: tuple[int, ...]

    def output_shape(self, shape):
        size = math.prod(shape)
        target = list(self.target_shape)
        if target.count(-1) == 1:
            known = math.prod(d for d in target if d != -1)
            if known == 0 or size % known:
                raise UnsupportedModel(f"layer {self.name!r}: cannot reshape {shape} to target_shape={self.target_shape}")
            target[target.index(-1)] = size // known
        if math.prod(target) != size or any(d < 0 for d in target):
            raise UnsupportedModel(f"layer {self.name!r}: cannot reshape {shape} to target_shape={self.target_shape}")
        return tuple(target)

    def __call__(self, x):
        return x.reshape(len(x), *self.target_shape)


@dataclass
class _Cropping1D(_Layer):
    start: int
    end: int

    def output_shape(self, shape):
        length, channels = _check_3d(self.name, shape)
        if self.start + self.end >= length:
            raise UnsupportedModel(f"layer {self.name!r}: cropping=({self.start}, {self.end}) leaves nothing of {length} steps")
        return (length - self.start - self.end, channels)

    def __call__(self, x):
        return x[:, self.start : x.shape[1] - self.end]


def _check_3d(name: str, shape: tuple[int, ...]) -> tuple[int, int]:
    if len(shape) != 2:
        raise UnsupportedModel(f"layer {name!r}: expects (steps, channels) inputs, gets shape {shape}")
    return shape


# --- loading -----------------------------------------------------------------------------------


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
    kernel_size = _one(name, "kernel_size", config.get("kernel_size"))
    stride = _one(name, "strides", config.get("strides", 1))
    dilation = _one(name, "dilation_rate", config.get("dilation_rate", 1))
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


def _build_layer(cls: str, config: dict, name: str, group: h5py.Group | None) -> _Layer | None:
    """The NumPy layer for one saved layer (None for the InputLayer)."""
    _check_common(name, cls, config)
    if cls == "InputLayer":
        return None
    if cls in ("Conv1D", "Conv1DTranspose"):
        kernel_size, stride, padding = _check_conv(name, cls, config)
        activation = _activation(name, config)
        use_bias = bool(config.get("use_bias", True))
        kernel, bias = _weights(name, cls, group, use_bias)
        filters = config.get("filters")
        if kernel.ndim != 3 or kernel.shape[0] != kernel_size or kernel.shape[2 if cls == "Conv1D" else 1] != filters:
            raise UnsupportedModel(f"layer {name!r} ({cls}): kernel shape {kernel.shape} does not match filters={filters}, kernel_size={kernel_size}")
        if bias is not None and bias.shape != (filters,):
            raise UnsupportedModel(f"layer {name!r} ({cls}): bias shape {bias.shape} does not match filters={filters}")
        layer_cls = _Conv1D if cls == "Conv1D" else _Conv1DTranspose
        return layer_cls(name, kernel, bias, stride, padding, activation)
    if cls == "Dense":
        for key in ("lora_rank", "quantization_config"):
            if config.get(key):
                raise UnsupportedModel(f"layer {name!r} (Dense): {key}={config[key]!r} is not supported")
        activation = _activation(name, config)
        use_bias = bool(config.get("use_bias", True))
        kernel, bias = _weights(name, cls, group, use_bias)
        units = config.get("units")
        if kernel.ndim != 2 or kernel.shape[1] != units or (bias is not None and bias.shape != (units,)):
            raise UnsupportedModel(f"layer {name!r} (Dense): weight shapes {kernel.shape} do not match units={units}")
        return _Dense(name, kernel, bias, activation)
    if cls == "Flatten":
        return _Flatten(name)
    if cls == "Reshape":
        target = config.get("target_shape")
        if not isinstance(target, (list, tuple)) or not all(isinstance(d, int) for d in target):
            raise UnsupportedModel(f"layer {name!r} (Reshape): target_shape={target!r}")
        return _Reshape(name, tuple(target))
    if cls == "Cropping1D":
        cropping = config.get("cropping")
        if isinstance(cropping, int):
            cropping = (cropping, cropping)
        if not isinstance(cropping, (list, tuple)) or len(cropping) != 2 or not all(isinstance(c, int) and c >= 0 for c in cropping):
            raise UnsupportedModel(f"layer {name!r} (Cropping1D): cropping={cropping!r}")
        return _Cropping1D(name, cropping[0], cropping[1])
    raise UnsupportedModel(f"layer {name!r}: class_name={cls!r} is not supported (only {', '.join(_SUPPORTED)})")


def _chain(model_config: dict) -> list[dict]:
    """The saved layers in order, after checking the model is a simple chain."""
    cls = model_config.get("class_name")
    config = model_config.get("config", {})
    layers = config.get("layers")
    if cls not in ("Functional", "Sequential") or not isinstance(layers, list) or not layers:
        raise UnsupportedModel(f"model: class_name={cls!r}; only Functional and Sequential models of layers are supported")
    for layer in layers:  # name an unsupported layer before judging the wiring
        if layer.get("class_name") not in _SUPPORTED:
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
        tensors = [a for a in args if isinstance(a, dict) and a.get("class_name") == "__keras_tensor__"] if args is not None else []
        if (
            args is None
            or len(args) != 1
            or len(tensors) != 1
            or nodes[0].get("kwargs")
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

    def __init__(self, layers: list[_Layer], input_shape: tuple[int, ...], name: str = "model") -> None:
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
                for key, group in groups.items():
                    if "vars" in group and "name" in group["vars"].attrs:
                        by_name[str(group["vars"].attrs["name"])] = group["vars"]
            used: dict[str, int] = {}
            layers = []
            for layer in saved:
                layer_cls = layer.get("class_name")
                config = layer.get("config", {})
                name = config.get("name") or layer.get("name")
                # the group path Keras derives from the class name, deduplicated in layer order
                key = _snake_case(layer_cls or "")
                used[key] = used.get(key, -1) + 1
                path = key if used[key] == 0 else f"{key}_{used[key]}"
                group = by_name.get(name)
                if group is None and groups is not None and path in groups and "vars" in groups[path]:
                    group = groups[path]["vars"]
                built = _build_layer(layer_cls, config, name, group)
                if built is not None:
                    layers.append(built)
        return cls(layers, input_shape, model_config.get("config", {}).get("name", "model"))

    def predict_on_batch(self, windows: np.ndarray) -> np.ndarray:
        """Reconstruct a batch of windows (batch, *input_shape) -> (batch, *output_shape) float32."""
        x = np.asarray(windows, dtype=np.float32)
        if x.shape[1:] != self.input_shape:
            raise ValueError(f"{self.name}: expected inputs of shape (batch, {', '.join(map(str, self.input_shape))}), got {x.shape}")
        result = np.empty((len(x), *self.output_shape), dtype=np.float32)
        # A few hundred windows at a time keep every intermediate in cache (and off fresh,
        # page-faulting allocations): several times faster than whole-batch arrays.
        for lo in range(0, len(x), self.chunk_size):
            y = x[lo : lo + self.chunk_size]
            for layer in self.layers:
                y = layer(y)
            result[lo : lo + len(y)] = y
        return result

    def __call__(self, windows: np.ndarray) -> np.ndarray:
        return self.predict_on_batch(windows)

    def __repr__(self) -> str:
        kinds = ", ".join(type(layer).__name__.lstrip("_") for layer in self.layers)
        return f"NumpyAutoencoder({self.name!r}, input_shape={self.input_shape}, layers=[{kinds}])"
