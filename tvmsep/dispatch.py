"""The body of every public call: check the arguments, find a kernel, hand the arrays over.

Shared by the ops (kernels compiled on demand) and by loaded bundles
(kernels compiled ahead of time), which differ only in how a workload finds
its kernel. Repeated calls with the same argument values skip validation
through a small memo keyed by those values, so the per-call cost is a dict
lookup plus the array hand-off. Needs only the TVM runtime.

The option values enter the key serialized (`_serialized`): a serialization
tells apart values that compare equal but that the checks treat differently
(1, 1.0 and True; a list and a numpy array of the same numbers), and it does
so in C, faster than a Python walk over the values. The commonest call, numpy
arrays and the default target, builds that key from its arguments as they
come and runs from the memo without the general path's conversions
(`_remembered_numpy_call`): on a small layer the call's Python is most of
its time, so that path makes as few Python calls as it can, and the public
ops are the Dispatcher's own methods, not functions that pass their
arguments on.
"""

from __future__ import annotations

import importlib
import marshal
import math
import pickle
from typing import Any, Callable

import numpy as np
import psutil
import tvm

from . import runtime
from .spec import Workload, depthwise_workload, separable_workload, split_bias

__all__ = ["Dispatcher"]

_MEMO_LIMIT = 4096


class Dispatcher:
    """The public ops, `depthwise_conv2d` and `separable_conv2d`, as methods: the module's functions
    (and a bundle's) are these bound methods themselves, as a function that passed its arguments on
    would cost a tenth of a small layer's call. `dispatcher(op, arrays, options, target, out)`: one
    checked call of `op`, their general path.

    kernel_for(workload, target) -> Kernel finds (or compiles) the kernel;
    check_target(target) raises on a target that is wrong even when there is
    nothing to compute (an empty batch); `global_name` ("module:attribute"), where
    the dispatcher is a module's: it pickles as that name, and so do its ops (as a
    module's functions do, for multiprocessing); its kernels would not pickle.
    """

    def __init__(self, kernel_for: Callable[[Workload, Any], runtime.Kernel],
                 check_target: Callable[[Any], Any], global_name: str | None = None) -> None:
        self._kernel_for = kernel_for
        self._check_target = check_target
        self._global_name = global_name
        # (op, shape and dtype of each array but the bias in turn, the bias's (shape, dtype) or None,
        # serialized options and target) -> (workload, kernel)
        self._memo: dict[tuple, tuple[Workload, Any]] = {}

    def clear(self) -> None:
        """Forget every memoized workload and kernel (after the kernels' source changed)."""
        self._memo.clear()

    def __reduce__(self) -> tuple:
        if self._global_name is None:
            raise TypeError("a bundle's ops do not pickle: pass the bundle's path, and tvmsep.load it there")
        return _global, tuple(self._global_name.split(":"))

    def __call__(self, op: str, arrays: tuple[tuple[str, Any], ...], options: tuple, target: Any,
                 out: Any) -> Any:
        inputs, home, arrays_key = _converted(op, arrays)
        wl, kernel = self._find(op, inputs, arrays_key, options, target)
        if out is None and home.empty is not None:
            out = home.empty(wl.output_shape, wl.dtype)  # on the caller's GPU, as the caller's type
        if out is None:
            result = kernel.run(inputs, None, home)
            return result if home is runtime.HOST else home.wrap(result)
        if type(out) is not np.ndarray or kernel.run_numpy(inputs, out) is None:
            kernel.run(inputs, runtime.output_array(op, out, wl, inputs), home)
        return out

    def _find(self, op: str, inputs: list[runtime.Array], arrays_key: list, options: tuple,
              target: Any) -> tuple[Workload, Any]:
        """(workload, kernel) of a call: from the memo when these argument values were seen,
        else checked by spec and found by `kernel_for`, and remembered."""
        # A Target serializes slowly (15 µs); its string names it. `is None` first: isinstance costs 0.1 µs.
        target_key = target if target is None or not isinstance(target, tvm.target.Target) else str(target)
        serialized = _serialized((options, target_key))
        memo_key = None if serialized is None else (*arrays_key, serialized)
        hit = None if memo_key is None else self._memo.get(memo_key)
        if hit is None:
            wl = _workload(op, inputs, options)
            self._check_target(target)
            _check_fits_in_memory(op, wl)
            hit = (wl, self._kernel_for(wl, target) if wl.batch else _EmptyBatch(wl))
            if memo_key is not None and len(self._memo) < _MEMO_LIMIT:
                self._memo[memo_key] = hit
        return hit

    def depthwise_conv2d(self, input: Any, filter: Any, strides: Any, padding: Any, rate: Any = None,
                         name: Any = None, data_format: Any = None, dilations: Any = None, *, bias: Any = None,
                         activation: str | None = None, target: Any = None, out: Any = None) -> Any:
        """`tf.nn.depthwise_conv2d`, compiled by TVM.

        input: 4-D, NHWC [N, H, W, C] or NCHW [N, C, H, W]; filter: [KH, KW, C, M].
        Returns [N, OH, OW, C*M] (NHWC) or [N, C*M, OH, OW], the input's dtype, as
        the input's array type (numpy, or torch/JAX via DLPack), or `out` when given.
        `bias` ([C*M], the input's dtype) and `activation` ("relu" or "relu6") are an
        optional epilogue fused into the kernel: activation(conv + bias), rounded once.
        `target`: None (this CPU), a TVM target dict or `tvm.target.Target`; a loaded
        bundle's kernels run on the target they were compiled for and take none.
        """
        options = (strides, padding, rate, name, data_format, dilations, activation)
        if target is None and type(input) is np.ndarray and type(filter) is np.ndarray:
            done = self._remembered_numpy_call(("depthwise", input.shape, input.dtype, filter.shape, filter.dtype),
                                               (input, filter), bias, options, out)
            if done is not None:
                return done
        return self("depthwise", _arrays((("input", input), ("filter", filter)), bias), options, target, out)

    def separable_conv2d(self, input: Any, depthwise_filter: Any, pointwise_filter: Any, strides: Any,
                         padding: Any, rate: Any = None, name: Any = None, data_format: Any = None,
                         dilations: Any = None, *, bias: Any = None, activation: str | None = None,
                         target: Any = None, out: Any = None) -> Any:
        """`tf.nn.separable_conv2d`, compiled by TVM: depthwise, then a 1x1 channel mix.

        depthwise_filter: [KH, KW, C, M]; pointwise_filter: [1, 1, C*M, O].
        Returns [N, OH, OW, O] (NHWC) or [N, O, OH, OW]; otherwise as `depthwise_conv2d`.
        `bias` ([O]) and `activation` apply to the pointwise result, as in Keras'
        SeparableConv2D; the depthwise intermediate gets neither.
        """
        options = (strides, padding, rate, name, data_format, dilations, activation)
        if target is None and type(input) is np.ndarray and type(depthwise_filter) is np.ndarray \
                and type(pointwise_filter) is np.ndarray:
            done = self._remembered_numpy_call(
                ("separable", input.shape, input.dtype, depthwise_filter.shape, depthwise_filter.dtype,
                 pointwise_filter.shape, pointwise_filter.dtype), (input, depthwise_filter, pointwise_filter),
                bias, options, out)
            if done is not None:
                return done
        return self("separable", _arrays((("input", input), ("depthwise_filter", depthwise_filter),
                                          ("pointwise_filter", pointwise_filter)), bias), options, target, out)

    def _remembered_numpy_call(self, arrays_key: tuple, arrays: tuple, bias: Any, options: tuple,
                               out: Any) -> Any:
        """The common call, its arrays numpy and its target the default, run straight from the memo
        when `__call__` has seen its argument values; None when it has not, or when a value is not as
        simple as that, and `__call__` takes the call. `arrays_key`: the op, then the shape and dtype
        of each array but the bias, in turn, which the caller writes out (a loop over the arrays
        would cost more than the rest of this path); the key is completed as `_find`'s."""
        if bias is None:
            bias_key = None
        elif type(bias) is np.ndarray:
            arrays, bias_key = (*arrays, bias), (bias.shape, bias.dtype)
        else:
            return None
        try:
            serialized = marshal.dumps((options, None), 2)  # `_serialized`'s first case, without its call
        except ValueError:
            serialized = _serialized((options, None))
        hit = self._memo.get((*arrays_key, bias_key, serialized))
        return None if hit is None else hit[1].run_numpy(arrays, out)


