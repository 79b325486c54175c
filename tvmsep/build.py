"""Workload + target -> scheduled PrimFunc -> compiled runtime module.

Steps: the TE definition (compute), the hand-written schedule for the
target kind (schedules), then TVM's compiler. The compiled function is
named `main` and takes the inputs in call order, then the output.
"""

from __future__ import annotations

import tvm
from tvm import s_tir
from tvm.target import Target

from .compute import prim_func
from .spec import Workload

__all__ = ["scheduled_module", "compile_module"]

# Loop partitioning splits the padded border from the interior, where the
# `likely` zero test of the inlined padding then disappears.
_PASS_CONFIG = {"s_tir.LoopPartition": {"partition_const_loop": True}}


def schedules_for(target: Target):
    """The hand-written schedule module for `target`'s kind."""
    if target.kind.name == "llvm":
        from tvmsep.schedules import llvm
        return llvm
    raise ValueError(f"no schedules for target kind {target.kind.name!r}")


def scheduled_module(wl: Workload, target: Target) -> tvm.IRModule:
    """The hand-scheduled IRModule for `wl` on `target`."""
    sch = s_tir.Schedule(prim_func(wl))
    schedules_for(target).schedule(sch, wl, target)
    return sch.mod


def compile_module(wl: Workload, target: Target) -> tvm.runtime.Module:
    """Compile `wl` for `target`; the result can be exported with `export_library`."""
    with tvm.transform.PassContext(opt_level=3, config=_PASS_CONFIG):
        return tvm.compile(scheduled_module(wl, target), target=target)
