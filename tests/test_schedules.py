"""The CPU tuning spaces: every design space a tuning job searches computes
TF's result, at the hand-written sizes and at sizes the search samples."""

import dataclasses
import re

import numpy as np
import pytest
import tvm
from tvm import s_tir
from tvm.s_tir.schedule import Trace

from tvmsep import build
from tvmsep.matrix import matrix
from tvmsep.networks import Layer, network
from tvmsep.reference import reference_for
from tvmsep.runtime import Kernel
from tvmsep.schedules import llvm
from tvmsep.spec import depthwise_workload, separable_workload
from tvmsep.target import host_target

from conftest import assert_close

TARGET = host_target()  # for the kernels these tests run


def _cpu(cores: int) -> tvm.target.Target:
    """A CPU with 16-lane fp32 vectors and `cores` cores, for tests of structure alone (nothing
    runs): their outcome does not depend on the machine the tests run on."""
    return tvm.target.Target({"kind": "llvm", "mcpu": "skylake-avx512", "num-cores": cores})


STRUCTURE = _cpu(2)
AVX2 = {"kind": "llvm", "mcpu": "haswell", "num-cores": 2}  # 16 vector registers of 256 bits
NEON = {"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mcpu": "neoverse-n1", "num-cores": 4}  # 128 bits


def _spaces(wl):
    return llvm.design_spaces(s_tir.Schedule(build.workload_module(wl, TARGET)), wl, TARGET)

# Every NHWC configuration of the matrix that has more than one space (epilogues included), plus
# float64 (half the lanes), a pointwise whose per-core row chunks end mid-image (3 x 6 rows), one
# whose rows do not split evenly over the cores (7, fused by hand), one whose pointwise is padded (a width of 11 and
# 72 output channels, with an epilogue; its 11 rows of two tiles split over the cores by tile), one
# whose intermediate is too large for a core's L2, computed chunk by chunk (with a multiplier and an
# epilogue), pointwise weights whose rows are a multiple of 512 bytes apart, packed panel by panel
# (7 rows, their weights larger than a core's L2, in float16 and float64 too), 24 output channels
# padded to 32, a one-vector GEMM tile of 10 rows, and a row-blocked depthwise with a batch, a
# multiplier, a rate and an epilogue.
SEPARABLE = [(name, wl) for name, wl in matrix() if wl.op == "separable" and wl.layout == "NHWC"] + [
    ("b1-10x12x1-s1-SAME-o20-NHWC-float64",
     separable_workload((1, 10, 10, 12), "float64", (3, 3, 12, 1), "float64", (1, 1, 12, 20), "float64",
                        [1, 1, 1, 1], "SAME")),
    ("b3-6x12x64x1-s1-SAME-o64-NHWC-float32",
     separable_workload((3, 6, 12, 64), "float32", (3, 3, 64, 1), "float32", (1, 1, 64, 64), "float32",
                        [1, 1, 1, 1], "SAME")),
    ("b1-7x256x1-s1-SAME-o64-NHWC-float32",
     separable_workload((1, 7, 7, 256), "float32", (3, 3, 256, 1), "float32", (1, 1, 256, 64), "float32",
                        [1, 1, 1, 1], "SAME")),
    ("b1-11x64x1-s1-SAME-o72-bias-relu6-NHWC-float32",
     separable_workload((1, 11, 11, 64), "float32", (3, 3, 64, 1), "float32", (1, 1, 64, 72), "float32",
                        [1, 1, 1, 1], "SAME", bias=((72,), "float32"), activation="relu6")),
    ("b8-28x48x2-s1-SAME-o32-bias-relu6-NHWC-float32",
     separable_workload((8, 28, 28, 48), "float32", (3, 3, 48, 2), "float32", (1, 1, 96, 32), "float32",
                        [1, 1, 1, 1], "SAME", bias=((32,), "float32"), activation="relu6")),
    ("b1-7x96x1-s1-SAME-o256-NHWC-float32",  # fused by hand; its two stages copy weight panels
     separable_workload((1, 7, 7, 96), "float32", (3, 3, 96, 1), "float32", (1, 1, 96, 256), "float32",
                        [1, 1, 1, 1], "SAME")),
    ("b1-7x64x1-s1-SAME-o96-bias-relu6-NHWC-float16",  # fused by hand, with an epilogue
     separable_workload((1, 7, 7, 64), "float16", (3, 3, 64, 1), "float16", (1, 1, 64, 96), "float16",
                        [1, 1, 1, 1], "SAME", bias=((96,), "float16"), activation="relu6")),
    ("b1-7x1088x1-s1-SAME-o256-NHWC-float32",
     separable_workload((1, 7, 7, 1088), "float32", (3, 3, 1088, 1), "float32", (1, 1, 1088, 256), "float32",
                        [1, 1, 1, 1], "SAME")),
    ("b2-8x40x1-s2-SAME-o128-bias-relu-NHWC-float32",
     separable_workload((2, 16, 16, 40), "float32", (3, 3, 40, 1), "float32", (1, 1, 40, 128), "float32",
                        [1, 2, 2, 1], "SAME", bias=((128,), "float32"), activation="relu")),
    ("b1-7x2080x1-s1-SAME-o256-NHWC-float16",
     separable_workload((1, 7, 7, 2080), "float16", (3, 3, 2080, 1), "float16", (1, 1, 2080, 256), "float16",
                        [1, 1, 1, 1], "SAME")),
    ("b1-9x24x1-s1-VALID-o64-NHWC-float64",
     separable_workload((1, 11, 11, 24), "float64", (3, 3, 24, 1), "float64", (1, 1, 24, 64), "float64",
                        [1, 1, 1, 1], "VALID")),
    ("b1-12x40x1-s1-SAME-o24-NHWC-float32",
     separable_workload((1, 12, 12, 40), "float32", (3, 3, 40, 1), "float32", (1, 1, 40, 24), "float32",
                        [1, 1, 1, 1], "SAME")),
    ("b1-10x320x1-s1-SAME-o16-NHWC-float32",  # a one-vector tile as tall as the width (`llvm._gemm_rows`)
     separable_workload((1, 10, 10, 320), "float32", (3, 3, 320, 1), "float32", (1, 1, 320, 16), "float32",
                        [1, 1, 1, 1], "SAME")),
    # Filters with a single tap row or column, whose loops of one iteration the depthwise's
    # compute_at would drop: a 1x1 one on an intermediate computed chunk by chunk, 1x5 and 7x1.
    ("b8-28x48x2-k1x1-s1-SAME-o32-NHWC-float32",
     separable_workload((8, 28, 28, 48), "float32", (1, 1, 48, 2), "float32", (1, 1, 96, 32), "float32",
                        [1, 1, 1, 1], "SAME")),
    ("b1-14x64x1-k1x5-s1-SAME-o32-NHWC-float32",
     separable_workload((1, 14, 14, 64), "float32", (1, 5, 64, 1), "float32", (1, 1, 64, 32), "float32",
                        [1, 1, 1, 1], "SAME")),
    ("b1-12x40x1-k7x1-s1-SAME-o24-NHWC-float32",
     separable_workload((1, 12, 12, 40), "float32", (7, 1, 40, 1), "float32", (1, 1, 40, 24), "float32",
                        [1, 1, 1, 1], "SAME")),
    # NCHW, computed in NHWC between two transposes (`llvm.compute_layout`): its spaces are NHWC's.
    ("b2-7x24x1-s1-SAME-o40-bias-relu-NCHW-float32",
     separable_workload((2, 24, 7, 7), "float32", (3, 3, 24, 1), "float32", (1, 1, 24, 40), "float32",
                        [1, 1, 1, 1], "SAME", data_format="NCHW", bias=((40,), "float32"), activation="relu")),
    ("b1-64x16x1-s1-SAME-o80-bias-relu-NCHW-float32",  # its GEMM stores in NCHW (`llvm._stores_transposed`)
     separable_workload((1, 16, 64, 64), "float32", (3, 3, 16, 1), "float32", (1, 1, 16, 80), "float32",
                        [1, 1, 1, 1], "SAME", data_format="NCHW", bias=((80,), "float32"), activation="relu"))]
