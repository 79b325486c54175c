"""Hand-written CPU schedules, generic over shapes.

Every choice below is derived from the workload and the target (SIMD width,
core count); nothing is tabulated per shape.

Depthwise, NHWC (channels are contiguous, so they are the vector axis):

    for (b, i) in parallel(N * OH):                 # rows across cores
      for jo in OW / WB:                            # a register block of WB pixels
        for co in CM / V:                           # one channel vector
          acc[WB, V] = 0
          for di, dj in KH x KW:                    # unrolled
            for ji in WB:                           # unrolled
              acc[ji, :] += x[b, i*s + di*r, (jo*WB + ji)*s + dj*r, co*V:+V] * f[di, dj, co*V:+V]
          out[b, i, jo*WB:+WB, co*V:+V] = acc

V is one vector register, or two where the input's pixels are a multiple of 2 KiB
apart and so crowd a tile's loads into a few of the L1's sets (`_depthwise_vectors`).
Channels that only narrow vectors divide (11, 22, 100) would take many of those per
pixel; there V is 8 lanes (4 on NEON), the last vector of a pixel a masked tail
(`_depthwise_channel_knob`).
With a channel multiplier M, the vectors run over input channels, with the
M outputs of each as a loop outside them (`_by_input_channel`).

A second NHWC depthwise structure, for tuning, walks R output rows along the
width together (`for (b, io) in parallel(N * OH / R): for jo: for ii in R:
for co: ...`, the same register tile inside), so the input rows under a
block of pixels are fetched into L1 once for R output rows, not once for
each. Whether that pays depends on the L1 and the shape, so it is a design
space: a tuning job keeps it only where it measures faster on the machine at
hand (benchmarks/results/tuning-*.md).

Depthwise, NCHW (width is contiguous): the same nest with rows of the output
blocked in registers and the width as the vector axis, parallel over (b, c).
Where the width gives that nest narrow vectors (a 7x7 or 14x14 output), the NCHW call is
computed by the NHWC nest instead, between a transpose of the input and one of the
result; an NCHW separable always is (`compute_layout`).

Pointwise (separable's second stage) is a GEMM, [pixels, C*M] x [C*M, O]:

    for (oo, mo) in parallel(O / NR x P / MR):      # output-channel panel outermost
      acc[MR, NR] = 0                               # MR x NR/V vector registers
      for c in C*M:
        for mi in MR:                               # unrolled
          acc[mi, :] += mid[mo*MR + mi, c] * w[c, oo*NR:+NR]
      out[mo*MR:+MR, oo*NR:+NR] = acc

MR is GEMM_ROWS, or as many rows as the registers hold where a panel ([C*M, NR]) is
more than half the L1 and so comes from L2 for every tile (`_gemm_rows`). The tiles read
the weights in place ([C*M, O]: one row of NR per step), unless their
rows are a multiple of 512 bytes (or a page or more) apart: then a panel's lines
crowd into a few cache sets and leave the prefetchers behind, so each panel is
first copied into a contiguous [C*M, NR] buffer under the panel loop, which its
tiles then read (`_packs_panels`); a prepared layer's weights come packed so, and
are read in place (`pointwise_panel`). For other strides the copy only costs. Whether
the copy saves depends on how fast the core retires the tile's FMAs, so where it is made, the
same schedule reading the weights in place is a tuning space too (`design_spaces`).

In NHWC, when the output rows split evenly over the cores, they are first cut
into one chunk per core, outside the panel loop:

    for k in parallel(cores):                       # the rows this core's depthwise wrote
      for (oo, mo) in (O / NR x rows of chunk k / MR):   # the nest above, serial
        ...

so each core reads only the part of the intermediate its own depthwise stage
wrote (TVM splits the depthwise's parallel rows the same way across the pool).
With the panel loop outermost over all rows, every core reads rows the other
core has just written, moving them between the cores' caches on every call,
and the call's time then depends on how the pool's threads happen to be
placed. When the rows do not split evenly but the GEMM's row tiles do
(Xception's 19 rows of two tiles), the tiles are cut the same way; a chunk with a
tail would put a bounds test in the GEMM's inner loop (`_pointwise_chunks`).
But a GEMM that copies its weight panels copies every panel on each core there, so
where the weights are many times the intermediate (a 10x10 output of 1024 channels),
it keeps the panel loop outermost, split over the cores, each panel copied once
(`_copies_each_panel_once`).

When one core's share of the intermediate is larger than an L2 (8 x 56x56x128:
6.4 MB), the GEMM would read it back from L3 once per panel. The depthwise is
then computed per chunk of R rows of one image, at most CHUNK_BYTES of result,
inside the GEMM's parallel loop, right before the panels read it:

    for (b, io) in parallel(N * OH / R):
      mid[R rows] = depthwise(...)                  # its nest above, serial
      for (oo, ii, jo) in (O / NR x R x OW / MR):   # the GEMM over the chunk
        ...

Where neither the rows nor the tiles split evenly (7 rows of one tile), the
panel-outer nest has every core read intermediate rows the other core wrote, after
a second wake-up of the pool. When the weights fit a core's L2, the hand-written
schedule computes each row's depthwise under the GEMM instead (the nest above with
R = 1, the tuning spaces' fused structure): the row stays in the core's L1, and each
row re-reads the weights from the core's own L2 (`_fuses_rows`). Larger weights
would be read from L3 once per row, so those keep the two stages.

When the output width has no good divisor for the GEMM's rows (19 in
Xception), or the output channels leave the vectors narrower than a register
(728: 8 lanes where a register holds 16), the NHWC pointwise's domain is padded
(`pad_einsum`, two-stage schedule only): the GEMM runs over 20 x 736, reading the
intermediate in place with zeros past its width and the weights from a zero-padded
copy of each panel, made under the panel loop as packed panels are, and stores
only the real outputs. A bounds test in the GEMM loop, or narrower vectors, cost
more than the padded work (`_gemm_padding`); a padded copy of all the weights
before the GEMM cost a write and a read of them through memory.

Padding is inlined into the depthwise loads as a zero test per product. With
AVX-512 a test is a mask on its FMA; for CPUs without masked FMAs (AVX2, NEON) the
compiler takes the tests out of the loops' interior iterations (tvmsep/interior.py),
so only the border tiles test. A register block with a tail (`_block`: 19 pixels in
blocks of 8) has its bounds test taken out of the whole blocks on every CPU, likewise.

The block sizes and vector widths are knobs: each is a meta-schedule
`sample_categorical` whose decision is the hand-written choice, so this same
function is both the hand-written schedule and a tuning space (replaying its
trace with fresh decisions samples the other candidates).
"""

