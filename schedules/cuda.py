"""Hand-written CUDA schedules, generic over shapes (TVM 0.27 has none for depthwise).

Depthwise: one thread block computes a tile of output rows x columns x
channels. Its input tile, halo included, is staged in shared memory by all
threads of the block, with consecutive threads on the contiguous axis
(coalesced, vectorized where the tile allows); padding is applied while
staging. Each thread then keeps PIXELS outputs in registers along the
non-contiguous axis, so every staged value it reads serves several taps.

    NHWC  blocks: (batch x row tiles x column tiles, channel tiles)
          threads: x = channels (contiguous), y = rows x column groups
    NCHW  blocks: (batch x channel x row tiles x column tiles)
          threads: x = columns (contiguous), y = row groups

Pointwise (separable's second stage) is a GEMM over channels: a block tile
of pixels x output channels, K-slices of both operands staged in shared
memory, and a register tile of outputs per thread.

float16 computes and accumulates in float32; the `_cast` and `_epilogue`
stages (compute.py) store.
"""

from __future__ import annotations

from tvm import s_tir
from tvm.target import Target

from tvmsep.spec import Workload

from .common import accumulator, has_block, loop_depth, store_once

__all__ = ["schedule", "design_spaces", "MAX_SHARED_BYTES", "MAX_THREADS"]


# Static shared memory per block without opting in to more, and the
# threads-per-block limit, on every architecture CUDA 12+ targets.
MAX_SHARED_BYTES = 48 * 1024
MAX_THREADS = 1024

# Depthwise tile: channels (NHWC) or columns (NCHW) along threadIdx.x,
# outputs per thread along the other spatial axis, threadIdx.y extent.
DEPTHWISE_X = 32
DEPTHWISE_PIXELS = 4
DEPTHWISE_Y = 8
# GEMM tile: THREADS x THREADS threads, each REGISTERS x REGISTERS outputs, K slices of K_STEP.
GEMM_THREADS = 16
GEMM_REGISTERS = 4
GEMM_K_STEP = 16
# Staging loads: float4 / half4.
VECTOR = 4


def schedule(sch: s_tir.Schedule, wl: Workload, target: Target) -> None:
    """Schedule every stage of `wl`'s PrimFunc in place."""
    if wl.layout == "NHWC":
        _depthwise_nhwc(sch, wl)
    else:
        _depthwise_nchw(sch, wl)
    if wl.op == "separable":
        _pointwise(sch, wl)


def design_spaces(sch: s_tir.Schedule, wl: Workload, target: Target) -> list[s_tir.Schedule]:
    """The tuning spaces, the hand-written schedule first: here it is the only one."""
    schedule(sch, wl, target)
    return [sch]


def _tile(extent: int, preferred: int) -> int:
    """A tile no larger than the extent (a tail is predicated)."""
    return min(extent, preferred)


