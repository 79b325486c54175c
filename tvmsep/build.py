"""Workload + target -> scheduled PrimFunc -> compiled runtime module.

Steps: the TE definition (compute), then the schedule a tuning job chose
(a verdict in the tuning logs) or else the hand-written schedule for the
target family (backends, schedules), then TVM's compiler. The compiled function is
named `main` and takes the inputs in call order, then the output.
"""

from __future__ import annotations

import ast
import dataclasses
import functools
import hashlib
import inspect
import json
import textwrap
import warnings
from pathlib import Path
from typing import Any

import tvm
from tvm import s_tir
from tvm.target import Target

from .backends import backend_for
from .compute import prim_func
from .interior import split_interior
from .spec import Workload
from .verdicts import USE_TUNED, TuningWarning, Verdict, log_folders, module_hash, plain_json, read_verdicts

__all__ = ["TuningWarning", "workload_module", "tuned_trace", "hand_schedule", "scheduled_module", "compile_scheduled",
           "compile_module", "code_fingerprint"]


def schedules_for(target: Target):
    """The hand-written schedule module for `target`'s family."""
    return backend_for(target).schedules()


def workload_module(wl: Workload, target: Target) -> tvm.IRModule:
    """The unscheduled IRModule in `target`'s arithmetic (`compute.Arithmetic`) and layout
    (`Backend.compute_layout`); tuning records are keyed by it (structurally)."""
    backend = backend_for(target)
    return tvm.IRModule({"main": prim_func(wl, backend.arithmetic(target), backend.compute_layout(wl, target))})


def tuned_trace(wl: Workload, target: Target) -> Any | None:
    """The schedule trace (JSON) a finished tuning job chose for `wl` on `target`,
    or None when there is none or the hand-written schedule won.

    A workload with an epilogue that no job tuned takes the choice made for
    the same convolution without it (`_with_epilogue`): the epilogue is
    elementwise and the kernel's time is the convolution's.

    A record that does not fit (no choice in it, or a trace that does not apply
    to the workload: a damaged or foreign log) is passed over with a
    TuningWarning naming its folder: the hand-written schedule computes the
    same result.
    """
    found = _verdict(wl, target)
    if found is None and (wl.bias or wl.activation):
        plain = _verdict(dataclasses.replace(wl, bias=False, activation=None), target)
        if plain is not None and plain[0].use == USE_TUNED:
            return _fitting(wl, _with_epilogue(wl, plain[0].trace, target), plain[1], target)
    if found is None or found[0].use != USE_TUNED:
        return None
    return _fitting(wl, found[0].trace, found[1], target)


def _verdict(wl: Workload, target: Target) -> tuple[Verdict, Path] | None:
    """The latest finished tuning job's usable verdict on `wl` for `target`, and its folder."""
    folders = [folder for folder in log_folders(target) if _verdicts(folder)]
    if not folders:
        return None  # no logs for this target: spare building the TE function to hash it
    workload = module_hash(workload_module(wl, target))
    for folder in folders:
        verdict = _verdicts(folder).get(workload)
        if verdict is None:
            continue
        if verdict.names_a_schedule:
            return verdict, folder
        _pass_over(wl, folder, "its verdict names no schedule to use")
    return None


def _fitting(wl: Workload, trace: Any | None, folder: Path, target: Target) -> Any | None:
    """`trace` if it applies to `wl`'s module, else None (with a warning)."""
    if trace is None:
        return None
    try:
        s_tir.schedule.Trace.apply_json_to_schedule(trace, s_tir.Schedule(workload_module(wl, target)))
    except Exception as e:  # TVM raises its ScheduleError, or others for a malformed trace
        _pass_over(wl, folder, f"its trace does not apply ({type(e).__name__})")
        return None
    return trace


def _pass_over(wl: Workload, folder: Path, why: str) -> None:
    warnings.warn(f"tvmsep: passing over the tuning record for {wl.describe()} in {folder}: {why}; "
                  "using the hand-written schedule", TuningWarning, stacklevel=4)


