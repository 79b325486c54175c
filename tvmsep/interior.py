"""Padding and bounds tests taken out of the loops where they always hold.

Two kinds of test guard the products of a kernel's tiles:

- padding: a padded convolution tests, for each product, whether its tap lies on the
  input (compute.py: as in TF, a tap over the padding adds nothing, even an Inf or NaN
  one; it marks the test `likely`). Inside the image every test holds, but the
  generated code does not know it and tests each product: where the CPU has no masked
  FMA (AVX2, NEON) each product then takes a select besides its FMA
  (compute.Arithmetic), and its mask a vector register, which the register tiles need.
- bounds: where an axis is cut into tiles that do not divide it (19 pixels in blocks of
  8), TVM guards every statement of the last tile's overhang with an `if`. In a tile of
  unrolled taps that is a branch around each product, and the tile's accumulators,
  which the branches keep out of registers, are loaded and stored around each of them,
  whatever the CPU.

`split_interior` splits each loop whose body holds such tests into the iterations
where every test that uses the loop's variable holds for all values of the loops
inside it, and the rest:

- a serial loop whose other iterations are a few at either end has them peeled: each
  runs with the variable a constant, so its tests fold away too once the loops inside
  are unrolled (the first and last pixel blocks of a row, or the last tile);
- any other loop (a parallel one: rows) tests once per iteration,
  `if interior: body without the tests else: body`.

Each part is split again by the loops inside it: a border row's pixel blocks, for one.

build.compile_scheduled applies it to CPU kernels (`Backend.splits_interior`): the
bounds tests always, the padding's where the FMA takes no mask (x86-64 below AVX-512,
aarch64; `Backend.splits_padding`).

A test is dropped only where TVM's arithmetic analyzer proves it true under the
split's condition, so the split removes work and never changes a result. It runs at
the point of TVM's lowering where TVM's own loop partitioning would (buffers
flattened, not yet vectorized or unrolled); that partitioning stays off
(build.PASS_CONFIG), as it miscompiled shapes tvmsep's tests drew.
"""

from __future__ import annotations

from collections.abc import Sequence

import tvm
import tvm_ffi
from tvm import s_tir, sym, tirx
from tvm.ir.expr import Call
from tvm.ir.prim import expr as prim

__all__ = ["split_interior"]

# Border iterations a serial loop may have at each end and still be peeled: each is a
# copy of the loop's body (a register tile's unrolled FMAs).
PEEL_MOST = 2

_LIKELY = tvm.ir.Op.get("prim.likely")

# TVM's lowering (s_tir/pipeline.py), from the scheduled module up to where its own loop
# partitioning runs. `tvm.compile` then runs the whole of it: these passes again, which are
# meant to leave lowered code as it is, and the rest. Not always: run again on some split
# modules, CompactBufferAllocation's region analysis overflows (build.compile_scheduled
# then builds the kernel unsplit).
_LOWERING = (
    s_tir.transform.CanonicalizeLoop, s_tir.transform.LowerCrossThreadReduction,
    s_tir.transform.LowerInitBlock, s_tir.transform.PlanAndUpdateBufferAllocationLocation,
    s_tir.transform.ConvertBlocksToOpaque, s_tir.transform.LiftThreadBinding,
    s_tir.transform.ManifestSharedMemoryLocalStage, s_tir.transform.CompactBufferAllocation,
    s_tir.transform.LowerAutoCopy, s_tir.transform.UnifyThreadBinding, s_tir.transform.LowerMatchBuffer,
    s_tir.transform.StmtSimplify, s_tir.transform.InjectPermutedLayout, s_tir.transform.AnnotateIrregularLoop,
    s_tir.transform.InjectSoftwarePipeline, s_tir.transform.TransformMmaBufferLayout,
    s_tir.transform.LowerOpaqueBlock, tirx.transform.FlattenBuffer, tirx.transform.BF16ComputeLegalize,
    lambda: tirx.transform.NarrowDataType(32),
)


