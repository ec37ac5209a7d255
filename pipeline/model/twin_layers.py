"""The layers of the NumPy twin (``pipeline.model.numpy_twin``): Keras 3 semantics in NumPy,
as the twin's docstring states them."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.lib.stride_tricks import as_strided


class UnsupportedModel(ValueError):
    """The saved model uses something this NumPy runtime does not implement; use Keras instead."""


_ACTIVATIONS = ("relu", "linear")
SUPPORTED_LAYERS = (
    "InputLayer",
    "Conv1D",
    "Conv1DTranspose",
    "Dense",
    "Flatten",
    "Reshape",
    "Cropping1D",
    "RepeatVector",
    "LSTM",
)


def snake_case(name: str) -> str:
    """Keras' ``naming.to_snake_case``, which names the layers' groups in the weights file."""
    name = re.sub(r"\W+", "", name)
    name = re.sub("(.)([A-Z][a-z]+)", r"\1_\2", name)
    return re.sub("([a-z])([A-Z])", r"\1_\2", name).lower()


def one_value(layer: str, field_name: str, value: Any) -> int:
    """A 1-D conv setting saved as ``[n]`` (or ``n``) -> ``n``."""
    if isinstance(value, int):
        return value
    if isinstance(value, (list, tuple)) and len(value) == 1 and isinstance(value[0], int):
        return value[0]
    raise UnsupportedModel(f"layer {layer!r}: {field_name}={value!r} is not a single integer")


def activation_name(layer: str, config: dict) -> str:
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
class Layer:
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
class Conv1D(Layer):
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
        length, channels = check_3d(self.name, shape)
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
class Conv1DTranspose(Layer):
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
        length, channels = check_3d(self.name, shape)
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
class Dense(Layer):
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
class Flatten(Layer):
    def output_shape(self, shape):
        return (math.prod(shape),)

    def __call__(self, x):
        return x.reshape(len(x), -1)


@dataclass
class Reshape(Layer):
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
class Cropping1D(Layer):
    start: int
    end: int

    def output_shape(self, shape):
        length, channels = check_3d(self.name, shape)
        if self.start + self.end >= length:
            raise UnsupportedModel(f"layer {self.name!r}: cropping=({self.start}, {self.end}) leaves nothing of {length} steps")
        return (length - self.start - self.end, channels)

    def __call__(self, x):
        return x[:, self.start : x.shape[1] - self.end]


@dataclass
class RepeatVector(Layer):
    n: int

    def output_shape(self, shape):
        if len(shape) != 1:
            raise UnsupportedModel(f"layer {self.name!r}: expects (features,) inputs, gets shape {shape}")
        return (self.n, shape[0])

    def __call__(self, x):
        return np.ascontiguousarray(np.broadcast_to(x[:, None, :], (len(x), self.n, x.shape[1])))


def _sigmoid(x: np.ndarray) -> np.ndarray:
    """Keras' sigmoid, 1 / (1 + exp(-x)), in place; exp overflow to inf gives 0 as it should."""
    with np.errstate(over="ignore"):
        np.negative(x, out=x)
        np.exp(x, out=x)
        x += 1.0
        np.reciprocal(x, out=x)
    return x


@dataclass
class LSTM(Layer):
    """Keras' LSTM (tanh activation, sigmoid recurrent activation, no mask, no dropout at inference).

    Gates in Keras' order i, f, c, o of the 4 * units columns: z = x_t W + h_{t-1} U + b;
    i, f, o = sigmoid(z_i, z_f, z_o); c_t = f * c_{t-1} + i * tanh(z_c); h_t = o * tanh(c_t).
    The input projection of every step is one matmul; a repeated input (after RepeatVector) is
    projected once.
    """

    kernel: np.ndarray  # (in, 4 * units)
    recurrent: np.ndarray  # (units, 4 * units)
    bias: np.ndarray | None
    return_sequences: bool
    repeated_input: bool = False  # its input comes from a RepeatVector: every step's input is the same

    def output_shape(self, shape):
        length, channels = check_3d(self.name, shape)
        if channels != self.kernel.shape[0]:
            raise UnsupportedModel(f"layer {self.name!r}: kernel expects {self.kernel.shape[0]} channels, gets {channels}")
        units = self.recurrent.shape[0]
        return (length, units) if self.return_sequences else (units,)

    def __call__(self, x):
        batch, steps, _ = x.shape
        units = self.recurrent.shape[0]
        repeated = self.repeated_input
        if repeated:
            projected = x[:, 0] @ self.kernel
            if self.bias is not None:
                projected += self.bias
        else:
            projected = x.reshape(batch * steps, -1) @ self.kernel
            if self.bias is not None:
                projected += self.bias
            projected = projected.reshape(batch, steps, 4 * units)
        h = np.zeros((batch, units), dtype=np.float32)
        c = np.zeros((batch, units), dtype=np.float32)
        out = np.empty((batch, steps, units), dtype=np.float32) if self.return_sequences else None
        for t in range(steps):
            z = h @ self.recurrent
            z += projected if repeated else projected[:, t]
            i = _sigmoid(z[:, :units])
            f = _sigmoid(z[:, units : 2 * units])
            g = np.tanh(z[:, 2 * units : 3 * units])
            o = _sigmoid(z[:, 3 * units :])
            c = f * c + i * g
            h = o * np.tanh(c)
            if out is not None:
                out[:, t] = h
        return out if out is not None else h


def check_3d(name: str, shape: tuple[int, ...]) -> tuple[int, int]:
    if len(shape) != 2:
        raise UnsupportedModel(f"layer {name!r}: expects (steps, channels) inputs, gets shape {shape}")
    return shape


# --- loading -----------------------------------------------------------------------------------
