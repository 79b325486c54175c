"""A separable convolution that holds its weights, for calls that bring only the input.

`tf.nn.separable_conv2d` takes its weights with every call, so its GEMM reads the pointwise
weights as given, [C*M, O], on every call: where their rows are far apart it copies each
panel of them first (schedules/llvm.py, `_packs_panels`), a copy a call of a deep layer
spends a large share of its time on. A network's weights are constants; libraries that
build a model from them (LiteRT's XNNPACK, OpenVINO) pack them once, when the model is
built. `SeparableConv2D` does the same: it holds copies of the weights (changing the
caller's arrays afterwards changes nothing) and packs the pointwise weights, per target, in
the panels its kernel's tiles read (`Backend.pointwise_panel`), once, at the first call
that needs them. The computation is `tf.nn.separable_conv2d`'s, to the bit: only where the
weights lie differs.

Its calls go through the ops' own checks and memo (`dispatch.Dispatcher`); its kernels are
compiled and cached as the ops' are. Where it packs nothing it runs the op's kernel, tuned
where a log holds one; its packed kernels are hand-written, as the tuning logs hold the
op's workloads, which read TF's layout.
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

__all__ = ["SeparableConv2D"]


class SeparableConv2D:
    """`tf.nn.separable_conv2d` with its weights (and bias) held:

        layer = tvmsep.SeparableConv2D(depthwise_filter, pointwise_filter, strides=[1, 1, 1, 1],
                                       padding="SAME", bias=b, activation="relu6")
        y = layer(x)            # == tvmsep.separable_conv2d(x, depthwise_filter, pointwise_filter, ...)
        layer(x, out=y)

    The arguments are `separable_conv2d`'s but the input, checked with it at a call (the
    weights' shapes and dtypes must suit each input); the weights are copied to host arrays.
    """

    def __init__(self, depthwise_filter: Any, pointwise_filter: Any, strides: Any, padding: Any, rate: Any = None,
                 data_format: Any = None, dilations: Any = None, *, bias: Any = None, activation: str | None = None,
                 target: Any = None) -> None:
        self._arguments = (strides, padding, rate, data_format, dilations)
        self._depthwise = _held("depthwise_filter", depthwise_filter)
        self._pointwise = _held("pointwise_filter", pointwise_filter)
        self._bias = None if bias is None else _held("bias", bias)
        self._options = (strides, padding, rate, None, data_format, dilations, activation)
        self._target = target
        self._filters_key = (self._depthwise.shape, self._depthwise.dtype, self._pointwise.shape,
                             self._pointwise.dtype)
        self._named = (("depthwise_filter", self._depthwise), ("pointwise_filter", self._pointwise)) \
            + (() if self._bias is None else (("bias", self._bias),))
        self._packed: dict[int, np.ndarray] = {}  # panel -> the pointwise weights packed in it
        self._dispatcher = Dispatcher(self._kernel_for, resolve_target)

    def __call__(self, input: Any, out: Any = None) -> Any:
        """The layer on `input` (NHWC or NCHW, as `data_format` says): `separable_conv2d`'s result,
        as the input's array type, or `out` when given."""
        if self._target is None and type(input) is np.ndarray:
            done = self._dispatcher.remembered_numpy_call(
                ("separable", input.shape, input.dtype, *self._filters_key),
                (input, self._depthwise, self._pointwise), self._bias, self._options, out)
            if done is not None:
                return done
        return self._dispatcher("separable", (("input", input), *self._named), self._options, self._target, out)

    def __repr__(self) -> str:
        shapes = ", ".join("x".join(map(str, a.shape)) for a in (self._depthwise, self._pointwise))
        strides, padding = self._arguments[:2]
        return (f"<tvmsep.SeparableConv2D {shapes} {self._depthwise.dtype}, strides={strides!r}, padding={padding!r}"
                f"{', +bias' if self._bias is not None else ''}"
                f"{', ' + self._options[-1] if self._options[-1] else ''}>")

    def __reduce__(self) -> tuple:
        keywords = dict(bias=self._bias, activation=self._options[-1], target=self._target)
        return _rebuilt, ((self._depthwise, self._pointwise, *self._arguments), keywords)

    def _kernel_for(self, wl: Workload, target: Any) -> Any:
        """The kernel of `wl` (TF's layout, as the dispatcher checked the call) with the pointwise
        weights packed where the target's kernel reads them packed."""
        resolved = resolve_target(target)
        panel = backend_for(resolved).pointwise_panel(wl, resolved)
        if not panel:
            return ops.get_kernel(wl, target)
        packed = self._packed.get(panel)
        if packed is None:
            panels = self._pointwise.reshape(wl.mid_channels, wl.out_channels // panel, panel)
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


def _held(name: str, value: Any) -> np.ndarray:
    """A host copy of `value` (`_on_a_line`), which the caller may then change or free."""
    try:
        values = np.asarray(value)
    except Exception as e:
        raise TypeError(f"SeparableConv2D: `{name}` must be an array numpy can read (on the host), "
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


def _rebuilt(arguments: tuple, keywords: dict) -> SeparableConv2D:
    return SeparableConv2D(*arguments, **keywords)
