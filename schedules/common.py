"""Schedule helpers shared by the llvm and cuda schedules."""

from __future__ import annotations

from tvm import s_tir

__all__ = ["has_block", "explicit_store", "accumulator", "store_once", "loop_depth"]


def has_block(sch: s_tir.Schedule, name: str) -> bool:
    try:
        sch.get_sblock(name)
    except Exception:  # the schedule raises its own error type for a missing block
        return False
    return True


def explicit_store(sch: s_tir.Schedule, name: str):
    """The stage that stores `name`'s result when the op has one (`<name>_epilogue`:
    bias, activation; `<name>_cast`: float16), else None."""
    for suffix in ("_epilogue", "_cast"):
        if has_block(sch, name + suffix):
            return sch.get_sblock(name + suffix)
    return None


def accumulator(sch: s_tir.Schedule, name: str) -> tuple:
    """(compute block, store block): accumulate in registers, store once per tile.

    A stage with an explicit store (`explicit_store`) keeps it; otherwise the
    accumulator is a local cache of the output.
    """
    block = sch.get_sblock(name)
    store = explicit_store(sch, name)
    return block, sch.cache_write(block, 0, "local") if store is None else store


def store_once(sch: s_tir.Schedule, block, store, tile_loop, reduction_loop):
    """Keep the accumulator of `accumulator()` in registers: the store goes under
    `tile_loop`, the zero-init is split off above `reduction_loop`; returns the init block."""
    sch.reverse_compute_at(store, tile_loop)
    sch.set_scope(block, 0, "local")
    return sch.decompose_reduction(block, reduction_loop)


def loop_depth(sch: s_tir.Schedule, block, loop) -> int:
    """How many loops enclose `loop` on `block`'s path."""
    target = sch.get(loop)
    return next(i for i, rv in enumerate(sch.get_loops(block)) if sch.get(rv).same_as(target))
