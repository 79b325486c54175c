"""The public ops: TF's signatures, compiled kernels underneath.

Each call does three things: check the arguments (spec), find the compiled
kernel (memory, disk cache, or compile), run it. Repeated calls with the
same argument values skip validation through a small memo keyed by those
values, so the per-call cost is a dict lookup plus the array hand-off.
"""

from __future__ import annotations

import threading
from typing import Any

import numpy as np
import tvm

from . import build, runtime
from .cache import ModuleCache, cache_key
from .spec import Workload, depthwise_workload, separable_workload
from .target import resolve_target

__all__ = ["depthwise_conv2d", "separable_conv2d", "get_kernel", "module_cache"]

module_cache = ModuleCache()
_kernels: dict[tuple[Workload, str], runtime.Kernel] = {}
_kernels_lock = threading.Lock()
# (op, shapes, dtypes, frozen args, target id) -> (workload, kernel)
_memo: dict[tuple, tuple[Workload, runtime.Kernel]] = {}
_MEMO_LIMIT = 4096


def get_kernel(wl: Workload, target: Any = None) -> runtime.Kernel:
    """The compiled kernel for `wl` on `target` (None: this CPU)."""
    target = resolve_target(target)
    if target.kind.name != "llvm":
        raise ValueError(f"`target`: the ops run on the CPU only for now; {target.kind.name} kernels can be "
                         "compiled and exported (tvmsep.build.compile_module) but not yet called from here")
    index = (wl, str(target))
    kernel = _kernels.get(index)
    if kernel is not None:
        return kernel
    schedules = build.schedules_for(target)
    trace = build.tuned_trace(wl, target)
    key = cache_key(wl, target, schedules, trace)
    module, origin = module_cache.get(key, lambda: build.compile_module(wl, target, trace))
    kernel = runtime.Kernel(wl, module["main"], origin)
    with _kernels_lock:
        return _kernels.setdefault(index, kernel)


def _freeze(value: Any) -> Any:
    """A hashable stand-in for an argument value (lists become tuples).

    Types are kept for scalars so that, e.g., 2 and 2.0 never share a memo entry.
    """
    kind = type(value)
    if kind is list or kind is tuple:
        return tuple(_freeze(v) for v in value)
    if kind is str or value is None:
        return value
    if isinstance(value, np.ndarray):
        return ("ndarray", value.dtype.str, value.shape, value.tobytes())
    if isinstance(value, tvm.target.Target):
        return str(value)
    if isinstance(value, dict):
        return tuple(sorted((k, _freeze(v)) for k, v in value.items()))
    hash(value)  # raises TypeError for anything else unhashable
    return kind, value


def _call(op: str, arrays: tuple[tuple[str, Any], ...], options: tuple, target: Any, out: Any) -> Any:
    """Check, find the kernel, allocate or take `out`, launch."""
    converted = [runtime.to_numpy(name, value) for name, value in arrays]
    inputs = [a for a, _ in converted]
    wrap = converted[0][1]
    try:
        memo_key = (op, tuple((a.shape, a.dtype.str) for a in inputs), _freeze(options), _freeze(target))
    except TypeError:
        memo_key = None  # an unhashable argument: validate it the long way (spec raises if it is wrong)
    hit = _memo.get(memo_key) if memo_key is not None else None
    if hit is None:
        wl = _workload(op, inputs, options)
        resolve_target(target)  # a bad target is an error even when there is nothing to compute
        hit = (wl, get_kernel(wl, target) if wl.batch else _EmptyBatch(wl))
        if memo_key is not None and len(_memo) < _MEMO_LIMIT:
            _memo[memo_key] = hit
    wl, kernel = hit
    if out is None:
        return wrap(kernel.run(inputs, None))
    kernel.run(inputs, _checked_out(out, wl, inputs, op))
    return out


class _EmptyBatch:
    """Stands in for a kernel when the batch is empty: nothing to compile or run."""

    def __init__(self, workload: Workload) -> None:
        self.workload = workload

    def run(self, inputs: list[np.ndarray], out: np.ndarray | None) -> np.ndarray:
        return np.empty(self.workload.output_shape, self.workload.dtype) if out is None else out


def _workload(op: str, inputs: list[np.ndarray], options: tuple) -> Workload:
    strides, padding, rate, name, data_format, dilations = options
    if op == "depthwise":
        x, f = inputs
        return depthwise_workload(x.shape, x.dtype, f.shape, f.dtype, strides, padding, rate, name,
                                  data_format, dilations)
    x, f, p = inputs
    return separable_workload(x.shape, x.dtype, f.shape, f.dtype, p.shape, p.dtype, strides, padding, rate,
                              name, data_format, dilations)


def _checked_out(out: Any, wl: Workload, inputs: list[np.ndarray], op: str) -> np.ndarray:
    """`out=` as a writable numpy view of the caller's memory, or a clear error."""
    fn = f"{op}_conv2d"
    if isinstance(out, np.ndarray):
        view = out
    elif hasattr(out, "__dlpack__"):
        view, _ = runtime.to_numpy("out", out)
    else:
        raise TypeError(f"{fn}: `out` must be a numpy array or a DLPack CPU tensor, got {type(out).__name__}")
    if view.shape != wl.output_shape:
        raise ValueError(f"{fn}: `out` has shape {view.shape}; the result has shape {wl.output_shape}")
    if view.dtype != np.dtype(wl.dtype):
        raise TypeError(f"{fn}: `out` has dtype {view.dtype}; the result has dtype {wl.dtype}")
    if not view.flags.c_contiguous:
        raise ValueError(f"{fn}: `out` must be C-contiguous")
    if not view.flags.writeable:
        raise ValueError(f"{fn}: `out` is read-only")
    if any(np.may_share_memory(view, a) for a in inputs):
        raise ValueError(f"{fn}: `out` overlaps an input; the kernel would read what it overwrites")
    return view


def depthwise_conv2d(input: Any, filter: Any, strides: Any, padding: Any, rate: Any = None, name: Any = None,
                     data_format: Any = None, dilations: Any = None, *, target: Any = None,
                     out: Any = None) -> Any:
    """`tf.nn.depthwise_conv2d`, compiled by TVM.

    input: 4-D, NHWC [N, H, W, C] or NCHW [N, C, H, W]; filter: [KH, KW, C, M].
    Returns [N, OH, OW, C*M] (NHWC) or [N, C*M, OH, OW], the input's dtype, as
    the input's array type (numpy, or torch/JAX via DLPack), or `out` when given.
    `target`: None (this CPU), a TVM target dict or `tvm.target.Target`.
    """
    return _call("depthwise", (("input", input), ("filter", filter)),
                 (strides, padding, rate, name, data_format, dilations), target, out)


def separable_conv2d(input: Any, depthwise_filter: Any, pointwise_filter: Any, strides: Any, padding: Any,
                     rate: Any = None, name: Any = None, data_format: Any = None, dilations: Any = None, *,
                     target: Any = None, out: Any = None) -> Any:
    """`tf.nn.separable_conv2d`, compiled by TVM: depthwise, then a 1x1 channel mix.

    depthwise_filter: [KH, KW, C, M]; pointwise_filter: [1, 1, C*M, O].
    Returns [N, OH, OW, O] (NHWC) or [N, O, OH, OW]; otherwise as `depthwise_conv2d`.
    """
    return _call("separable", (("input", input), ("depthwise_filter", depthwise_filter),
                               ("pointwise_filter", pointwise_filter)),
                 (strides, padding, rate, name, data_format, dilations), target, out)