def split_interior(mod: tvm.IRModule, padding: bool = True) -> tvm.IRModule:
    """`mod` (scheduled) lowered to where loops are partitioned, its loops split where the
    bounds tests of overhanging tiles and, with `padding`, the padding's tests change.
    Call inside the PassContext the module is compiled in."""
    lowered = tvm.transform.Sequential([make() for make in _LOWERING])(mod)
    functions = {gv: f.with_body(_split(f.body, sym.Analyzer(), padding)) if isinstance(f, tirx.PrimFunc) else f
                 for gv, f in lowered.functions.items()}
    # A peeled or unswitched body defines its loops' variables and buffers once per copy.
    return tirx.transform.ConvertSSA()(tvm.IRModule(functions))


def _split(stmt, analyzer: sym.Analyzer, padding: bool):
    """`stmt` with every loop that holds tests split (module docstring); the padding's
    tests count with `padding`, the bounds tests always."""
    def on_loop(loop: tirx.For, mutator):
        tests = _tests(loop.body, padding) if loop.kind in (tirx.ForKind.SERIAL, tirx.ForKind.PARALLEL) else []
        interior = _interior(loop, tests, analyzer) if tests else None
        if interior is None:
            return mutator.default_mutate(loop)
        peeled = _peeled(loop, interior, analyzer, padding)
        if peeled is not None:
            return peeled
        if _is_const(interior, False):
            return mutator.default_mutate(loop)
        return _unswitched(loop, interior, analyzer, padding)

    return tvm_ffi.structural_mutate(stmt, [(tirx.For, on_loop)])