ROW_BLOCKED = [(name, wl) for name, wl in matrix()
               if wl.op == "depthwise" and wl.layout == "NHWC" and len(_spaces(wl)) == 2] + [
    ("b2-12x6x2-s1-SAME-r2-bias-relu6-NHWC-float32",
     depthwise_workload((2, 12, 12, 6), "float32", (3, 3, 6, 2), "float32", [1, 1, 1, 1], "SAME", rate=[2, 2],
                        bias=((12,), "float32"), activation="relu6")),
    ("b1-14x512x1-s1-SAME-NHWC-float32",  # two vectors per pixel on AVX-512 (`llvm._depthwise_vectors`)
     depthwise_workload((1, 14, 14, 512), "float32", (3, 3, 512, 1), "float32", [1, 1, 1, 1], "SAME")),
    ("b1-14x40x1-s1-SAME-NCHW-float32",  # computed in NHWC (`llvm.compute_layout`)
     depthwise_workload((1, 40, 14, 14), "float32", (3, 3, 40, 1), "float32", [1, 1, 1, 1], "SAME",
                        data_format="NCHW"))]


def _check(sch, wl, rng):
    inputs = [rng.standard_normal(shape).astype(wl.dtype) for shape in wl.arg_shapes]
    out = np.full(wl.output_shape, np.nan, wl.dtype)
    Kernel(wl, build.compile_scheduled(sch.mod, TARGET).mod["main"], "test").run(inputs, out)
    assert_close(out, reference_for(wl, inputs), wl.dtype)