def _with_epilogue(wl: Workload, trace: Any, target: Target) -> Any | None:
    """The trace tuned for `wl` without its epilogue, replayed on `wl`, with the epilogue
    stage then inlined into the store the trace placed (so it runs on the tile in
    registers); None, for the hand-written schedule, where the trace does not apply.

    A trace from meta-schedule's generic space has no store to inline into: it writes
    the convolution's result in place, and its post-processing walks every block, so
    the epilogue's extra block stops the replay (`_generic_with_epilogue`)."""
    sch = s_tir.Schedule(workload_module(wl, target))
    try:
        s_tir.schedule.Trace.apply_json_to_schedule(trace, sch)
        sch.reverse_compute_inline(sch.get_sblock(_conv_block(wl) + "_epilogue"))
    except (RuntimeError, ValueError):  # TVM's ScheduleError is a RuntimeError
        return _generic_with_epilogue(wl, trace, target)
    return plain_json(sch.trace.as_json(remove_postproc=False))


def _conv_block(wl: Workload) -> str:
    return "depthwise" if wl.op == "depthwise" else "pointwise"


def _generic_with_epilogue(wl: Workload, trace: Any, target: Target) -> Any | None:
    """A generic-space trace replayed on `wl` up to its post-processing, the epilogue
    fused into its tiles (`_fuse_epilogue`), then meta-schedule's post-processing for
    `target` run again over every block: the schedule the tuner would have made had it
    fused the epilogue as its multi-level tiling fuses a consumer. None where that fails."""
    from tvm.s_tir import meta_schedule as ms

    instructions, decisions = trace
    cut = next((n for n, inst in enumerate(instructions) if inst[0] == "EnterPostproc"), None)
    if cut is None:
        return None
    sch = s_tir.Schedule(workload_module(wl, target))
    try:
        s_tir.schedule.Trace.apply_json_to_schedule(
            [instructions[:cut], [d for d in decisions if d[0] < cut]], sch)
        if not _fuse_epilogue(sch, wl):
            return None
        sch.enter_postproc()
        context = ms.TuneContext(mod=sch.mod, target=target, space_generator="post-order-apply", num_threads=1)
        for postproc in ms.postproc.Postproc.create(backend_for(target).kind):
            postproc._initialize_with_tune_context(context)
            if not postproc.apply(sch):
                return None
    except (RuntimeError, ValueError, KeyError, IndexError):  # no tiling structure, or TVM's ScheduleError
        return None
    return plain_json(sch.trace.as_json(remove_postproc=False))


def _fuse_epilogue(sch: s_tir.Schedule, wl: Workload) -> bool:
    """Fuse the epilogue into a generic-space schedule's tiles; False where it has none.

    Where the tiling accumulates a tile in a local buffer, the epilogue is inlined into
    the stage that writes the tile back; else it is computed under the outer spatial
    tile (the tile loops outside the first reduction), where the tile's results are
    still in L1."""
    epilogue = sch.get_sblock(_conv_block(wl) + "_epilogue")
    try:
        sch.reverse_compute_inline(epilogue)
        return True
    except RuntimeError:  # its producer is the reduction itself: no write-back stage
        pass
    conv = sch.get_sblock(_conv_block(wl))
    structure = str(sch.get(conv).annotations["meta_schedule.tiling_structure"])
    spatial = sum(1 for v in sch.get(conv).iter_vars if v.iter_type == tvm.tirx.IterVar.DataPar)
    outer = structure.index("R") * spatial
    if outer == 0:
        return False
    sch.reverse_compute_at(epilogue, sch.get_loops(conv)[outer - 1])
    return True


@functools.lru_cache(maxsize=None)
def _verdicts(folder: Path) -> dict[str, Verdict]:
    """A folder's verdicts by structural hash, read once per process (`forget_verdicts`)."""
    return read_verdicts(folder)


def forget_verdicts() -> None:
    """Read the tuning verdicts afresh when next asked: a job has written new ones."""
    _verdicts.cache_clear()


