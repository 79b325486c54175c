"""The body of every public call: check the arguments, find a kernel, hand the arrays over.

Shared by the ops (kernels compiled on demand) and by loaded bundles
(kernels compiled ahead of time), which differ only in how a workload finds
its kernel. Repeated calls with the same argument values skip validation
through a small memo keyed by those values, so the per-call cost is a dict
lookup plus the array hand-off. Needs only the TVM runtime.
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np
import tvm

from . import runtime
from .spec import Workload, depthwise_workload, separable_workload, split_bias

__all__ = ["Dispatcher"]

_MEMO_LIMIT = 4096


class Dispatcher:
    """`dispatcher(op, arrays, options, target, out)`: one checked call of `op`.

    kernel_for(workload, target) -> Kernel finds (or compiles) the kernel;
    check_target(target) raises on a target that is wrong even when there is
    nothing to compute (an empty batch).
    """

    def __init__(self, kernel_for: Callable[[Workload, Any], runtime.Kernel],
                 check_target: Callable[[Any], Any]) -> None:
        self._kernel_for = kernel_for
        self._check_target = check_target
        # (op, shapes, dtypes, frozen options, frozen target) -> (workload, kernel)
        self._memo: dict[tuple, tuple[Workload, Any]] = {}

    def clear(self) -> None:
        """Forget every memoized workload and kernel (after the kernels' source changed)."""
        self._memo.clear()

    def __call__(self, op: str, arrays: tuple[tuple[str, Any], ...], options: tuple, target: Any,
                 out: Any) -> Any:
        converted = [runtime.to_array(name, value) for name, value in arrays]
        inputs = [a for a, _ in converted]
        home = converted[0][1]
        try:
            memo_key = (op, *[(a.shape, a.dtype) for a in inputs], _freeze(options), _freeze(target))
        except TypeError:
            memo_key = None  # an unhashable argument: validate it the long way (spec raises if it is wrong)
        hit = self._memo.get(memo_key) if memo_key is not None else None
        if hit is None:
            wl = _workload(op, inputs, options)
            self._check_target(target)
            hit = (wl, self._kernel_for(wl, target) if wl.batch else _EmptyBatch(wl))
            if memo_key is not None and len(self._memo) < _MEMO_LIMIT:
                self._memo[memo_key] = hit
        wl, kernel = hit
        if out is None and home.empty is not None:
            out = home.empty(wl.output_shape, wl.dtype)  # on the caller's GPU, as the caller's type
        if out is None:
            return home.wrap(kernel.run(inputs, None, home))
        kernel.run(inputs, runtime.output_array(f"{op}_conv2d", out, wl, inputs), home)
        return out


    def depthwise(self, input: Any, filter: Any, strides: Any, padding: Any, rate: Any, name: Any,
                  data_format: Any, dilations: Any, bias: Any, activation: Any, target: Any, out: Any) -> Any:
        """`depthwise_conv2d`'s arguments, in its order, named as its errors name them."""
        return self("depthwise", _arrays(("input", input), ("filter", filter), bias=bias),
                    (strides, padding, rate, name, data_format, dilations, activation), target, out)

    def separable(self, input: Any, depthwise_filter: Any, pointwise_filter: Any, strides: Any, padding: Any,
                  rate: Any, name: Any, data_format: Any, dilations: Any, bias: Any, activation: Any,
                  target: Any, out: Any) -> Any:
        """`separable_conv2d`'s arguments, in its order, named as its errors name them."""
        return self("separable", _arrays(("input", input), ("depthwise_filter", depthwise_filter),
                                         ("pointwise_filter", pointwise_filter), bias=bias),
                    (strides, padding, rate, name, data_format, dilations, activation), target, out)


def _arrays(*named: tuple[str, Any], bias: Any) -> tuple[tuple[str, Any], ...]:
    """The named arrays of a call, the bias last when there is one."""
    return named if bias is None else (*named, ("bias", bias))


# Values that stand for themselves in a memo key: no two of them of different
# types compare equal (bool, which equals 0 or 1, is not among them).
_PLAIN = frozenset({int, str, type(None)})


def _freeze(value: Any) -> Any:
    """A hashable stand-in for an argument value (lists become tuples).

    Types are kept for scalars so that, e.g., 2 and 2.0 never share a memo entry.
    """
    kind = type(value)
    if kind in _PLAIN:
        return value
    if kind is list or kind is tuple:
        return tuple([v if type(v) in _PLAIN else _freeze(v) for v in value])
    if isinstance(value, np.ndarray):
        return ("ndarray", value.dtype.str, value.shape, value.tobytes())
    if isinstance(value, tvm.target.Target):
        return str(value)
    if isinstance(value, dict):
        return tuple(sorted((k, _freeze(v)) for k, v in value.items()))
    hash(value)  # raises TypeError for anything else unhashable
    return kind, value


class _EmptyBatch:
    """Stands in for a kernel when the batch is empty: nothing to compile or run."""

    def __init__(self, workload: Workload) -> None:
        self.workload = workload

    def run(self, inputs: list[runtime.Array], out: runtime.Array | None, home: runtime.Home) -> runtime.Array:
        return np.empty(self.workload.output_shape, self.workload.dtype) if out is None else out


def _workload(op: str, inputs: list[runtime.Array], options: tuple) -> Workload:
    """The inputs are in call order, the bias (when given) last."""
    *options, activation = options
    (x, *filters), bias = split_bias(op, inputs)
    shapes = [v for a in filters for v in (a.shape, a.dtype)]
    make = depthwise_workload if op == "depthwise" else separable_workload
    return make(x.shape, x.dtype, *shapes, *options, bias=None if bias is None else (bias.shape, bias.dtype),
                activation=activation)