@pytest.mark.parametrize("name, wl", SEPARABLE + ROW_BLOCKED, ids=[name for name, _ in SEPARABLE + ROW_BLOCKED])
def test_every_design_space_matches_the_reference(name, wl, rng):
    spaces = _spaces(wl)
    copies = any(_copies_weight_panels(space) for space in spaces[:2])  # the two-stage structure's
    assert len(spaces) == 2 + copies, "NHWC separable has the two-stage and the fused structure, " \
        "NHWC depthwise tall enough the row-blocked one; a GEMM that copies its weight panels, " \
        "the same reading them in place"
    assert not (copies and _copies_weight_panels(spaces[-1]))
    assert str(spaces[0].trace) == str(build.hand_schedule(wl, TARGET).trace), \
        "the first space is the hand-written schedule"
    for space in spaces:
        _check(space, wl, rng)
        # The same structure with sizes drawn as the search draws them.
        resampled = s_tir.Schedule(build.workload_module(wl, TARGET), seed=int(rng.integers(1 << 30)))
        Trace(space.trace.insts, {}).apply_to_schedule(resampled, remove_postproc=False)
        _check(resampled, wl, rng)


def _intermediate_allocation(mod) -> str:
    """The script of `mod` once each buffer is allocated where it is used, as small as its uses."""
    passes = tvm.s_tir.transform
    lower = tvm.transform.Sequential([passes.LowerInitBlock(), passes.PlanAndUpdateBufferAllocationLocation(),
                                      passes.ConvertBlocksToOpaque(), passes.CompactBufferAllocation()])
    return lower(mod).script()


def _allocations(mod) -> dict[str, tuple[int, ...]]:
    """The shape of each buffer `mod` allocates, once allocated where used and as small as its uses."""
    text = _intermediate_allocation(mod)
    return {name: tuple(int(d) for d in shape.split(",") if d.strip())
            for name, shape in re.findall(r"(\w+) = T\.sblock_alloc_buffer\(\(([\d, ]*)\)", text)}


def test_fused_space_keeps_only_one_row_of_the_intermediate():
    """The point of fusing: the depthwise result lives in a one-row buffer."""
    wl = SEPARABLE[0][1]
    text = _intermediate_allocation(_spaces(wl)[1].mod)
    assert f"depthwise = T.sblock_alloc_buffer((1, 1, {wl.out_width}, {wl.mid_channels})" in text, text
    two_stage = _spaces(wl)[0].mod.script()
    assert f"({wl.batch}, {wl.out_height}, {wl.out_width}, {wl.mid_channels})" in two_stage


def test_a_gemm_that_would_read_the_other_cores_rows_is_fused_row_by_row_where_its_weights_fit_l2():
    """7 output rows of one GEMM tile split evenly over no cores: the two-stage GEMM's panel-outer
    nest would read rows of the intermediate the other core wrote. Where the weights fit a core's
    L2 (`Backend.core_cache_bytes`), the hand-written separable computes each row's depthwise
    under the GEMM (a one-row intermediate), and the two stages are its other design space;
    larger weights, which each row would re-read from L3, and rows that split evenly keep the
    two stages."""
    by_name = dict(SEPARABLE)
    for name, fused in (("b1-7x256x1-s1-SAME-o64-NHWC-float32", True),  # 64 KiB of weights
                        ("b1-7x96x1-s1-SAME-o256-NHWC-float32", True),
                        ("b1-7x64x1-s1-SAME-o96-bias-relu6-NHWC-float16", True),
                        ("b1-7x1088x1-s1-SAME-o256-NHWC-float32", False),  # 1.1 MiB
                        ("b3-6x12x64x1-s1-SAME-o64-NHWC-float32", False)):  # 18 rows: 9 per core
        wl = by_name[name]
        assert _intermediate_rows(build.hand_schedule(wl, STRUCTURE).mod) == (1 if fused else wl.out_height), name
        spaces = llvm.design_spaces(s_tir.Schedule(build.workload_module(wl, STRUCTURE)), wl, STRUCTURE)
        assert [_intermediate_rows(space.mod) for space in spaces[:2]] == \
            ([1, wl.out_height] if fused else [wl.out_height, 1]), name


def _intermediate_rows(mod) -> int:
    """The rows of the depthwise result a separable's kernel holds: the float16 one, rounded
    once (`depthwise_cast`), where the depthwise sums in float32."""
    allocations = _allocations(mod)
    return allocations.get("depthwise_cast", allocations.get("depthwise"))[1]


def test_an_intermediate_too_large_for_l2_is_computed_chunk_by_chunk():
    """Past a core's L2 share (`Backend.core_cache_bytes`) the hand-written separable
    computes the depthwise per chunk of whole rows of one image, inside the GEMM's
    parallel loop; below it, as a whole stage."""
    large = dict(SEPARABLE)["b8-28x48x2-s1-SAME-o32-bias-relu6-NHWC-float32"]
    batch, rows, width, channels = _allocations(build.hand_schedule(large, STRUCTURE).mod)["depthwise"]
    assert (batch, width, channels) == (1, large.out_width, large.mid_channels)
    assert 2 <= rows < large.out_height and large.out_height % rows == 0, "chunks of whole rows of one image"
    assert rows * width * channels * 4 <= llvm.CHUNK_BYTES
    small = dict(SEPARABLE)["b3-6x12x64x1-s1-SAME-o64-NHWC-float32"]
    assert _allocations(build.hand_schedule(small, STRUCTURE).mod)["depthwise"] == \
        (small.batch, small.out_height, small.out_width, small.mid_channels), "one whole stage"