def hand_schedule(wl: Workload, target: Target, mod: tvm.IRModule | None = None) -> s_tir.Schedule:
    """`mod` (default: `wl`'s unscheduled module) under the hand-written schedule for `target`."""
    sch = s_tir.Schedule(workload_module(wl, target) if mod is None else mod)
    schedules_for(target).schedule(sch, wl, target)
    return sch


def scheduled_module(wl: Workload, target: Target, trace: Any | None = None) -> tvm.IRModule:
    """`wl` scheduled by a tuned `trace` (JSON) if given, else by the hand-written schedule."""
    if trace is None:
        return hand_schedule(wl, target).mod
    sch = s_tir.Schedule(workload_module(wl, target))
    s_tir.schedule.Trace.apply_json_to_schedule(trace, sch)
    return sch.mod


# Every kernel is built without TVM's loop partitioning, which splits a padded border
# from the interior and drops the inlined padding's zero test there: it miscompiled
# shapes the property tests drew (wrong rows, or no build at all). TVM's default is the
# same today; the kernels' correctness must not hang on a default.
PASS_CONFIG = {"s_tir.LoopPartition": {"partition_const_loop": False}}


def compile_scheduled(mod: tvm.IRModule, target: Target) -> tvm.runtime.Module:
    """TVM's compiler with the pass configuration every tvmsep kernel is built with; for
    CPUs, with the loops split at the last tile of a tiling that overhangs and, where the FMA
    takes no mask (x86-64 below AVX-512, aarch64), at the padding's border (interior.py;
    which targets and why: `Backend.splits_interior`, `Backend.splits_padding`).

    The split is an optimization: where TVM's later passes refuse a split module (a
    buffer-region analysis overflows on the split's conditions in some schedules of
    meta-schedule's generic space), the kernel is built unsplit, as it would be without it."""
    with tvm.transform.PassContext(opt_level=3, config=PASS_CONFIG):
        backend = backend_for(target)
        if backend.splits_interior(target):
            try:
                return tvm.compile(split_interior(mod, padding=backend.splits_padding(target)), target=target)
            except Exception:  # TVM raises its failed checks as several Python error types
                pass
        return tvm.compile(mod, target=target)


def compile_module(wl: Workload, target: Target, trace: Any | None = None) -> tvm.runtime.Module:
    """Compile `wl` for `target`; the result can be exported with `export_library`."""
    return compile_scheduled(scheduled_module(wl, target, trace), target)


def code_fingerprint(target: Target) -> str:
    """A digest of the code that turns a workload and a trace into a kernel for `target`:
    the output sizes and TE definitions (spec, compute), the arithmetic the backends
    give the definitions, the target's hand-written
    schedules, and this module's compile path with its pass configuration. Cache keys
    hold it, with the trace, so compiled kernels are reused exactly while that code is
    unchanged. Read as syntax trees without docstrings: rewording a docstring or a
    comment keeps every user's cache."""
    return _fingerprint(schedules_for(target))


@functools.lru_cache(maxsize=None)
def _fingerprint(schedules: Any) -> str:
    from tvmsep.schedules import common

    from . import backends, compute, interior, spec
    digest = hashlib.sha256()
    for module in (spec, compute, backends, common, schedules, interior):
        digest.update(code_syntax(inspect.getsource(module)))
    for function in (workload_module, hand_schedule, scheduled_module, compile_scheduled):
        digest.update(code_syntax(textwrap.dedent(inspect.getsource(function))))
    digest.update(json.dumps(PASS_CONFIG, sort_keys=True).encode())
    return digest.hexdigest()


def code_syntax(source: str) -> bytes:
    """Python source as its syntax tree without docstrings: what running it depends on."""
    tree = ast.parse(source)
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if (isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and body
                and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant)
                and isinstance(body[0].value.value, str)):
            node.body = body[1:] or [ast.Pass()]
    return ast.dump(tree).encode()