from __future__ import annotations

import dataclasses
import math

import tvm
from tvm import s_tir
from tvm.target import Target

from tvmsep.backends import BACKENDS
from tvmsep.compute import accumulation_dtype
from tvmsep.spec import Workload

from .common import accumulator, explicit_store, has_block, loop_depth, store_once

__all__ = ["schedule", "design_spaces", "vector_lanes", "compute_layout", "pointwise_panel"]

# Output pixels per register block in depthwise: WB accumulators plus an
# input and a filter vector stay well inside 16 (AVX2) or 32 (AVX-512) registers.
DEPTHWISE_PIXEL_BLOCK = 8
# A depthwise tile whose input pixels fall in this few of the L1's sets or fewer is made two
# vectors wide (`_depthwise_vectors`).
CROWDED_SETS = 2
# Channels that no wide vector divides: vectors this many lanes wide (or the register's, if
# narrower) with a masked tail, where they take at least TAIL_COST fewer vectors a pixel than
# the widest dividing vectors (`_depthwise_channel_knob`).
TAIL_VECTOR_LANES = 8
TAIL_COST = 8
# Most vector FMAs of a depthwise tile (taps x pixels) that are unrolled (`_depthwise`).
MAX_UNROLLED_TAPS = 1024
# Output rows per register block in NCHW depthwise (width is the vector axis).
DEPTHWISE_ROW_BLOCK = 4
# GEMM micro-tile: MR rows x NR_VECTORS vectors of accumulators, MR at most what the
# register file holds beside the weight vectors and the broadcast input, and all it
# holds where the tile's weight panel outgrows half the L1 (`_gemm_rows`).
GEMM_ROWS = 8
GEMM_VECTORS = 2
# An NCHW result's transpose takes its vectors along the pixels, the last one a tail, where a
# plane holds this many vectors or more (`_transposes`).
TAILED_TRANSPOSE_VECTORS = 16
# Waking the thread pool costs ~5 us; below this much work one core is faster (`_work`).
PARALLEL_MIN_WORK = 500_000
# A byte of input or result counts as this much work beside a FLOP (`_work`).
WORK_PER_BYTE = 2
# When one core's share of a separable's intermediate is larger than its L2
# (`Backend.core_cache_bytes`), its GEMM would read it back from L3 once per panel:
# the depthwise is computed chunk by chunk instead, each chunk's result at most
# CHUNK_BYTES, right before the GEMM reads it (module docstring).
CHUNK_BYTES = 256 << 10
# Weight rows a multiple of this many bytes apart crowd a panel into few cache sets;
# rows a page or more apart leave the prefetchers behind (`_packs_panels`).
ALIASING_STRIDE = 512
PAGE_BYTES = 4096
# A GEMM that copies its weight panels runs them outermost, each copied once, where the
# weights are more than this many times the intermediate (`_copies_each_panel_once`).
WEIGHTS_OVER_INTERMEDIATE = 8


def vector_lanes(target: Target, dtype: str) -> int:
    """SIMD lanes for computing in `dtype` on the target's widest vector unit."""
    return BACKENDS["llvm"].vector_bits(target) // tvm.DataType(dtype).bits


def _sum_lanes(sch: s_tir.Schedule, name: str, target: Target) -> int:
    """SIMD lanes for the dtype stage `name` sums in: float32 for float16, but for a
    depthwise that sums in float16 (`compute.depthwise_compute`)."""
    return vector_lanes(target, str(sch.get(sch.get_sblock(name)).writes[0].source.dtype))


def _gemm_row_limit(target: Target, vectors: int) -> int:
    """The most rows a GEMM tile of `vectors` vector registers per row may have: its
    accumulators (rows x vectors), a row of weight vectors and the broadcast input fit the
    target's vector registers (16 on x86-64 without AVX-512, else 32). A tile that does
    not fit keeps accumulators on the stack, a load and a store for each of them in every
    step of the reduction."""
    return (BACKENDS["llvm"].vector_registers(target) - vectors - 1) // vectors


def _gemm_rows(wl: Workload, target: Target, vectors: int, lanes: int) -> int:
    """Rows of a GEMM tile along the output's width by default: GEMM_ROWS where they fit
    (`_gemm_row_limit`), or the largest divisor of the width that the registers hold, if
    larger, where the tile's panel of vectors ([C*M, vectors x lanes]) is more than half the
    L1. Each tile reads its whole panel, one row of vectors per step; a panel that large
    does not stay in the L1 between the tiles that read it (their input rows and results
    pass through it too), so every tile reads it from L2, and taller tiles read it fewer
    times for the same FMAs. A smaller panel stays in the L1, and there taller tiles
    measured no faster. The panel is counted in whole registers."""
    most = _gemm_row_limit(target, vectors)
    rows = min(GEMM_ROWS, most)
    panel_bytes = wl.mid_channels * vectors * lanes * tvm.DataType(wl.dtype).bits // 8
    if 2 * panel_bytes > BACKENDS["llvm"].l1_bytes(target):
        rows = max(rows, _factor(wl.out_width, most))
    return rows