def _global(module: str, attribute: str) -> Any:
    return getattr(importlib.import_module(module), attribute)


def _converted(op: str, arrays: tuple[tuple[str, Any], ...]) -> tuple[list[runtime.Array], runtime.Home, list]:
    """The named arrays as a kernel takes them, where the first one lives (its results go
    there too), and the start of the memo's key: the op, the shape and dtype of each array
    but the bias in turn, then the bias's (shape, dtype), or None without one."""
    inputs, home, key, bias_key = [], None, [op], None
    for name, value in arrays:
        # to_array's own first case, taken here: the call would cost 0.1 µs per array.
        array, where = (value, runtime.HOST) if type(value) is np.ndarray else runtime.to_array(name, value)
        inputs.append(array)
        if name == "bias":
            bias_key = (array.shape, array.dtype)
        else:
            key += (array.shape, array.dtype)
        if home is None:
            home = where
    return inputs, home, [*key, bias_key]


def _serialized(value: Any) -> bytes | None:
    """`value` (option values and a target key) as bytes that only an identical value has, or None
    when it cannot be serialized (no memo then: spec checks the call every time). marshal first: it
    is the faster, and it writes only exact builtin types (version 2: without back-references, whose
    use depends on reference counts); pickle for the rest (numpy scalars, arrays, subclasses). The two
    never agree on a value's bytes: marshal begins a tuple with "(", pickle with its protocol byte."""
    try:
        return marshal.dumps(value, 2)
    except ValueError:
        pass
    try:
        return pickle.dumps(value)
    except Exception:
        return None