def test_other_layouts_and_shapes_have_one_space():
    """A depthwise computed in NCHW has one structure; NHWC depthwise blocks rows only in whole
    blocks, two or more per core."""
    nchw = next(wl for _, wl in matrix() if wl.op == "depthwise" and wl.layout == "NCHW" and wl.out_width == 56)
    assert llvm.compute_layout(nchw, TARGET) == "NCHW"
    assert len(_spaces(nchw)) == 1
    odd_height = next(wl for _, wl in matrix() if wl.op == "depthwise" and wl.out_height == 11)
    assert len(_spaces(odd_height)) == 1


@pytest.mark.parametrize("cores, chunked", [
    (2, {"b3-6x12x64x1-s1-SAME-o64-NHWC-float32": True,  # 18 rows: 9 per core
         "b1-7x1088x1-s1-SAME-o256-NHWC-float32": False,  # 7 rows, 7 tiles: neither splits
         "b1-11x64x1-s1-SAME-o72-bias-relu6-NHWC-float32": True}),  # 11 rows of 2 tiles: by tile
    (3, {"b3-6x12x64x1-s1-SAME-o64-NHWC-float32": True,  # 6 rows per core
         "b1-7x1088x1-s1-SAME-o256-NHWC-float32": False,
         "b1-11x64x1-s1-SAME-o72-bias-relu6-NHWC-float32": False}),  # 11 rows, 22 tiles: neither splits
])
def test_pointwise_rows_are_chunked_per_core(cores, chunked):
    """Each core's pointwise reads the intermediate rows its own depthwise wrote
    (module docstring): one parallel chunk per core when the rows split evenly,
    or else their GEMM tiles (11 rows padded to 12 wide, in two tiles each), else
    the panel-outer nest over all tiles."""
    target = _cpu(cores)
    for name, expected in chunked.items():
        wl = dict(SEPARABLE)[name]
        assert llvm._parallel(wl, target), name
        assert (f"T.parallel({cores})" in build.hand_schedule(wl, target).mod.script()) == expected, name


def _square_separable(size: int, channels: int, outputs: int, dtype: str = "float32", epilogue: bool = False):
    layer = Layer("square", 1, size, channels, 1, outputs, dtype=dtype)
    return layer.arguments("separable", bias=epilogue, activation="relu6" if epilogue else None).workload()


@pytest.mark.parametrize("size, channels, outputs, panel_outer", [
    (6, 1024, 1024, True),  # 4 MiB of weights, 144 KiB of intermediate: MobileNetV1's last at 192x192
    (10, 1024, 1536, True),  # Xception's exit flow
    (14, 512, 512, False),  # 1 MiB and 392 KiB: a chunk of rows per core, as the depthwise wrote them
])
def test_a_gemm_copying_weights_many_times_its_intermediate_copies_each_panel_once(size, channels, outputs,
                                                                                     panel_outer):
    """Copied panel by panel (rows 2 KiB or more apart), weights many times the intermediate run
    their panels outermost, split over the cores, each panel copied once
    (`llvm._copies_each_panel_once`); the rows split evenly over the cores, so the weights of
    a few times the intermediate keep one chunk of rows per core, each copying every panel."""
    wl = _square_separable(size, channels, outputs)
    script = build.hand_schedule(wl, STRUCTURE).mod.script()
    assert "pointwise_filter_global" in script, "the panels are copied"
    panels = outputs // (llvm.GEMM_VECTORS * llvm.vector_lanes(STRUCTURE, "float32"))
    assert f"T.parallel({panels})" in script if panel_outer else "T.parallel(2)" in script


@pytest.mark.parametrize("dtype, epilogue", [("float32", False), ("float16", True)])
def test_a_gemm_copying_each_panel_once_matches_the_reference(dtype, epilogue, rng):
    """4x4 pixels of 256 channels to 512: weights 32 times the intermediate, panels outermost."""
    wl = _square_separable(4, 256, 512, dtype, epilogue)
    panels = wl.out_channels // (llvm.GEMM_VECTORS * llvm.vector_lanes(TARGET, "float32"))
    assert llvm._copies_each_panel_once(wl, TARGET, panels)
    _check(build.hand_schedule(wl, TARGET), wl, rng)


@pytest.mark.parametrize("shape, strides, parallel", [
    ((1, 14, 14, 512), [1, 2, 2, 1], True),  # 0.45 MFLOP, but 0.5 MB moved: MobileNetV1's 14x14x512 s2
    ((1, 7, 7, 256), [1, 1, 1, 1], False),  # half the FLOPs, a fifth of the bytes
    ((1, 8, 8, 8), [1, 1, 1, 1], False),
])
def test_a_depthwise_runs_on_every_core_when_its_flops_or_its_bytes_are_many(shape, strides, parallel):
    """Waking the pool pays when one core would take long: a depthwise kernel's time follows
    the bytes it moves as much as its FLOPs (`llvm._work`)."""
    wl = depthwise_workload(shape, "float32", (3, 3, shape[3], 1), "float32", strides, "SAME")
    assert ("T.parallel(" in build.hand_schedule(wl, STRUCTURE).mod.script()) == parallel