def _gemm_vectors(extent: int, lanes: int) -> int:
    """Vector registers per GEMM row at the default vector width along `extent`."""
    return -(-_vector(extent, GEMM_VECTORS * lanes, lanes) // lanes)


def _factor(extent: int, preferred: int) -> int:
    """Largest divisor of `extent` that is <= `preferred` (whole extent if it already fits)."""
    if extent <= preferred:
        return extent
    return max(d for d in range(1, preferred + 1) if extent % d == 0)


def _block(extent: int, preferred: int) -> int:
    """A register-block size: a divisor when a good one exists, else `preferred` with a tail."""
    divisor = _factor(extent, preferred)
    return divisor if 2 * divisor > preferred else preferred


def _vector(extent: int, width: int, lanes: int) -> int:
    """Vector width along an axis: the largest divisor of the extent up to `width`
    that is whole SIMD registers or a power of two. Any other width (24 lanes
    for 24 channels) is lowered by LLVM as shuffles between registers."""
    return max(d for d in range(1, min(extent, width) + 1)
               if extent % d == 0 and (d % lanes == 0 or d & (d - 1) == 0))


def _knob(sch: s_tir.Schedule, default: int, alternatives: list[int], extent: int):
    """A tunable size: `default` (the hand-written choice) or one of `alternatives`
    that fits `extent`. Sizes below 2 are left out: a unit loop would vanish
    and change the loop structure the rest of the trace refers to."""
    candidates = sorted({default} | {a for a in alternatives if 2 <= a <= extent})
    return sch.sample_categorical(candidates, [1.0 / len(candidates)] * len(candidates),
                                  decision=candidates.index(default))


def _block_knob(sch: s_tir.Schedule, extent: int, preferred: int, alternatives: list[int]):
    return _knob(sch, _block(extent, preferred), alternatives, extent)


def _vector_knob(sch: s_tir.Schedule, extent: int, lanes: int, registers: int = 1, most: int = 2):
    """A vector axis `registers` SIMD registers wide by default; the alternatives
    are 1 to `most` whole registers that divide the extent."""
    widths = [r * lanes for r in range(1, most + 1) if extent % (r * lanes) == 0]
    return _knob(sch, _vector(extent, registers * lanes, lanes), widths, extent)


def schedule(sch: s_tir.Schedule, wl: Workload, target: Target) -> None:
    """Schedule every stage of `wl`'s PrimFunc in place: the hand-written schedule."""
    _schedule(sch, _computed(wl, target), target, weights_in_place=False)
    _transposes(sch, wl, target)


def _schedule(sch: s_tir.Schedule, wl: Workload, target: Target, weights_in_place: bool,
              chunk_rows: int | None = None) -> None:
    """The hand-written schedule; `weights_in_place`: its GEMM reads the pointwise weights in
    place even where `_packs_panels` would copy them panel by panel (a design space).
    `chunk_rows`: the NHWC separable's structure, as `_chunk_rows` gives it (0: two stages, 1:
    fused), in place of the hand-written choice (a design space)."""
    lanes = vector_lanes(target, accumulation_dtype(wl.dtype))
    parallel = _parallel(wl, target)
    if chunk_rows is None:
        chunk_rows = _chunk_rows(wl, target, lanes)
    if chunk_rows:
        _schedule_chunked(sch, wl, target, chunk_rows, weights_in_place)
        return
    _depthwise(sch, wl, target, parallel)
    if wl.op == "separable":
        _pointwise(sch, wl, target, lanes, parallel, weights_in_place=weights_in_place)


def design_spaces(sch: s_tir.Schedule, wl: Workload, target: Target) -> list[s_tir.Schedule]:
    """The tuning spaces, the hand-written schedule first (`_spaces`), of the convolution in the
    layout it is computed in, each with the same transposes around it where that is not `wl`'s."""
    spaces = _spaces(sch, _computed(wl, target), target)
    for space in spaces:
        _transposes(space, wl, target)
    return spaces


def _spaces(sch: s_tir.Schedule, wl: Workload, target: Target) -> list[s_tir.Schedule]:
    """The tuning spaces, the hand-written schedule first: its knobs and, for a separable
    (computed in NHWC: `compute_layout`), the other of its two structures: the fused one,
    where each output row's depthwise result is computed into a one-row buffer (in L1/L2) right before
    the pointwise GEMM consumes it, so the intermediate tensor never goes to memory,
    or the two stages where the hand-written schedule fuses (`_fuses_rows`). Whether
    fusing pays depends on the shape and the core (it re-reads the pointwise weights
    once per row), so it is left to measurement; for NHWC depthwise, the
    row-blocked structure (module docstring), likewise. Where a two-stage GEMM
    copies its weight panels by their stride (`_packs_panels`), the same
    schedule reading them in place is a space too: which is faster depends on
    how fast the core retires the tile's FMAs, which no target names."""
    spaces = [sch]
    separable = wl.op == "separable"
    fused_hand = separable and _chunk_rows(wl, target, vector_lanes(target, accumulation_dtype(wl.dtype))) == 1
    if separable:
        other = sch.copy()
        _schedule(other, wl, target, weights_in_place=False, chunk_rows=0 if fused_hand else 1)
        spaces.append(other)
    row_blocks = _row_blocks(wl, target) if wl.op == "depthwise" and wl.layout == "NHWC" else []
    if row_blocks:
        blocked = sch.copy()
        _depthwise(blocked, wl, target, _parallel(wl, target), row_blocks=row_blocks)
        spaces.append(blocked)
    in_place = sch.copy() if separable else None
    _schedule(sch, wl, target, weights_in_place=False)
    if in_place is not None:
        _schedule(in_place, wl, target, weights_in_place=True, chunk_rows=0 if fused_hand else None)
        two_stage = spaces[1] if fused_hand else sch
        if str(in_place.trace) != str(two_stage.trace):  # the two-stage GEMM copies panels
            spaces.append(in_place)
    return spaces


def compute_layout(wl: Workload, target: Target) -> str:
    """The layout `wl` is computed in (`Backend.compute_layout`): NHWC for an NCHW separable,
    and for an NCHW depthwise whose own nest would take more instructions than the NHWC nest
    takes plus a value moved for each of the input and the output (the transposes around it).

    The NCHW depthwise's vectors run along the output's width, as wide as a divisor of it
    allows (7 or 19 columns: one lane), and a stride of two gathers every other input column
    into them, so it takes taps x outputs x stride / vector FMAs; where the FMA takes no mask
    (AVX2, NEON: `compute.Arithmetic`), each of those is an FMA and a select of the weight. The
    NHWC nest's vectors run along the channels at the register's width, and its interior tiles
    test nothing. Timed on every layer of the lists, a value transposed cost about one FMA of
    the NCHW nest, and this count picked the faster of the two or one within a tenth on each,
    with AVX-512 and with AVX2 (whose NCHW nest took about twice as long a tap). A separable is
    always computed in NHWC: there the NHWC kernel (its GEMM's vectors along the output
    channels, its tiles, chunks and packed panels) with the transposes was faster on every
    layer than an NCHW GEMM, whose vectors along the pixels are narrow wherever a channel's
    pixels are not a multiple of the register (49 in a 7x7 output, 196 in a 14x14)."""
    if wl.layout == "NHWC" or wl.op == "separable":
        return "NHWC"
    lanes = vector_lanes(target, accumulation_dtype(wl.dtype))
    per_tap = 1 if BACKENDS["llvm"].arithmetic(target).masked_fma else 2
    taps, outputs = wl.kernel_h * wl.kernel_w, math.prod(wl.output_shape)
    in_place = per_tap * taps * outputs * wl.stride_w / _vector(wl.out_width, lanes, lanes)
    transposed = taps * outputs / lanes + math.prod(wl.input_shape) + outputs
    return "NHWC" if transposed < in_place else wl.layout


def _computed(wl: Workload, target: Target) -> Workload:
    """`wl` in the layout it is computed in (`compute_layout`)."""
    return dataclasses.replace(wl, layout=compute_layout(wl, target))


def _transposes(sch: s_tir.Schedule, wl: Workload, target: Target) -> None:
    """The transposes of an NCHW call computed in NHWC (`compute_layout`), if it is one.

    Each vector is written whole and read as a gather, from lines that the next vectors read
    too. The input's vectors run along its channels, a row of the output at a time (rows in
    parallel, each core writing its own). The output's run along the pixels, flattened (every
    channel of a block of pixels in turn, so that the block's lines of the NHWC result are read
    once), where those are a multiple of the register or make TAILED_TRANSPOSE_VECTORS of them
    or more (19x19: the last vector a tail, which the compiler splits off, interior.py); on
    fewer (7x7, 14x14) a tail measured slower than vectors along the channels, each core then
    writing its own channels, as cores writing one line would take it in turns, for a block of
    pixels at a time (4 of 196), whose stores to each plane then follow one another in a line:
    one pixel at a time measured slower.
    A separable's result larger than a core's L2 is not transposed apart: its GEMM tiles store
    their vectors of channels straight into the NCHW output, each lane to its own channel
    (`_stores_transposed`)."""
    if not has_block(sch, "output_nchw"):
        return
    lanes, parallel = vector_lanes(target, wl.dtype), _parallel(wl, target)
    b, i, j, c = sch.get_loops(sch.get_sblock("input_nhwc"))
    co, ci = sch.split(c, [None, _vector(wl.in_channels, lanes, lanes)])
    sch.reorder(b, i, co, j, ci)
    loops = [(sch.fuse(b, i), ci)]
    if _stores_transposed(wl, target):
        sch.reverse_compute_inline(sch.get_sblock("output_nchw"))
    else:
        b, c, i, j = sch.get_loops(sch.get_sblock("output_nchw"))
        pixels, p = wl.out_height * wl.out_width, sch.fuse(i, j)
        if pixels % lanes == 0 or pixels >= TAILED_TRANSPOSE_VECTORS * lanes:
            po, pi = sch.split(p, [None, lanes])
            sch.reorder(b, po, c, pi)
            loops.append((sch.fuse(b, po), pi))
        else:
            co, ci = sch.split(c, [None, _vector(wl.out_channels, lanes, lanes)])
            po, pi = sch.split(p, [None, _vector(pixels, lanes, lanes)])
            sch.reorder(b, co, po, pi, ci)
            loops.append((sch.fuse(b, co), ci))
    for outer, vector in loops:
        if parallel:
            sch.parallel(outer)
        sch.vectorize(vector)


def _stores_transposed(wl: Workload, target: Target) -> bool:
    """Whether an NCHW separable computed in NHWC has its GEMM store its result in NCHW: where
    the result is larger than a core's L2 (`Backend.core_cache_bytes`). A transpose apart would
    then write the NHWC result through to L3 or memory and read it back; a tile's stores lane
    by lane measured faster than that, and slower than a transpose of a result in L2."""
    result_bytes = math.prod(wl.output_shape) * tvm.DataType(wl.dtype).bits // 8
    return wl.op == "separable" and result_bytes > BACKENDS["llvm"].core_cache_bytes(target)


def _schedule_chunked(sch: s_tir.Schedule, wl: Workload, target: Target, rows: int,
                      weights_in_place: bool = False) -> None:
    """NHWC separable with the depthwise computed per chunk of `rows` output rows,
    inside the pointwise's parallel loop: one row for the fused design space,
    more for an intermediate too large for a core's L2 (`_chunk_rows`)."""
    lanes = vector_lanes(target, accumulation_dtype(wl.dtype))
    chunk = _pointwise(sch, wl, target, lanes, _parallel(wl, target), chunk_rows=rows,
                       weights_in_place=weights_in_place)
    _depthwise(sch, wl, target, parallel=False, row=chunk)


def _chunk_rows(wl: Workload, target: Target, lanes: int) -> int:
    """Output rows per chunk when the hand-written NHWC separable computes its
    depthwise chunk by chunk, else 0: one row where the two-stage GEMM would read the
    intermediate across the cores (`_fuses_rows`); else where one core's share of the
    intermediate exceeds its L2, chunks inside one image (a divisor of the height) that
    split evenly over the cores, the largest that fits `CHUNK_BYTES`, as fewer chunks
    re-read the weights less. A padded GEMM keeps its two stages."""
    if wl.op != "separable" or not _parallel(wl, target) or _pads_gemm(wl, target, lanes):
        return 0
    if _fuses_rows(wl, target, lanes):
        return 1
    row_bytes = wl.out_width * wl.mid_channels * tvm.DataType(wl.dtype).bits // 8
    rows, cores = wl.batch * wl.out_height, _cores(target)
    if rows * row_bytes <= cores * BACKENDS["llvm"].core_cache_bytes(target):
        return 0
    fitting = [r for r in range(2, wl.out_height + 1)
               if wl.out_height % r == 0 and r * row_bytes <= CHUNK_BYTES and (rows // r) % cores == 0]
    return max(fitting, default=0)


def _fuses_rows(wl: Workload, target: Target, lanes: int) -> bool:
    """Whether the hand-written NHWC separable (parallel, unpadded) computes each output row's
    depthwise under its GEMM: where the two-stage GEMM could split neither its rows nor its
    tiles evenly over the cores, so that its panel-outer nest would read rows of the
    intermediate that the other core wrote, and where the weights fit a core's L2, from
    which each row then re-reads them (module docstring)."""
    rows_per_tile, width, _ = _gemm_domain(wl, target, lanes)
    if _pointwise_chunks(wl, target, width // rows_per_tile)[0] > 1:
        return False
    weight_bytes = wl.mid_channels * wl.out_channels * tvm.DataType(wl.dtype).bits // 8
    return weight_bytes <= BACKENDS["llvm"].core_cache_bytes(target)


def _row_blocks(wl: Workload, target: Target) -> list[int]:
    """Output rows per block for the row-blocked depthwise: divisors of the
    height (a tail would add a bounds test) that leave every core two blocks."""
    return [r for r in (2, 4, 8) if wl.out_height % r == 0 and wl.batch * wl.out_height // r >= 2 * _cores(target)]


def _cores(target: Target) -> int:
    return int(target.attrs.get("num-cores", 1))


def _parallel(wl: Workload, target: Target) -> bool:
    return _work(wl) >= PARALLEL_MIN_WORK and _cores(target) > 1


def _work(wl: Workload) -> int:
    """A kernel's work on one core, to weigh against waking the pool: its FLOPs, and its
    input and result at WORK_PER_BYTE a byte. A depthwise kernel does few FLOPs per byte it
    moves (9 taps, 18 FLOPs, per 4-byte result of a 3x3 layer, and a stride-2 layer reads four
    input values per result), so its time follows its bytes as much as its FLOPs."""
    item = tvm.DataType(wl.dtype).bits // 8
    elements = math.prod(wl.input_shape) + math.prod(wl.output_shape)
    return wl.flops + WORK_PER_BYTE * item * elements


def _pointwise_chunks(wl: Workload, target: Target, tiles_per_row: int) -> tuple[int, bool]:
    """(chunks, by tile) for the NHWC pointwise's parallel loop: one chunk of output
    rows per core when the rows split evenly over the cores; else one chunk of
    row tiles per core when those do; else (1, False), the panel-outer nest, which
    reads the whole intermediate once per panel. A chunk with a tail would put a
    bounds test in the GEMM's inner loop, which costs more than uneven work."""
    cores, rows = _cores(target), wl.batch * wl.out_height
    if rows % cores == 0:
        return cores, False
    if rows * tiles_per_row % cores == 0:
        return cores, True
    return 1, False


def _packs_panels(wl: Workload, chunk_rows: int) -> bool:
    """Whether the NHWC pointwise copies each weight panel ([C*M, NR] of the [C*M, O]
    weights) into a contiguous buffer before the tiles that read it.

    Read in place, a panel is NR values out of every row of O, one row per step of
    the GEMM's reduction. When the row is a multiple of `ALIASING_STRIDE` bytes, the
    panel's lines fall into at most an eighth of the L1's sets (an L1 indexed by
    the address bits under the 4 KiB page has 64 sets, so a stride of 8 lines visits
    8 of them), and a row of 4 KiB or more leaves a page on every step, where the
    hardware prefetchers stop: each step's weights come from L2 when the tile asks
    for them. Whether the tile's FMAs of one step cover that wait depends on the core.
    One that retires two full-width vector FMAs a cycle runs out of FMAs first, and
    there the copy, read into L1/L2 once for all of the panel's tiles as a stream the
    prefetchers follow, is faster. One that splits each 512-bit FMA into two halves
    (Zen 4) takes twice as long per step and reads in place faster (with tiles of half
    the rows, the copy is faster there too). No target names how many FMAs its cores
    retire a cycle, so the rule is made for full-rate cores, and the in-place schedule
    is a tuning space (`design_spaces`). For other strides the copy only costs; not
    for one-row chunks either (a copy per tile).
    (A GEMM with padded channels copies its zero-padded weights panel by panel in any case.)
    """
    if chunk_rows == 1:
        return False
    row_bytes = wl.out_channels * tvm.DataType(wl.dtype).bits // 8
    return row_bytes % ALIASING_STRIDE == 0 or row_bytes >= PAGE_BYTES


def pointwise_panel(wl: Workload, target: Target) -> int:
    """The panel a prepared layer packs the pointwise weights in, once, ahead of its calls
    (`Workload.pointwise_panel`): the NHWC GEMM's default vector width, where the call's GEMM
    copies them panel by panel (`_packs_panels`), else 0, and the layer runs the call's
    kernel, tuned where a log holds one. Where the call reads its weights in place, packing
    them measured no faster. Not for a padded GEMM: `pad_einsum` takes no packed weights
    (their index is no einsum). An NCHW call's GEMM is the NHWC one (`compute_layout`)."""
    if wl.op != "separable":
        return 0
    wl = _computed(wl, target)
    lanes = vector_lanes(target, accumulation_dtype(wl.dtype))
    if _pads_gemm(wl, target, lanes) or not _packs_panels(wl, _chunk_rows(wl, target, lanes)):
        return 0
    panel = _vector(wl.out_channels, GEMM_VECTORS * lanes, lanes)
    return panel if panel < wl.out_channels else 0


def _pack_panel(sch: s_tir.Schedule, block, panel_loop) -> None:
    """Copy the weights that the tiles under `panel_loop` read into a contiguous buffer there:
    the zero-padded copy of a padded GEMM, or else a cache of the weights read in place."""
    if has_block(sch, "pointwise_filter_pad"):
        packed = sch.get_sblock("pointwise_filter_pad")
    else:
        read = next(n for n, region in enumerate(sch.get(block).reads) if region.source.name == "pointwise_filter")
        packed = sch.cache_read(block, read, "global")
    sch.compute_at(packed, panel_loop)
    sch.vectorize(sch.get_loops(packed)[-1])


def _copy_whole(sch: s_tir.Schedule, copy, parallel: bool) -> None:
    """A copy stage as a loop nest of its own, before the GEMM: rows in parallel, vectorized."""
    *outer, last = sch.get_loops(copy)
    if parallel:
        sch.parallel(sch.fuse(*outer))
    sch.vectorize(last)


def _finish_tile(sch: s_tir.Schedule, block, store, tile_loop, init_loop) -> None:
    """Place the store under the tile loop, split init from update, vectorize both."""
    tile_depth = loop_depth(sch, block, tile_loop) + 1  # loops at and above the tile loop
    init_depth = loop_depth(sch, block, init_loop)  # loops above the reduction
    init = store_once(sch, block, store, tile_loop, init_loop)
    for b, depth in ((init, init_depth), (store, tile_depth)):
        inner = sch.get_loops(b)[depth:]  # the new loops (unit loops are dropped)
        if inner:
            sch.vectorize(inner[-1])
        if len(inner) > 1:
            sch.unroll(inner[-2])


def _depthwise(sch: s_tir.Schedule, wl: Workload, target: Target, parallel: bool, row=None,
               row_blocks: list[int] | None = None) -> None:
    """`row`: an NHWC output-row loop of the pointwise to compute each row's depthwise under.
    `row_blocks`: NHWC only, walk that many output rows along the width together (a knob
    over the sizes given, the middle one by default; see the module docstring)."""
    lanes = _sum_lanes(sch, "depthwise", target)
    block, store = accumulator(sch, "depthwise")
    if row is not None:
        # The nest below names the loops by their place; a loop of one iteration (a 1xK filter's
        # tap rows) would be dropped here and shift every name after it, so those are kept.
        units = 1 in (wl.out_width, wl.mid_channels, wl.kernel_h, wl.kernel_w)
        sch.compute_at(store, row, preserve_unit_loops=units)
        sch.compute_at(block, row, preserve_unit_loops=units)
    if wl.layout == "NHWC":
        rows, tile, block_loop, vec, di, dj = _depthwise_nhwc(sch, block, wl, target, lanes, row, row_blocks)
    else:
        rows, tile, block_loop, vec, di, dj = _depthwise_nchw(sch, block, wl, lanes)
    if parallel:
        sch.parallel(rows)
    sch.vectorize(vec)
    # The taps are unrolled while the unrolled body stays small: a large filter (31x31, or
    # TF's valid 1000x1000) would otherwise give the compiler a body of taps x pixels FMAs,
    # which took minutes, or all the memory, to compile. Past the budget the rows of taps,
    # then the taps of a row, stay loops.
    pixels, kw, kh = (int(sch.get(loop).extent) for loop in (block_loop, dj, di))
    for loop, body in ((di, pixels * kw * kh), (dj, pixels * kw), (block_loop, 0)):
        if body <= MAX_UNROLLED_TAPS:
            sch.unroll(loop)
    _finish_tile(sch, block, store, tile, di)


def _depthwise_nhwc(sch: s_tir.Schedule, block, wl: Workload, target: Target, lanes: int, row,
                    row_blocks: list[int] | None) -> tuple:
    """The NHWC loop nest: a register tile of pixels x one channel vector (or two), the padding
    inlined as a zero test, rows (or blocks of rows) outermost. Returns (row loop, tile
    loop, unrolled pixels, vector, tap rows, tap columns)."""
    if has_block(sch, "pad"):
        sch.compute_inline(sch.get_sblock("pad"))
    *outer, j, c, di, dj = sch.get_loops(block)
    jo, ji = sch.split(j, [None, _knob(sch, _depthwise_pixel_block(wl), [4, 6, 8, 12, 16], wl.out_width)])
    if wl.multiplier > 1:
        c, q = sch.split(c, [None, wl.multiplier])
        _by_input_channel(sch, block, wl.multiplier)
    vectors = _depthwise_vectors(wl, target, lanes)
    co, vec = sch.split(c, [None, _depthwise_channel_knob(sch, wl, lanes, vectors)])
    per_tile = [co, q] if wl.multiplier > 1 else [co]
    if row_blocks:
        b, i = outer
        io, ii = sch.split(i, [None, _knob(sch, row_blocks[len(row_blocks) // 2], row_blocks, wl.out_height)])
        sch.reorder(io, jo, ii, *per_tile, di, dj, ji, vec)
        outer = [b, io]
    else:
        sch.reorder(jo, *per_tile, di, dj, ji, vec)
    rows = sch.fuse(*outer) if row is None else row
    return rows, co, ji, vec, di, dj


def _depthwise_vectors(wl: Workload, target: Target, lanes: int) -> int:
    """Vector registers per pixel of an NHWC depthwise tile: two where the input's pixels fall in
    CROWDED_SETS of the L1's sets or fewer and the wider tile still fits the register file, else one.

    A tile loads, at one channel vector, a line from each of the input pixels under its block,
    while the lines of the next vector are prefetched. Pixels a multiple of 2 KiB apart (512
    float32 channels and up) put all those lines in two sets of an x86 core's L1, whose set
    repeats every 4 KiB: too few ways for the tile's lines and the prefetched ones, which the
    measurements suggest evict one another before their tile comes. Two vectors per pixel make
    each load two adjacent lines that the tile itself asks for, and halve the lines left to the
    prefetcher. With four sets (1 KiB apart) two vectors gained little or lost; elsewhere they
    measured the same as one, or slower for narrow layers, so one stays the rule there."""
    way = BACKENDS["llvm"].l1_way_bytes(target)
    sets = way // math.gcd(wl.in_channels * tvm.DataType(wl.dtype).bits // 8, way)
    if sets > CROWDED_SETS or wl.in_channels % (2 * lanes):
        return 1
    accumulators = 2 * _depthwise_pixel_block(wl)
    fits = accumulators + 4 <= BACKENDS["llvm"].vector_registers(target)  # and two inputs, two filters
    return 2 if fits else 1


def _depthwise_channel_knob(sch: s_tir.Schedule, wl: Workload, lanes: int, registers: int):
    """The lanes of an NHWC depthwise tile's channel vector, a knob: by default the widest vector
    that divides the channels, `registers` registers at most (`_vector_knob`), unless those are so
    narrow that vectors of TAIL_VECTOR_LANES, the last one a masked tail, take at least TAIL_COST
    fewer per pixel: then those, with the dividing width as the alternative. 11 channels take one
    vector of 8 and a tail of 3, not 11 scalar products; 22 two and a tail, not 11 pairs. A tail
    costs several narrow vectors (the compiler masks the guarded lanes' loads, products and
    stores), so it pays only where it saves many; with tails a whole AVX-512 register wide, every
    such layer measured slower than with tails of 8 lanes."""
    channels = wl.in_channels
    dividing = _vector(channels, registers * lanes, lanes)
    tail_lanes = min(TAIL_VECTOR_LANES, lanes)
    if channels % tail_lanes == 0 or channels // dividing - channels // tail_lanes < TAIL_COST:
        return _vector_knob(sch, channels, lanes, registers)
    return _knob(sch, tail_lanes, [dividing], channels)


def _depthwise_pixel_block(wl: Workload) -> int:
    """Output pixels per NHWC depthwise register block by default (the tile's knob's decision)."""
    return _block(wl.out_width, DEPTHWISE_PIXEL_BLOCK)


def _depthwise_nchw(sch: s_tir.Schedule, block, wl: Workload, lanes: int) -> tuple:
    """The NCHW loop nest: a register tile of output rows x one vector along the width,
    the padded rows of each block staged (an inlined zero test would be per lane: width
    is the vector axis). Returns (row loop, tile loop, unrolled rows, vector, tap rows,
    tap columns)."""
    b, c, i, j, di, dj = sch.get_loops(block)
    io, ii = sch.split(i, [None, _block_knob(sch, wl.out_height, DEPTHWISE_ROW_BLOCK, [2, 4, 6, 8])])
    jo, vec = sch.split(j, [None, _vector_knob(sch, wl.out_width, lanes)])
    sch.reorder(b, c, io, jo, di, dj, ii, vec)
    rows = sch.fuse(b, c, io)
    if has_block(sch, "pad"):
        pad = sch.get_sblock("pad")
        sch.compute_at(pad, rows)
        sch.vectorize(sch.get_loops(pad)[-1])
    return rows, jo, ii, vec, di, dj


def _gemm_padding(wl: Workload, target: Target, lanes: int) -> tuple[int, int]:
    """(rows per GEMM tile, channel multiple): the NHWC pointwise's width and output
    channels are padded to multiples of these. A width with no good divisor for
    the GEMM's rows, or channels that leave the vectors narrower than the
    registers, would otherwise put a bounds test in the GEMM's inner loop or
    narrow its vectors, either of which costs more than the padded work. Channels
    are padded to whole pairs of registers while the waste stays within an eighth,
    else to whole registers when that takes fewer vector FMAs than the narrower
    vectors that divide them (24 channels: two FMAs over 32 lanes,
    not three over 8; 11: one, not eleven scalar ones).
    A width under 4 is padded to 4: the wasted rows keep more accumulators in flight
    to hide the FMA latency, where blocks of the width itself would leave it exposed."""
    channels, out = 1, wl.out_channels
    in_place = out // min(_vector(out, GEMM_VECTORS * lanes, lanes), lanes)  # vector FMAs per row and step
    for multiple in (GEMM_VECTORS * lanes, lanes):
        if out % multiple == 0:
            break
        padded = _round_up(out, multiple)
        if 8 * padded <= 9 * out or (multiple == lanes and padded // lanes < in_place):
            channels = multiple
            break
    vectors = _gemm_vectors(_round_up(out, channels), lanes)
    preferred = _gemm_rows(wl, target, vectors, lanes)
    rows = _block(wl.out_width, preferred)
    if wl.out_width % rows:
        rows = _padded_block(wl.out_width, preferred, _gemm_row_limit(target, vectors))
    return rows, channels


def _gemm_domain(wl: Workload, target: Target, lanes: int) -> tuple[int, int, int]:
    """(rows per GEMM tile, width, output channels) of the NHWC pointwise's GEMM, padded."""
    rows, multiple = _gemm_padding(wl, target, lanes)
    return rows, _round_up(wl.out_width, rows), _round_up(wl.out_channels, multiple)


def _pads_gemm(wl: Workload, target: Target, lanes: int) -> bool:
    return _gemm_domain(wl, target, lanes)[1:] != (wl.out_width, wl.out_channels)


def _padded_block(extent: int, preferred: int, most: int) -> int:
    """The block size, within a quarter above `preferred` (and at most `most`) and half
    below, that pads `extent` least (the largest of equals: fewer tiles)."""
    largest = min(preferred + preferred // 4, most)
    return min(range(preferred // 2, largest + 1), key=lambda b: (_round_up(extent, b), -b))


def _round_up(extent: int, multiple: int) -> int:
    return -(-extent // multiple) * multiple


def _pad_pointwise(sch: s_tir.Schedule, padded: tuple[int, int]):
    """Pad the NHWC pointwise's width and output channels to `padded`; returns
    the block that stores the padded GEMM's result."""
    sch.pad_einsum(sch.get_sblock("pointwise"), [1, 1, *padded, 1])
    if has_block(sch, "depthwise_pad"):
        # Read the intermediate in place, zero past its width: a copy measured no faster.
        sch.compute_inline(sch.get_sblock("depthwise_pad"))
    unpad = sch.get_sblock("pointwise_pad")
    store = explicit_store(sch, "pointwise")
    if store is None:
        return unpad
    sch.compute_inline(unpad)
    return store


def _by_input_channel(sch: s_tir.Schedule, block, multiplier: int) -> None:
    """NHWC depthwise with a channel multiplier: output channel k*M+q reads input
    channel k, so vectors run over k, with q outside them. The accumulator and a
    copy of the filter are laid out [q, k] to make those vectors contiguous; the
    store interleaves them back in registers. Vectors over output channels
    would gather each input element M times, lane by lane, which costs an order
    of magnitude more than the FMAs."""
    m = multiplier
    sch.transform_layout(block, ("write", 0), lambda b, i, j, c: (b, i, j, c % m, c // m))
    read = next(n for n, region in enumerate(sch.get(block).reads) if region.source.name == "filter")
    weights = sch.cache_read(block, read, "global")
    sch.transform_layout(weights, ("write", 0), lambda di, dj, k, q: (di, dj, q, k))


def _pointwise(sch: s_tir.Schedule, wl: Workload, target: Target, lanes: int, parallel: bool,
               chunk_rows: int = 0, weights_in_place: bool = False):
    """The GEMM, NHWC (an NCHW separable is computed in NHWC: `compute_layout`). Returns the
    parallel loop; with `chunk_rows`, it runs over chunks of that many output rows and each
    chunk's tiles are a serial loop inside it. `weights_in_place`: as in `_schedule`."""
    if chunk_rows:
        # Tiles stay inside one output row: a tile that wrapped rows would make
        # the store's region a bounding box of whole rows.
        rows = _gemm_rows(wl, target, _gemm_vectors(wl.out_channels, lanes), lanes)
        domain = (_block(wl.out_width, rows), wl.out_width, wl.out_channels)
    else:
        domain = _gemm_domain(wl, target, lanes)
    if domain[1:] == (wl.out_width, wl.out_channels):
        block, store = accumulator(sch, "pointwise")
    else:
        block, store = sch.get_sblock("pointwise"), _pad_pointwise(sch, domain[1:])
    outer, tile, c, ji, vec = _gemm_nest(sch, block, wl, target, lanes, parallel, chunk_rows, domain,
                                         weights_in_place)
    if parallel:
        sch.parallel(outer)
    sch.vectorize(vec)
    sch.unroll(ji)
    _finish_tile(sch, block, store, tile, c)
    return outer


def _gemm_nest(sch: s_tir.Schedule, block, wl: Workload, target: Target, lanes: int, parallel: bool,
               chunk_rows: int, domain: tuple[int, int, int], weights_in_place: bool) -> tuple:
    """The NHWC GEMM's loop nest over `domain` (rows per tile, width, output channels):
    tiles of pixels x channel vectors, in one of four parallel structures (module
    docstring). Returns (parallel loop, tile loop, reduction, unrolled rows, vector)."""
    row_block, width, channels = domain
    b, i, j, o, c = sch.get_loops(block)
    jo, ji = sch.split(j, [None, _knob(sch, row_block, [4, 6, 8, 12, 16], width)])
    oo, vec = sch.split(o, [None, _vector_knob(sch, channels, lanes, GEMM_VECTORS, 4)])
    # Packed panels (`_packs_panels`) keep the panel loop a loop of its own, with the
    # copy under it and the panel's tiles inside; otherwise panels and tiles are one loop.
    # Zero-padded weights (`_pad_pointwise`) are copied anyway: panel by panel where it can be.
    padded_weights = has_block(sch, "pointwise_filter_pad")
    pack = padded_weights or (_packs_panels(wl, chunk_rows) and not (weights_in_place or wl.pointwise_panel))
    inner = (c, ji, vec)
    panels = int(sch.get(oo).extent)
    if chunk_rows:
        outer, tiles = _rows_of_a_chunk(sch, (b, i, jo, oo), inner, chunk_rows)
    elif (parallel and (chunking := _pointwise_chunks(wl, target, width // row_block))[0] > 1
          and not (pack and _copies_each_panel_once(wl, target, panels))):
        outer, tiles = _chunk_per_core(sch, (b, i, jo, oo), inner, *chunking)
    else:
        sch.reorder(oo, b, i, jo, *inner)
        # Packed, the panels alone are the parallel loop: only where they split evenly.
        pack = pack and not (parallel and panels % _cores(target))
        outer, tiles = (oo if pack else None), [b, i, jo]
    tile = sch.fuse(*tiles) if pack else sch.fuse(oo, *tiles)
    if pack:
        _pack_panel(sch, block, oo)
    elif padded_weights:
        _copy_whole(sch, sch.get_sblock("pointwise_filter_pad"), parallel)
    return (tile if outer is None else outer), tile, c, ji, vec


def _copies_each_panel_once(wl: Workload, target: Target, panels: int) -> bool:
    """Whether a GEMM that copies its weight panels (`_packs_panels`, or a padded GEMM's zero-padded
    copy) runs them outermost, in parallel, rather than one chunk of rows per core with every
    panel inside each (`_pointwise_chunks`): where the weights are more than
    WEIGHTS_OVER_INTERMEDIATE times the intermediate, and the panels split evenly over the cores.

    With a chunk of rows per core, every core copies every panel, so the whole weights are read
    once per core, in the copy's strided reads, whose rows the prefetchers do not follow: each
    waits on the lines it misses. Outermost, each panel is copied once, by the core that runs it,
    which then reads all of the intermediate, half of it written by the other core's depthwise.
    Where the weights are many times the intermediate (a 10x10 or 6x6 output of 1024 channels or
    more), the copy saved outweighs the rows moved between the cores; where they are a few times
    it, the two measured alike or by turns faster and slower, as the threads' placement decided.
    The weights are [C*M, O] and the intermediate [pixels, C*M], so their ratio is O / pixels."""
    pixels = wl.batch * wl.out_height * wl.out_width
    return wl.out_channels > WEIGHTS_OVER_INTERMEDIATE * pixels and panels % _cores(target) == 0


def _rows_of_a_chunk(sch: s_tir.Schedule, loops: tuple, inner: tuple, chunk_rows: int) -> tuple:
    """The GEMM over one chunk of `chunk_rows` output rows, inside the loop over chunks
    whose depthwise each computes first: panels outside the chunk's tiles."""
    b, i, jo, oo = loops
    io, *ii = [i] if chunk_rows == 1 else sch.split(i, [None, chunk_rows])
    sch.reorder(b, io, oo, *ii, jo, *inner)
    return sch.fuse(b, io), [*ii, jo]


def _chunk_per_core(sch: s_tir.Schedule, loops: tuple, inner: tuple, chunks: int, by_tile: bool) -> tuple:
    """One chunk of output rows (or, `by_tile`, of row tiles) per core outermost, the panels
    inside it: each core reads only the rows its own depthwise wrote."""
    b, i, jo, oo = loops
    if by_tile:
        chunk, tile = sch.split(sch.fuse(b, i, jo), [chunks, None])
        sch.reorder(chunk, oo, tile, *inner)
        return chunk, [tile]
    chunk, row = sch.split(sch.fuse(b, i), [chunks, None])
    sch.reorder(chunk, oo, row, jo, *inner)
    return chunk, [row, jo]
