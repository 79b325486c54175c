"""The ops as layers that hold their weights, for calls that bring only the input.

`tf.nn.depthwise_conv2d` and `tf.nn.separable_conv2d` take their weights with every call. A
network's weights are constants, and the libraries that build a model from them (LiteRT's
XNNPACK, OpenVINO) prepare them once, when the model is built. The layers here do the same:
each holds copies of its weights (changing the caller's arrays afterwards changes nothing)
and its options, so that a call brings the input alone, and two things follow.

- A call costs less. The op checks its arguments once per distinct set of argument values,
  but finds that set again on every call, by a key of every array's shape and dtype and the
  options serialized (`dispatch.Dispatcher`). A layer's weights and options are fixed, so
  once the ops' checks have passed an input's shape and dtype, the layer finds its kernel by
  those two alone and hands the arrays straight over.
- `SeparableConv2D` packs its pointwise weights. The op's GEMM reads them as given, [C*M, O],
  and where their rows are far apart it copies each panel of them first, on every call
  (schedules/llvm.py, `_packs_panels`): a copy a deep layer spends a large share of its time
  on. The layer packs them, per target, in the panels its kernel's tiles read
  (`Backend.pointwise_panel`), once, at the first call that needs them.

The results are the ops', to the bit: only where the weights lie differs. The first call with
an input goes through the ops' own checks (the same errors); kernels are compiled and cached as
the ops' are. Where a layer packs nothing it runs the op's kernel, tuned where a log holds
one; packed kernels are hand-written, as the tuning logs hold the op's workloads, which read
TF's layout. A layer keeps the kernels it found: after `ops.forget_kernels` (new tuning logs),
layers made before it still run the kernels found before it.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import numpy as np

from . import ops, runtime
from .backends import backend_for
from .dispatch import Dispatcher
from .spec import Workload
from .target import resolve_target

__all__ = ["DepthwiseConv2D", "SeparableConv2D"]


class _Layer:
    """An op with its weights and options held (module docstring). `_OP` names the op; the
    weights are given in the op's order, the bias last."""

    _OP: str

    def __init__(self, weights: tuple[tuple[str, Any], ...], arguments: tuple, bias: Any, activation: str | None,
                 target: Any) -> None:
        self._arguments = arguments  # (strides, padding, rate, data_format, dilations), as given
        strides, padding, rate, data_format, dilations = arguments
        self._options = (strides, padding, rate, None, data_format, dilations, activation)
        self._target = target
        held = [(name, _held(type(self).__name__, name, value)) for name, value in weights]
        if bias is not None:
            held.append(("bias", _held(type(self).__name__, "bias", bias)))
        self._named = tuple(held)
        self._weights = tuple(value for _, value in held)  # the arrays after the input, in call order
        self._dispatcher = Dispatcher(self._kernel_for, resolve_target)
        # (shape, dtype) of an input the ops' checks passed -> its kernel, for the short path
        self._kernels: dict[tuple, Any] = {}

    def __call__(self, input: Any, out: Any = None) -> Any:
        """The layer on `input` (NHWC or NCHW, as `data_format` says): the op's result, as the
        input's array type, or `out` when given."""
        if type(input) is np.ndarray:
            kernel = self._kernels.get((input.shape, input.dtype))
            if kernel is not None:
                done = kernel.run_numpy((input, *self._weights), out)
                if done is not None:
                    return done
        return self._dispatcher(self._OP, (("input", input), *self._named), self._options, self._target, out)

    def __repr__(self) -> str:
        shapes = ", ".join("x".join(map(str, a.shape)) for name, a in self._named if name != "bias")
        strides, padding = self._arguments[:2]
        bias = ", +bias" if self._named[-1][0] == "bias" else ""
        activation = f", {self._options[-1]}" if self._options[-1] else ""
        return (f"<tvmsep.{type(self).__name__} {shapes} {self._weights[0].dtype}, strides={strides!r}, "
                f"padding={padding!r}{bias}{activation}>")

    def __reduce__(self) -> tuple:
        weights = tuple(value for name, value in self._named if name != "bias")
        bias = self._weights[-1] if self._named[-1][0] == "bias" else None
        keywords = dict(bias=bias, activation=self._options[-1], target=self._target)
        return _rebuilt, (type(self), (*weights, *self._arguments), keywords)

    def _kernel_for(self, wl: Workload, target: Any) -> Any:
        """The kernel of `wl`, which the dispatcher checked: also the kernel of every later
        numpy input of the same shape and dtype, as the weights and options are the same."""
        kernel = self._prepared_kernel(wl, target)
        self._kernels[(wl.input_shape, np.dtype(wl.dtype))] = kernel
        return kernel

    def _prepared_kernel(self, wl: Workload, target: Any) -> Any:
        return ops.get_kernel(wl, target)


