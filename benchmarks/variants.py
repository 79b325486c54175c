"""A workload's hand-written kernel built under several schedule rules, for timing side by side.

A study that switches a rule of schedules/llvm.py off (a context manager that changes it while
kernels are built) compares the kernel built with the rule and without it on the same arrays.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, ContextManager

import numpy as np

from tvmsep import build
from tvmsep.reference import scaled_error
from tvmsep.spec import Workload
from tvmsep.target import host_target

from alignment import placed_result


def variant_calls(wl: Workload, arrays: list[np.ndarray], expected: np.ndarray,
                  variants: dict[str, ContextManager], what: str) -> tuple[dict[str, Callable[[], Any]], list]:
    """({variant: a call of its kernel on `arrays`}, the modules the calls need alive): each
    variant's float32 kernel for this CPU built inside its context manager, its result placed as
    tvmsep places its own, and checked against `expected` first (`what` names the layer in the
    error)."""
    target, calls, keep = host_target(), {}, []
    for kind, schedule in variants.items():
        with schedule:
            executable = build.compile_module(wl, target)
        keep.append(executable)
        out = placed_result(wl.output_shape, arrays[0])
        executable["main"](*arrays, out)
        if not scaled_error(out, expected) <= 1e-4:
            raise SystemExit(f"{what}: the {kind} kernel is off the reference")
        calls[kind] = functools.partial(executable["main"], *arrays, out)
    return calls, keep