def _depthwise_lanes(wl, target) -> set[int]:
    """The widths of the vectorized loops of `wl`'s hand-written depthwise kernel for `target`."""
    return {int(w) for w in re.findall(r"T\.vectorized\((\d+)\)", build.hand_schedule(wl, target).mod.script())}


@pytest.mark.parametrize("channels, strides, dtype, lanes", [
    (512, [1, 1, 1, 1], "float32", 32),  # pixels 2 KiB apart: two of the L1's sets
    (512, [1, 2, 2, 1], "float32", 32),
    (1024, [1, 1, 1, 1], "float32", 32),
    (512, [1, 1, 1, 1], "float64", 16),  # 4 KiB apart, 8 lanes a vector
    (256, [1, 1, 1, 1], "float32", 16),  # 1 KiB apart: four sets
    (384, [1, 1, 1, 1], "float32", 16),
    (576, [1, 2, 2, 1], "float32", 16),
])
def test_a_depthwise_whose_pixels_crowd_a_few_cache_sets_is_two_vectors_wide(channels, strides, dtype, lanes, rng):
    """Input pixels a multiple of 2 KiB apart put the lines a tile loads at one channel vector in
    two sets of an x86 L1, and their prefetched successors evict each other: such a tile is two
    vectors wide where the register file holds it (AVX-512), one elsewhere (AVX2's 16 registers,
    and aarch64, whose L1 sets repeat every 16 KiB). The wider tile computes TF's result."""
    wl = depthwise_workload((1, 14, 14, channels), dtype, (3, 3, channels, 1), dtype, strides, "SAME")
    assert _depthwise_lanes(wl, STRUCTURE) == {lanes}
    assert _depthwise_lanes(wl, tvm.target.Target(AVX2)) == {256 // np.dtype(dtype).itemsize // 8}
    assert _depthwise_lanes(wl, tvm.target.Target(NEON)) == {128 // np.dtype(dtype).itemsize // 8}
    if lanes == 2 * llvm.vector_lanes(STRUCTURE, dtype):  # the wide tile, as this CPU builds it
        _check(build.hand_schedule(wl, TARGET), wl, rng)


@pytest.mark.parametrize("channels, x86, neon", [
    (11, 8, 4),  # 11 scalar products a pixel, or one vector and a masked tail of 3
    (9, 8, 1),  # NEON's vectors of 4 would save only 7 of 9 scalars
    (22, 8, 2),
    (100, 8, 4),  # 25 vectors of 4, or 12 of 8 and a tail of 4
    (12, 4, 4),  # few enough vectors that divide the channels
    (44, 4, 4),
    (6, 2, 2),
])
def test_channels_that_no_wide_vector_divides_take_vectors_of_eight_with_a_masked_tail(channels, x86, neon):
    """Where the widest vector that divides the channels is so narrow that a pixel takes many,
    an NHWC depthwise tile takes vectors of 8 lanes (4 on NEON) with a masked tail instead. (Its
    channel vector is its narrowest vectorized loop: a tile of scalars stores along its pixels.)"""
    wl = depthwise_workload((1, 14, 14, channels), "float32", (3, 3, channels, 1), "float32", [1, 1, 1, 1], "SAME")
    assert min(_depthwise_lanes(wl, STRUCTURE)) == min(_depthwise_lanes(wl, tvm.target.Target(AVX2))) == x86
    assert min(_depthwise_lanes(wl, tvm.target.Target(NEON))) == neon


@pytest.mark.parametrize("shape, filter_shape, strides, padding, dtype", [
    ((1, 15, 16, 11), (3, 3, 11, 1), [1, 1, 1, 1], "SAME", "float32"),
    ((2, 17, 19, 22), (3, 3, 22, 1), [1, 2, 2, 1], "VALID", "float32"),
    ((1, 13, 14, 13), (5, 5, 13, 2), [1, 1, 1, 1], "SAME", "float16"),  # vectors over input channels
    ((1, 12, 12, 100), (3, 3, 100, 1), [1, 1, 1, 1], [[0, 0], [1, 2], [0, 1], [0, 0]], "float64"),
])
def test_a_depthwise_with_a_masked_channel_tail_matches_the_reference(shape, filter_shape, strides, padding, dtype,
                                                                     rng):
    """Every kernel with a masked tail of channels, depthwise and separable, in each design space,
    writes all of a NaN-poisoned result within its dtype's tolerance of the float64 reference."""
    depthwise = depthwise_workload(shape, dtype, filter_shape, dtype, strides, padding)
    pointwise = (1, 1, filter_shape[2] * filter_shape[3], 24)
    separable = separable_workload(shape, dtype, filter_shape, dtype, pointwise, dtype, strides, padding)
    sum_lanes = llvm._sum_lanes(s_tir.Schedule(build.workload_module(depthwise, TARGET)), "depthwise", TARGET)
    assert min(_depthwise_lanes(depthwise, TARGET)) == min(llvm.TAIL_VECTOR_LANES, sum_lanes), \
        "the hand-written tile's channel vectors end in a masked tail"
    for wl in (depthwise, separable):
        spaces = _spaces(wl)
        assert re.search(r"T\.where\(", spaces[0].mod.script()), "the hand-written tile has a tail"
        for space in spaces:
            _check(space, wl, rng)


def _gemm_tile(script: str) -> tuple[int, int]:
    """(rows, lanes) of the hand-written GEMM's register tile in a scheduled module's `script`: the
    unrolled and the vectorized loop under its reduction, 1 for a loop that is not there."""
    gemm = script.split('T.sblock("pointwise_update")')[0].rsplit(" in range(", 1)[1]
    rows, lanes = (re.search(rf"T\.{kind}\((\d+)\)", gemm) for kind in ("unroll", "vectorized"))
    return int(rows.group(1)) if rows else 1, int(lanes.group(1)) if lanes else 1


def test_pointwise_tails_are_padded_out_of_the_gemm_loop():
    """A width with no good row block (11) and channels that are not whole
    vector registers (72) pad the GEMM's domain: no bounds test in its inner
    loop, full-register vectors. Shapes that fit are not padded."""
    padded = dict(SEPARABLE)["b1-11x64x1-s1-SAME-o72-bias-relu6-NHWC-float32"]
    assert _allocations(build.hand_schedule(padded, STRUCTURE).mod)["pointwise_pad_local"] == (1, 1, 6, 16), \
        "11 -> 12 wide in tiles of 6, 72 -> 80 channels in vectors of 16"
    script = build.hand_schedule(padded, STRUCTURE).mod.script()
    update = script.split('T.sblock("pointwise_update")')[1]
    assert "T.where" not in update.split("T.sblock(")[0], update
    assert _gemm_tile(script)[1] == 16, "one vector of 16 channels per row"
    fits = dict(SEPARABLE)["b3-6x12x64x1-s1-SAME-o64-NHWC-float32"]
    assert "pad_einsum" not in str(build.hand_schedule(fits, STRUCTURE).trace)
    assert not {"pointwise_pad", "pointwise_pad_local", "pointwise_filter_pad"} & \
        set(_allocations(build.hand_schedule(fits, STRUCTURE).mod)), "12 wide in rows of 6, 64 channels: no padding"


def _packed_weights(wl) -> bool:
    return _copies_weight_panels(build.hand_schedule(wl, STRUCTURE))


def _copies_weight_panels(sch) -> bool:
    return "pointwise_filter_global" in sch.mod.script()


def test_pointwise_weights_a_multiple_of_512_bytes_apart_are_packed_per_panel():
    """Weights whose rows fall on few cache sets are copied panel by panel into a
    contiguous buffer that the panel's tiles read (`llvm._packs_panels`); other
    strides read them in place."""
    by_name = dict(SEPARABLE)
    for name in ("b1-7x1088x1-s1-SAME-o256-NHWC-float32", "b2-8x40x1-s2-SAME-o128-bias-relu-NHWC-float32",
                 "b1-7x2080x1-s1-SAME-o256-NHWC-float16", "b1-9x24x1-s1-VALID-o64-NHWC-float64"):
        wl = by_name[name]
        assert _packed_weights(wl), name
        text = _intermediate_allocation(build.hand_schedule(wl, STRUCTURE).mod)
        assert "pointwise_filter_global = T.sblock_alloc_buffer((1, 1, " in text, text
        spaces = llvm.design_spaces(s_tir.Schedule(build.workload_module(wl, STRUCTURE)), wl, STRUCTURE)
        assert [_copies_weight_panels(space) for space in spaces] == [True, False, False], \
            "the fused space reads them in place, and so does a copy of the hand-written one"
    for name in ("b3-6x12x64x1-s1-SAME-o64-NHWC-float32", "b1-11x64x1-s1-SAME-o72-bias-relu6-NHWC-float32",
                 "b1-10x12x1-s1-SAME-o20-NHWC-float64"):
        assert not _packed_weights(by_name[name]), name


def test_padded_weights_are_copied_panel_by_panel():
    """A GEMM whose channels are padded reads a zero-padded copy of each weight panel, made
    under the panel loop ([C*M, NR]), not a padded copy of all the weights. Channels are
    padded to whole registers where that takes fewer vector FMAs: 72 -> 80, and 24 -> 32,
    whose unpadded vectors would be 8 lanes wide."""
    lanes = llvm.vector_lanes(STRUCTURE, "float32")
    for name, padded in (("b1-11x64x1-s1-SAME-o72-bias-relu6-NHWC-float32", 80),
                         ("b1-12x40x1-s1-SAME-o24-NHWC-float32", 32)):
        wl = dict(SEPARABLE)[name]
        text = _intermediate_allocation(build.hand_schedule(wl, STRUCTURE).mod)
        panel = next(line for line in text.split("\n") if "pointwise_filter_pad = T.sblock_alloc_buffer" in line)
        shape = [int(v) for v in panel.split("((", 1)[1].split(")", 1)[0].split(",")]
        assert shape[:3] == [1, 1, wl.mid_channels] and padded % shape[3] == 0 and shape[3] % lanes == 0, panel
        assert shape[3] < padded or shape[3] == llvm.GEMM_VECTORS * lanes, "one panel, not all the weights"


@pytest.mark.parametrize("preset", ["mobilenet_v1", "mobilenet_v2"])
def test_gemm_tiles_fit_the_16_registers_of_avx2(preset):
    """Read from the assembly: the separable kernels of MobileNet's layers for an AVX2 CPU keep
    their GEMM's register tiles out of the stack. With a 1x1 depthwise filter: the GEMMs are
    MobileNet's, and the depthwise stage, a tap per pixel, takes no registers the tiles need.
    Its 3x3 tiles are the depthwise's matter, not the GEMM tile's: the padding's per-tap
    selects take vector registers as masks there (AVX-512 keeps them in mask registers), and
    LLVM keeps the nine taps' weights in registers beside a block's accumulators."""
    from helpers.assembly import spilling_loops
    workloads = []
    for layer in network(preset):
        arguments = layer.arguments("separable")
        channels, multiplier = arguments.filter_shape[2:]
        workloads.append(dataclasses.replace(arguments, filter_shape=(1, 1, channels, multiplier)).workload())
    spilling = spilling_loops(workloads, AVX2)
    assert not spilling, spilling


@pytest.mark.parametrize("width", [5, 7, 11, 13, 19])
def test_avx2_gemm_tiles_of_every_width_match_the_reference(width, rng):
    """The narrower GEMM tiles of a 16-register CPU, and the padded widths they give, compute
    the reference (kernels for AVX2 run on any x86-64 CPU these tests run on)."""
    wl = separable_workload([1, width, width, 24], "float32", [3, 3, 24, 1], "float32", [1, 1, 24, 40],
                            "float32", [1, 1, 1, 1], "SAME")
    kernel = Kernel(wl, build.compile_module(wl, tvm.target.Target(AVX2)).mod["main"], "test")
    arrays = [rng.standard_normal(shape).astype(np.float32) for shape in wl.arg_shapes]
    out = np.full(wl.output_shape, np.nan, np.float32)
    kernel.run(arrays, out)
    assert_close(out, reference_for(wl, arrays), "float32")


@pytest.mark.parametrize("target, panel", [(STRUCTURE, 32), (AVX2, 16), (NEON, 8)])
def test_packed_pointwise_weights_are_read_in_place_in_panels_of_the_gemm_vector(target, panel):
    """Where the op's GEMM copies its weight panels on every call (rows 2 KiB apart), a layer packs
    them ahead in panels of the GEMM's vector (`llvm.pointwise_panel`), and that kernel reads them
    in place: no copy, and vectors one panel wide, on AVX-512, AVX2 and NEON alike. (A width of 12
    divides into whole tiles on all three; where the GEMM is padded, its weights are not packed.)"""
    target = tvm.target.Target(target)
    wl = separable_workload((1, 12, 12, 512), "float32", (3, 3, 512, 1), "float32", (1, 1, 512, 512), "float32",
                            [1, 1, 1, 1], "SAME")
    assert llvm.pointwise_panel(wl, target) == panel
    packed = dataclasses.replace(wl, pointwise_panel=panel)
    assert "pointwise_filter_global" in build.hand_schedule(wl, target).mod.script()  # the op's copy
    script = build.hand_schedule(packed, target).mod.script()
    assert "pointwise_filter_global" not in script
    assert _gemm_tile(script)[1] == panel


@pytest.mark.parametrize("channels, outputs, target, tile", [
    (512, 512, STRUCTURE, (14, 32)),  # a panel of 64 KiB: as tall as 32 registers hold
    (128, 128, STRUCTURE, (7, 32)),   # 16 KiB, half the L1: GEMM_ROWS, a divisor of the width
    (512, 16, STRUCTURE, (14, 16)),   # one vector: the width itself, under the 30 rows that fit
    (512, 512, AVX2, (5, 16)),        # 16 registers hold 6 rows at most: 14 padded to 15 (`_gemm_padding`)
    (1024, 512, NEON, (14, 8)),       # 32 KiB of NEON vectors (8 lanes)
    (512, 512, NEON, (7, 8)),         # 16 KiB
])
def test_gemm_tiles_are_as_tall_as_the_registers_hold_where_their_weight_panel_outgrows_the_l1(
        channels, outputs, target, tile):
    """Each GEMM tile reads its whole weight panel ([C*M, NR]); one larger than half the L1 comes
    from L2 for every tile, so the tiles are then as tall as the register file holds, in a
    divisor of the width (`llvm._gemm_rows`); smaller panels keep GEMM_ROWS."""
    wl = separable_workload((1, 14, 14, channels), "float32", (3, 3, channels, 1), "float32",
                            (1, 1, channels, outputs), "float32", [1, 1, 1, 1], "SAME")
    assert _gemm_tile(build.hand_schedule(wl, tvm.target.Target(target)).mod.script()) == tile


def test_a_padded_gemm_packs_no_weights():
    """pad_einsum takes no packed weights (their index is no einsum), so a padded GEMM keeps TF's
    layout: MobileNetV1's 7x7 GEMM, whose width of 7 AVX2 pads to 8 (its tiles hold 6 rows at
    most), packs nothing there, and packs on AVX-512 (tiles of 7)."""
    wl = separable_workload((1, 7, 7, 1024), "float32", (3, 3, 1024, 1), "float32", (1, 1, 1024, 1024), "float32",
                            [1, 1, 1, 1], "SAME")
    assert llvm.pointwise_panel(wl, tvm.target.Target(AVX2)) == 0
    assert llvm.pointwise_panel(wl, STRUCTURE) == 32


@pytest.mark.parametrize("op, size, stride, target, layout", [
    ("separable", 112, 1, STRUCTURE, "NHWC"),  # every separable
    ("separable", 7, 1, AVX2, "NHWC"),
    ("depthwise", 112, 1, STRUCTURE, "NCHW"),  # vectors of 16 along the width
    ("depthwise", 56, 1, STRUCTURE, "NCHW"),   # of 8
    ("depthwise", 28, 1, STRUCTURE, "NCHW"),   # of 4: 9 taps a vector FMA each beat two transposes
    ("depthwise", 28, 2, STRUCTURE, "NHWC"),   # of 2 over every other input column: gathers
    ("depthwise", 14, 1, STRUCTURE, "NHWC"),   # of 2
    ("depthwise", 7, 1, STRUCTURE, "NHWC"),    # scalars
    ("depthwise", 56, 1, AVX2, "NCHW"),        # of 8, a register
    ("depthwise", 28, 1, AVX2, "NHWC"),        # of 4, each tap a select and an FMA (no masks)
])
def test_an_nchw_call_is_computed_in_nhwc_where_the_nchw_nest_would_be_narrow(op, size, stride, target, layout):
    """`llvm.compute_layout`: a 3x3 NCHW depthwise keeps its own nest while its vectors along the
    width take fewer instructions than the NHWC nest and the transposes' moves; a separable is
    computed in NHWC. The module then transposes the input and the result around the NHWC stages."""
    channels, target = 64, tvm.target.Target(target)
    options = dict(data_format="NCHW", strides=[1, 1, stride, stride], padding="SAME")
    if op == "depthwise":
        wl = depthwise_workload((1, channels, size, size), "float32", (3, 3, channels, 1), "float32", **options)
    else:
        wl = separable_workload((1, channels, size, size), "float32", (3, 3, channels, 1), "float32",
                                (1, 1, channels, 32), "float32", **options)
    assert llvm.compute_layout(wl, target) == layout
    script = build.workload_module(wl, target).script()
    assert ('"input_nhwc"' in script and '"output_nchw"' in script) == (layout == "NHWC")


@pytest.mark.parametrize("size, dtype, epilogue", [(64, "float32", True), (96, "float16", False)])
def test_an_nchw_separable_larger_than_an_l2_stores_its_result_transposed(size, dtype, epilogue, rng):
    """Where an NCHW separable's result outgrows a core's L2, its GEMM tiles store straight into
    the NCHW output (`llvm._stores_transposed`), through an epilogue or float16's cast: no
    transpose stage remains, and the result is the reference's."""
    options = dict(bias=((80,), dtype), activation="relu") if epilogue else {}
    wl = separable_workload((1, 16, size, size), dtype, (3, 3, 16, 1), dtype, (1, 1, 16, 80), dtype, [1, 1, 1, 1],
                            "SAME", data_format="NCHW", **options)
    assert llvm._stores_transposed(wl, TARGET)
    sch = build.hand_schedule(wl, TARGET)
    assert 'T.sblock("output_nchw")' not in sch.mod.script()
    _check(sch, wl, rng)


@pytest.mark.parametrize("op, size, channels, multiplier, dtype, stride, padding, epilogue", [
    ("separable", 7, 40, 1, "float32", 1, "SAME", True),     # 49 pixels: output vectors along the channels
    ("separable", 8, 24, 2, "float16", 1, "SAME", False),    # 64 pixels: along the pixels; float16's cast
    ("separable", 14, 11, 1, "float64", 2, "VALID", False),  # channels no vector divides
    ("depthwise", 7, 96, 1, "float32", 1, "SAME", True),
    ("depthwise", 19, 20, 2, "float64", 1, "SAME", False),   # a multiplier; 361 pixels: vectors along them, a tail
    ("depthwise", 16, 48, 1, "float16", 2, "VALID", True),
])
def test_nchw_calls_computed_in_nhwc_match_the_reference(op, size, channels, multiplier, dtype, stride, padding,
                                                          epilogue, rng):
    """An NCHW call computed in NHWC (`llvm.compute_layout`) gives the reference's result: the
    input's and the result's transposes, vectorized along either axis, with an epilogue, a
    multiplier, float16 and float64, a stride, a batch of two (the output is poisoned)."""
    options = dict(data_format="NCHW", strides=[1, 1, stride, stride], padding=padding)
    mid = channels * multiplier
    if epilogue:
        outputs = 32 if op == "separable" else mid
        options.update(bias=((outputs,), dtype), activation="relu6")
    shapes = [(2, channels, size, size), dtype, (3, 3, channels, multiplier), dtype]
    if op == "depthwise":
        wl = depthwise_workload(*shapes, **options)
    else:
        wl = separable_workload(*shapes, (1, 1, mid, 32), dtype, **options)
    assert llvm.compute_layout(wl, TARGET) == "NHWC"
    _check(build.hand_schedule(wl, TARGET), wl, rng)