def _peeled(loop: tirx.For, interior, analyzer: sym.Analyzer, padding: bool):
    """`loop` as its border iterations, each with the variable a constant, around a loop
    over the interior (if any); None unless `loop` is serial with a constant range whose
    interior is one run with at most PEEL_MOST border iterations at each end (a loop of
    at most twice that may be all border)."""
    if loop.kind != tirx.ForKind.SERIAL or not all(isinstance(e, prim.IntImm) for e in (loop.min, loop.extent)):
        return None
    first, end, dtype = loop.min.value, loop.min.value + loop.extent.value, str(loop.extent.ty)
    holds = [analyzer.simplify(_substituted(interior, loop.loop_var, k, dtype)) for k in range(first, end)]
    if not all(isinstance(h, prim.IntImm) for h in holds):
        return None
    inside = [k for k, h in zip(range(first, end), holds) if h.value]
    # With no interior, the iterations count as border at the two ends, half at each.
    start, stop = (inside[0], inside[-1] + 1) if inside else ((first + end + 1) // 2,) * 2
    if len(inside) != stop - start or start - first > PEEL_MOST or end - stop > PEEL_MOST:
        return None
    borders = [_split(_substituted(loop.body, loop.loop_var, k, dtype), analyzer, padding)
               for k in [*range(first, start), *range(stop, end)]]
    if not inside:
        return _sequence(borders)
    within = analyzer.clone()
    within.bind(loop.loop_var, tvm.ir.Range.from_min_extent(start, stop - start), allow_override=True)
    middle = tirx.For(loop.loop_var, tirx.const(start, dtype), tirx.const(stop - start, dtype), loop.kind,
                      _split(_settled(loop.body, within), within, padding), loop.thread_binding,
                      loop.annotations)
    head = start - first
    return _sequence([*borders[:head], middle, *borders[head:]])


def _unswitched(loop: tirx.For, interior, analyzer: sym.Analyzer, padding: bool) -> tirx.For:
    """`loop` testing `interior` once per iteration: the body without the tests it makes
    true, or else the whole body, each split further."""
    within = analyzer.clone()
    within.bind(loop.loop_var, tvm.ir.Range.from_min_extent(loop.min, loop.extent), allow_override=True)
    with within.constraint_scope(interior):
        inside = _split(_settled(loop.body, within), within, padding)
    body = inside if _is_const(interior, True) else \
        tirx.IfThenElse(interior, inside, _split(loop.body, analyzer, padding))
    return tirx.For(loop.loop_var, loop.min, loop.extent, loop.kind, body, loop.thread_binding, loop.annotations)


def _interior(loop: tirx.For, tests: list, analyzer: sym.Analyzer):
    """The condition on `loop`'s variable (and the variables outside it) under which every
    one of `tests` (its body's) that uses the variable holds whatever the loops inside it do;
    None when some such test is not a comparison bounded over those loops."""
    inner = _walk(loop.body, tirx.For)
    defined_inside = _defined_vars(loop.body)
    guards: list = []
    for test in tests:
        for part in _conjuncts(test):
            if not _uses(part, loop.loop_var):
                continue
            guard = _guard(part, inner, analyzer)
            if guard is None or any(_uses(guard, v) for v in defined_inside):
                return None
            if not any(tvm_ffi.structural_equal(guard, g) for g in guards):
                guards.append(guard)
    if not guards:
        return None
    return analyzer.simplify(tirx.all(*guards))


_COMPARISONS = (prim.LT, prim.LE, prim.GT, prim.GE)


def _guard(comparison, inner: Sequence[tirx.For], analyzer: sym.Analyzer):
    """A condition free of `inner`'s variables under which `comparison` holds for all of
    their values (its least margin over their ranges is positive), or None."""
    if isinstance(comparison, (prim.LT, prim.LE)):
        low, high, strict = comparison.a, comparison.b, isinstance(comparison, prim.LT)
    elif isinstance(comparison, (prim.GT, prim.GE)):
        low, high, strict = comparison.b, comparison.a, isinstance(comparison, prim.GT)
    else:
        return None
    ranges = {f.loop_var: sym.IntervalSet(f.min, f.min + f.extent - 1) for f in inner}
    least = analyzer.int_set(high - low, ranges).min_value
    if any(v.same_as(least) for v in (sym.int_set.neg_inf(), sym.int_set.pos_inf())):
        return None
    return least > 0 if strict else least >= 0


def _settled(stmt, analyzer: sym.Analyzer):
    """`stmt` without the parts of its padding tests, and the bounds tests, that `analyzer`
    proves true, the loops inside `stmt` bound to their ranges."""
    analyzer = analyzer.clone()
    for f in _walk(stmt, tirx.For):
        analyzer.bind(f.loop_var, tvm.ir.Range.from_min_extent(f.min, f.extent), allow_override=True)

    def settle(call):
        if not call.op.same_as(_LIKELY):
            return call
        parts = _conjuncts(call.args[0])
        left = [p for p in parts if not analyzer.can_prove(p)]
        if len(left) == len(parts):
            return call
        return tirx.likely(tirx.all(*left)) if left else tirx.const(True, "bool")

    def settle_bounds(guarded: tirx.IfThenElse):
        if guarded.else_case is None and analyzer.can_prove(guarded.condition):
            return guarded.then_case
        return guarded

    return tvm_ffi.structural_map(stmt, [(Call, settle), (tirx.IfThenElse, settle_bounds)])


def _sequence(stmts: list):
    """`stmts` run in turn: TVM refuses a sequence of one."""
    return stmts[0] if len(stmts) == 1 else tirx.SeqStmt(stmts)


def _tests(stmt, padding: bool) -> list:
    """The bounds tests in `stmt` (the conditions of its `if`s without an else that only
    compare: TVM lowers a tile's predicate to one) and, with `padding`, the padding's tests."""
    bounds = [s.condition for s in _walk(stmt, tirx.IfThenElse)
              if s.else_case is None and all(isinstance(p, _COMPARISONS) for p in _conjuncts(s.condition))]
    return bounds + ([c.args[0] for c in _walk(stmt, Call) if c.op.same_as(_LIKELY)] if padding else [])


def _conjuncts(condition) -> list:
    if isinstance(condition, prim.And):
        return _conjuncts(condition.a) + _conjuncts(condition.b)
    return [condition]


def _defined_vars(stmt) -> list:
    """Variables that `stmt` defines: its loops' and its lets'."""
    return [f.loop_var for f in _walk(stmt, tirx.For)] + [s.var for s in _walk(stmt, tirx.LetStmt)]


def _uses(expr, var) -> bool:
    return any(v.same_as(var) for v in _walk(expr, prim.Var))


def _substituted(node, var, value: int, dtype: str):
    constant = tirx.const(value, dtype)
    return tvm_ffi.structural_map(node, [(prim.Var, lambda v: constant if v.same_as(var) else v)])


def _is_const(expr, value: bool) -> bool:
    return isinstance(expr, prim.IntImm) and bool(expr.value) == value


def _walk(node, kind) -> list:
    found: list = []
    tvm_ffi.structural_walk(node, [(kind, found.append)])
    return found
