"""A workload's hand-written kernel built under several schedule rules, for timing side by side.

A study that switches a rule of schedules/llvm.py off (a context manager that changes it while
kernels are built) compares the kernel built with the rule and without it on the same arrays.
"""

from __future__ import annotations

import contextlib
import functools
from typing import Any, Callable, ContextManager

import numpy as np
from tvm.target import Target

from tvmsep import build
from tvmsep.reference import reference_for, scaled_error
from tvmsep.spec import Workload
from tvmsep.target import host_target

from alignment import array_at, placed_result
from limits import median_ms_in_turns


def variant_calls(wl: Workload, arrays: list[np.ndarray], expected: np.ndarray,
                  variants: dict[str, ContextManager], what: str,
                  target: Target | None = None) -> tuple[dict[str, Callable[[], Any]], list]:
    """({variant: a call of its kernel on `arrays`}, the modules the calls need alive): each
    variant's float32 kernel for `target` (default: this CPU; another's code must run here) built
    inside its context manager, its result placed as tvmsep places its own, and checked against
    `expected` first (`what` names the layer in the error)."""
    target, calls, keep = target or host_target(), {}, []
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


def rule_changes(wl: Workload, switched_off: Callable[[], ContextManager], target: Target | None = None) -> bool:
    """Whether switching a rule off (`switched_off()`, a context manager) changes `wl`'s
    hand-written schedule for `target` (default: this CPU)."""
    target = target or host_target()
    kept = str(build.hand_schedule(wl, target).trace)
    with switched_off():
        return str(build.hand_schedule(wl, target).trace) != kept


def time_rule(wl: Workload, rng: np.random.Generator, kinds: tuple[str, str],
              switched_off: Callable[[], ContextManager], target: Target | None = None,
              repeats: int = 400) -> dict[str, float]:
    """Median microseconds of `wl`'s hand-written kernel with a rule (`kinds[0]`) and with it
    switched off (`kinds[1]`), on the same fresh values, taking turns."""
    arrays = [array_at(rng.standard_normal(shape, dtype=np.float32), 0) for shape in wl.arg_shapes]
    calls, _keep = variant_calls(wl, arrays, reference_for(wl, arrays),
                                 {kinds[0]: contextlib.nullcontext(), kinds[1]: switched_off()}, wl.describe(), target)
    return {kind: ms * 1e3 for kind, ms in median_ms_in_turns(calls, repeats).items()}