class DepthwiseConv2D(_Layer):
    """`tf.nn.depthwise_conv2d` with its filter (and bias) held:

        layer = tvmsep.DepthwiseConv2D(filter, strides=[1, 1, 1, 1], padding="SAME")
        y = layer(x)            # == tvmsep.depthwise_conv2d(x, filter, [1, 1, 1, 1], "SAME")
        layer(x, out=y)

    The arguments are `depthwise_conv2d`'s but the input, checked with it at its first call
    (the filter's shape and dtype must suit each input); the weights are copied to host arrays.
    """

    _OP = "depthwise"

    def __init__(self, filter: Any, strides: Any, padding: Any, rate: Any = None, data_format: Any = None,
                 dilations: Any = None, *, bias: Any = None, activation: str | None = None,
                 target: Any = None) -> None:
        super().__init__((("filter", filter),), (strides, padding, rate, data_format, dilations), bias, activation,
                         target)


class SeparableConv2D(_Layer):
    """`tf.nn.separable_conv2d` with its weights (and bias) held, the pointwise weights packed:

        layer = tvmsep.SeparableConv2D(depthwise_filter, pointwise_filter, strides=[1, 1, 1, 1],
                                       padding="SAME", bias=b, activation="relu6")
        y = layer(x)            # == tvmsep.separable_conv2d(x, depthwise_filter, pointwise_filter, ...)
        layer(x, out=y)

    The arguments are `separable_conv2d`'s but the input, checked with it at its first call
    (the weights' shapes and dtypes must suit each input); the weights are copied to host arrays.
    """

    _OP = "separable"

    def __init__(self, depthwise_filter: Any, pointwise_filter: Any, strides: Any, padding: Any, rate: Any = None,
                 data_format: Any = None, dilations: Any = None, *, bias: Any = None, activation: str | None = None,
                 target: Any = None) -> None:
        super().__init__((("depthwise_filter", depthwise_filter), ("pointwise_filter", pointwise_filter)),
                         (strides, padding, rate, data_format, dilations), bias, activation, target)
        self._packed: dict[int, np.ndarray] = {}  # panel -> the pointwise weights packed in it

    def _prepared_kernel(self, wl: Workload, target: Any) -> Any:
        """With the pointwise weights packed where the target's kernel reads them packed."""
        resolved = resolve_target(target)
        panel = backend_for(resolved).pointwise_panel(wl, resolved)
        if not panel:
            return ops.get_kernel(wl, target)
        packed = self._packed.get(panel)
        if packed is None:
            panels = self._weights[1].reshape(wl.mid_channels, wl.out_channels // panel, panel)
            packed = self._packed[panel] = _on_a_line(panels.transpose(1, 0, 2))
        return _PackedWeights(ops.get_kernel(dataclasses.replace(wl, pointwise_panel=panel), target), packed)


class _PackedWeights:
    """A packed workload's kernel, called with the layer's arrays in TF's layouts: the pointwise
    weights (the third array) are passed packed."""

    def __init__(self, kernel: runtime.Kernel, packed: np.ndarray) -> None:
        self._kernel = kernel
        self._packed = packed

    def run(self, inputs: Sequence[runtime.Array], out: runtime.Array | None,
            home: runtime.Home = runtime.HOST) -> runtime.Array:
        return self._kernel.run(self._swapped(inputs), out, home)

    def run_numpy(self, inputs: Sequence[np.ndarray], out: Any) -> np.ndarray | None:
        return self._kernel.run_numpy(self._swapped(inputs), out)

    def _swapped(self, inputs: Sequence[Any]) -> tuple:
        return (inputs[0], inputs[1], self._packed, *inputs[3:])


def _held(layer: str, name: str, value: Any) -> np.ndarray:
    """A host copy of `value` (`_on_a_line`), which the caller may then change or free."""
    try:
        values = np.asarray(value)
    except Exception as e:
        raise TypeError(f"{layer}: `{name}` must be an array numpy can read (on the host), "
                        f"got {type(value).__name__}: {e}") from e
    return _on_a_line(values)


def _on_a_line(values: np.ndarray) -> np.ndarray:
    """A C-contiguous copy of `values` that starts on a cache line. numpy starts a large array
    16 bytes past one, where each row of a panel would span a line more than it fills."""
    memory = np.empty(values.nbytes + runtime.CACHE_LINE_BYTES, np.uint8)
    offset = -memory.ctypes.data % runtime.CACHE_LINE_BYTES
    copy = np.ndarray(values.shape, values.dtype, memory, offset)
    copy[...] = values
    return copy


def _rebuilt(layer: type, arguments: tuple, keywords: dict) -> _Layer:
    return layer(*arguments, **keywords)