def _arrays(named: tuple[tuple[str, Any], ...], bias: Any) -> tuple[tuple[str, Any], ...]:
    """The named arrays of a call, the bias last when there is one."""
    return named if bias is None else (*named, ("bias", bias))


class _EmptyBatch:
    """Stands in for a kernel when the batch is empty: nothing to compile or run."""

    def __init__(self, workload: Workload) -> None:
        self.workload = workload

    def run(self, inputs: list[runtime.Array], out: runtime.Array | None, home: runtime.Home) -> runtime.Array:
        return self.run_numpy(inputs, None) if out is None else out

    def run_numpy(self, inputs: list[np.ndarray], out: Any) -> np.ndarray | None:
        """A repeated call's short path (`Dispatcher._remembered_numpy_call`) takes this, as a kernel's;
        None for an `out` that `runtime.output_array` is to check."""
        if out is None:
            return np.empty(self.workload.output_shape, self.workload.dtype)
        return None


def _check_fits_in_memory(op: str, wl: Workload) -> None:
    """Refuse, before compiling or allocating anything, a call whose output and intermediate
    need more than this machine's memory: numpy would refuse the output only after the
    compile, and an intermediate the kernel allocates could take the machine's memory first."""
    item = np.dtype(wl.dtype).itemsize
    needed = math.prod(wl.output_shape) * item
    if wl.op == "separable":  # the depthwise result, in the accumulator's precision
        needed += wl.batch * wl.out_height * wl.out_width * wl.mid_channels * max(item, 4)
    total = psutil.virtual_memory().total
    if needed > total:
        raise ValueError(f"{op}_conv2d: the result of {wl.describe()} needs {needed / 2**30:.1f} GiB, more than "
                         f"this machine's {total / 2**30:.1f} GiB of memory")


def _workload(op: str, inputs: list[runtime.Array], options: tuple) -> Workload:
    """The inputs are in call order, the bias (when given) last."""
    *options, activation = options
    (x, *filters), bias = split_bias(op, inputs)
    shapes = [v for a in filters for v in (a.shape, a.dtype)]
    make = depthwise_workload if op == "depthwise" else separable_workload
    return make(x.shape, x.dtype, *shapes, *options, bias=None if bias is None else (bias.shape, bias.dtype),
                activation=activation)
