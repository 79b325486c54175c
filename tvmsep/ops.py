"""The public ops: TF's signatures, compiled kernels underneath.

Each call checks its arguments, finds the compiled kernel (memory, disk
cache, or compile) and runs it; `dispatch` does the checking and the
hand-off (the ops are its Dispatcher's bound methods), this module the finding.
"""

from __future__ import annotations

import threading
from typing import Any

from . import build, runtime
from .backends import backend_for
from .cache import ModuleCache, cache_key
from .dispatch import Dispatcher
from .spec import Workload
from .target import resolve_target

__all__ = ["depthwise_conv2d", "separable_conv2d", "get_kernel", "forget_kernels", "module_cache"]

module_cache = ModuleCache()


class _KernelMemo:
    """The process's one memory of kernels, by (workload, target): each is found once (from
    the disk cache, or compiled) by one thread, while others asking for it wait."""

    def __init__(self) -> None:
        self._kernels: dict[tuple[Workload, str], runtime.Kernel] = {}
        self._lock = threading.Lock()
        self._finding: dict[tuple[Workload, str], threading.Lock] = {}

    def get(self, index: tuple[Workload, str], find: Any) -> runtime.Kernel:
        kernel = self._kernels.get(index)
        if kernel is not None:
            return kernel
        with self._lock:
            finding = self._finding.setdefault(index, threading.Lock())
        with finding:
            kernel = self._kernels.get(index)
            if kernel is None:
                kernel = self._kernels[index] = find()
            return kernel

    def clear(self) -> None:
        self._kernels.clear()


_kernels = _KernelMemo()


def get_kernel(wl: Workload, target: Any = None) -> runtime.Kernel:
    """The compiled kernel for `wl` on `target` (None: this CPU)."""
    target = resolve_target(target)
    backend = backend_for(target)
    unavailable = backend.unavailable(target)
    if unavailable:
        raise RuntimeError(f"`target` {target}: {unavailable}. Kernels for another machine are compiled "
                           "ahead of time, here: `tvmsep compile --target '<target JSON>' --out DIR`, then "
                           "loaded there with tvmsep.load(DIR)")

    def find() -> runtime.Kernel:
        trace = build.tuned_trace(wl, target)
        module, origin = module_cache.get(cache_key(wl, target, trace),
                                          lambda: build.compile_module(wl, target, trace))
        return runtime.Kernel(wl, module["main"], origin, backend.device())

    return _kernels.get((wl, str(target)), find)


def forget_kernels() -> None:
    """Forget every kernel this process found and what found them (the calls' memo, the tuning
    verdicts read), so the next call finds its kernel afresh: after the tuning logs changed."""
    _kernels.clear()
    _call.clear()
    build.forget_verdicts()


_call = Dispatcher(get_kernel, resolve_target, global_name=f"{__name__}:_call")
depthwise_conv2d = _call.depthwise_conv2d
separable_conv2d = _call.separable_conv2d