def _thread_shape(contiguous: int, other: int) -> tuple[int, int, int]:
    """(threads along the contiguous axis, outputs per thread along the other
    spatial axis, thread groups along it)."""
    pixels = _tile(other, DEPTHWISE_PIXELS)
    return _tile(contiguous, DEPTHWISE_X), pixels, _tile(-(-other // pixels), DEPTHWISE_Y)


def _stage(sch: s_tir.Schedule, block, at_loop, threads_x: int, threads_y: int) -> None:
    """Stage `block`'s padded input tile in shared memory under `at_loop`,
    loaded by all threads of the block, consecutive threads on the
    contiguous axis, in vectors of VECTOR when the tile's rows allow."""
    if has_block(sch, "pad"):
        staged = sch.get_sblock("pad")
        sch.set_scope(staged, 0, "shared")
    else:
        staged = sch.cache_read(block, 0, "shared")
    sch.compute_at(staged, at_loop)
    *outer, row = sch.get_loops(staged)[loop_depth(sch, staged, at_loop) + 1:]
    if int(sch.get(row).extent) % VECTOR == 0:
        # The vector stays a loop of its own, so the padding test and the
        # tail predicate do not depend on its lanes and it vectorizes.
        row, vec = sch.split(row, [None, VECTOR])
        sch.vectorize(vec)
    _, ty, tx = sch.split(sch.fuse(*outer, row), [None, threads_y, threads_x])
    sch.bind(ty, "threadIdx.y")
    sch.bind(tx, "threadIdx.x")


def _depthwise_nhwc(sch: s_tir.Schedule, wl: Workload) -> None:
    block, store = accumulator(sch, "depthwise")
    b, i, j, c, di, dj = sch.get_loops(block)
    tx, pixels, groups = _thread_shape(wl.mid_channels, wl.out_width)
    rows = _tile(wl.out_height, max(1, DEPTHWISE_Y // groups))
    io, ii = sch.split(i, [None, rows])
    jo, jt, ji = sch.split(j, [None, groups, pixels])
    co, cx = sch.split(c, [None, tx])
    sch.reorder(b, io, jo, co, ii, jt, cx, di, dj, ji)
    sch.bind(sch.fuse(b, io, jo), "blockIdx.x")
    sch.bind(co, "blockIdx.y")
    ty = sch.fuse(ii, jt)
    sch.bind(ty, "threadIdx.y")
    sch.bind(cx, "threadIdx.x")
    for loop in (di, dj, ji):
        sch.unroll(loop)
    _stage(sch, block, co, tx, rows * groups)
    store_once(sch, block, store, cx, di)


def _depthwise_nchw(sch: s_tir.Schedule, wl: Workload) -> None:
    block, store = accumulator(sch, "depthwise")
    b, c, i, j, di, dj = sch.get_loops(block)
    tx, pixels, groups = _thread_shape(wl.out_width, wl.out_height)
    io, it, ii = sch.split(i, [None, groups, pixels])
    jo, jx = sch.split(j, [None, tx])
    sch.reorder(b, c, io, jo, it, jx, di, dj, ii)
    sch.bind(sch.fuse(b, c, io, jo), "blockIdx.x")
    sch.bind(it, "threadIdx.y")
    sch.bind(jx, "threadIdx.x")
    for loop in (di, dj, ii):
        sch.unroll(loop)
    _stage(sch, block, sch.get_loops(block)[0], tx, groups)
    store_once(sch, block, store, jx, di)


def _pointwise(sch: s_tir.Schedule, wl: Workload) -> None:
    # The pixel tile is a box of output rows x columns (fusing all pixels
    # first would make the staged tile's region whole rows).
    block, store = accumulator(sch, "pointwise")
    if wl.layout == "NHWC":
        b, i, j, o, k = sch.get_loops(block)
    else:
        b, o, i, j, k = sch.get_loops(block)
    pixels = GEMM_THREADS * GEMM_REGISTERS
    cols = min(wl.out_width, GEMM_THREADS)
    rows = min(wl.out_height, max(1, pixels // cols))
    io, ii = sch.split(i, [None, rows])
    jo, ji = sch.split(j, [None, cols])
    oo, ot, orr = sch.split(o, [None, GEMM_THREADS, min(GEMM_REGISTERS, wl.out_channels)])
    ko, ki = sch.split(k, [None, GEMM_K_STEP])
    sch.reorder(b, io, jo, oo, ii, ji, ot, ko, ki, orr)
    p0, pt, pr = sch.split(sch.fuse(ii, ji), [None, GEMM_THREADS, GEMM_REGISTERS])
    sch.reorder(p0, pt, ot, ko, ki, pr, orr)
    sch.bind(sch.fuse(b, io, jo, oo, p0), "blockIdx.x")
    # consecutive threads on the contiguous axis: output channels (NHWC) or pixels (NCHW)
    ty, tx = (pt, ot) if wl.layout == "NHWC" else (ot, pt)
    if wl.layout == "NCHW":
        sch.reorder(ot, pt)
    sch.bind(ty, "threadIdx.y")
    sch.bind(tx, "threadIdx.x")
    for operand in (0, 1):  # the depthwise result and the pointwise filter, one K slice each
        staged = sch.cache_read(block, operand, "shared")
        sch.compute_at(staged, ko)
        fused = sch.fuse(*sch.get_loops(staged)[loop_depth(sch, staged, ko) + 1:])
        _, sy, sx = sch.split(fused, [None, GEMM_THREADS, GEMM_THREADS])
        sch.bind(sy, "threadIdx.y")
        sch.bind(sx, "threadIdx.x")
    for loop in (pr, orr):
        sch.unroll(loop)
    store_once(sch, block, store, tx, ko)
