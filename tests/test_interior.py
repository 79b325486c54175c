"""The padding's border and an overhanging tile's bounds split from the interior
(tvmsep/interior.py): read from the assembly, the interior tiles of padded kernels test no
padding and the whole tiles of an overhanging tiling keep their accumulators in registers,
and the split kernels compute TF's result. Kernels are split at the padding for CPUs without
masked FMAs, x86-64 below AVX-512 and aarch64, and at the bounds for every CPU: the tests
read NEON's, AVX2's and AVX-512's, and run AVX2's, which run on every x86-64 CPU these tests
run on, and this CPU's (the emulated aarch64 tests run NEON's)."""

import numpy as np
import pytest
import tvm
from hypothesis import HealthCheck, given, settings
from tvm.s_tir import Schedule
from tvm.s_tir import meta_schedule as ms
from tvm.s_tir.schedule import Trace

from tvmsep import build
from tvmsep.interior import split_interior
from tvmsep.networks import network
from tvmsep.reference import reference_for
from tvmsep.runtime import Kernel
from tvmsep.spec import depthwise_workload, separable_workload
from tvmsep.target import resolve_target

from conftest import assert_close
from helpers.draws import EXAMPLES, SEEDS, configs

# CPUs whose FMA takes no mask: each test a select of its own
AVX2 = {"kind": "llvm", "mcpu": "haswell", "num-cores": 2}
NEON = {"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mcpu": "cortex-a72", "num-cores": 4}  # a Raspberry Pi 4

# 3x3 at stride 1 and 2, a 5x5 whose width of two pixel blocks is all border, a width of 19,
# and a 7x7 image of one block.
LAYERS = ["v1_02", "v1_03", "effb0_14x672_k5", "xception_19x728", "v1_13"]


def _loops(wl, target):
    from helpers.assembly import hot_loops
    return hot_loops.loops(hot_loops.kernel_assembly(wl, target))


@pytest.mark.parametrize("name", LAYERS)
@pytest.mark.parametrize("target", [AVX2, NEON], ids=["avx2", "neon"])
def test_the_interior_tile_of_a_padded_depthwise_tests_no_padding(target, name):
    """A padded kernel for a CPU without masked FMAs has a loop for its interior tiles like the hot
    loop of the same layer's kernel on a pre-padded input: no vector select (no padding test), no
    more spills, and most of its FMAs. Not all: where the image is one or two pixel blocks wide,
    every block is a border column, split off with its taps over the padding dropped."""
    layers = {layer.name: layer for layer in network("public") + network("unseen")}
    wl = layers[name].workload("depthwise")
    assert wl.pre_padded() != wl
    unpadded = max(_loops(wl.pre_padded(), target), key=lambda loop: loop.fmas)
    padded = _loops(wl, target)
    assert any(loop.fmas >= 0.8 * unpadded.fmas and loop.selects == 0 and loop.spills <= unpadded.spills
               for loop in padded), (padded, unpadded)


AVX512 = {"kind": "llvm", "mcpu": "skylake-avx512", "num-cores": 2}

# (overhanging, not): a width of 19 in pixel blocks of 8, against 16 or 24 in whole blocks
OVERHANGS = [
    (depthwise_workload((2, 21, 21, 24), "float32", (3, 3, 24, 1), "float32", [1, 1, 1, 1], "VALID"),
     depthwise_workload((2, 21, 18, 24), "float32", (3, 3, 24, 1), "float32", [1, 1, 1, 1], "VALID")),
    (depthwise_workload((1, 19, 19, 728), "float32", (3, 3, 728, 1), "float32", [1, 1, 1, 1], "SAME"),
     depthwise_workload((1, 19, 24, 728), "float32", (3, 3, 728, 1), "float32", [1, 1, 1, 1], "SAME")),
]


@pytest.mark.parametrize("overhanging,whole", OVERHANGS, ids=["valid", "same"])
@pytest.mark.parametrize("target", [AVX512, AVX2, NEON], ids=["avx512", "avx2", "neon"])
def test_a_tile_that_overhangs_the_width_keeps_its_accumulators_in_registers(target, overhanging, whole):
    """Where the pixel blocks overhang the width, the hot loop of the kernel, for any CPU, is
    like that of a width in whole blocks: most of its FMAs, no more stores and about as many
    loads (addresses differ). The bounds test of the last block, left in every block,
    branches around each product and keeps the accumulators in memory, a load and a store
    per product (interior.py)."""
    hot = max(_loops(overhanging, target), key=lambda loop: loop.fmas)
    bound = max(_loops(whole, target), key=lambda loop: loop.fmas)
    assert hot.fmas >= 0.9 * bound.fmas and hot.stores <= bound.stores and hot.loads <= 1.1 * bound.loads, \
        (hot, bound)


SHAPES = [
    # rows unswitched by image (a batch of 3), columns peeled, a multiplier and a rate
    depthwise_workload((3, 20, 20, 24), "float32", (3, 3, 24, 2), "float32", [1, 1, 1, 1], "SAME", rate=[2, 2]),
    # explicit padding on one side of each axis only, stride 2
    depthwise_workload((1, 17, 23, 16), "float32", (3, 3, 16, 1), "float32", [1, 2, 2, 1],
                       [[0, 0], [0, 2], [1, 0], [0, 0]]),
    # more border pixel blocks than are peeled: a wide filter on a narrow image
    depthwise_workload((1, 9, 40, 8), "float32", (7, 7, 8, 1), "float32", [1, 1, 1, 1], "SAME"),
    # NCHW, the width the vector axis
    depthwise_workload((1, 8, 30, 30), "float32", (5, 5, 8, 1), "float32", [1, 1, 1, 1], "SAME",
                       data_format="NCHW"),
    # a separable whose depthwise is computed under the GEMM's rows, with an epilogue
    separable_workload((1, 14, 14, 32), "float32", (3, 3, 32, 1), "float32", (1, 1, 32, 48), "float32",
                       [1, 1, 1, 1], "SAME", bias=((48,), "float32"), activation="relu"),
    # pixel blocks that overhang the width, no padding (the bounds tests alone), then with the
    # padding, in a separable whose GEMM stores part of its padded channels (40 of 48)
    OVERHANGS[0][0],
    separable_workload((1, 19, 19, 16), "float32", (5, 5, 16, 1), "float32", (1, 1, 16, 40), "float32",
                       [1, 1, 1, 1], "SAME"),
]


@pytest.mark.parametrize("wl", SHAPES, ids=[wl.describe() for wl in SHAPES])
@pytest.mark.parametrize("target", [AVX2, "llvm"], ids=["avx2", "this-cpu"])
def test_split_kernels_match_the_reference(wl, target, rng):
    """Kernels whose loops are split compute the float64 reference, the output poisoned: AVX2
    kernels, split at the padding and at the bounds of tiles that overhang, which run on every
    x86-64 CPU these tests run on, and this CPU's (with AVX-512: split at the bounds alone).
    A padded layer gets an Inf filter tap at a corner, which the split's borders must still
    leave out over the padding."""
    kernel = Kernel(wl, build.compile_module(wl, resolve_target(target)).mod["main"], "test")
    arrays = [rng.standard_normal(shape).astype(np.float32) for shape in wl.arg_shapes]
    padded = wl.pre_padded() != wl
    if padded:
        arrays[1][0, 0, 0, 0] = np.inf
    out = np.full(wl.output_shape, np.nan, np.float32)
    kernel.run(arrays, out)
    expected = reference_for(wl, arrays)
    np.testing.assert_array_equal(np.isfinite(out), np.isfinite(expected))
    finite = np.isfinite(expected)
    assert finite.any() and finite.all() != padded
    assert_close(out[finite], expected[finite], "float32")


def _workload(op, cfg):
    """The workload of one of `configs()`'s draws, as `op`."""
    args = (cfg["strides"], cfg["padding"])
    kwargs = dict(data_format=cfg["data_format"], activation=cfg["activation"],
                  bias=((cfg["f_shape"][2] * cfg["f_shape"][3] if op == "depthwise" else cfg["p_shape"][3],),
                        cfg["dtype"]) if cfg["bias"] else None)
    if op == "depthwise":
        return depthwise_workload(cfg["x_shape"], cfg["dtype"], cfg["f_shape"], cfg["dtype"], *args,
                                  rate=cfg["rate"], **kwargs)
    return separable_workload(cfg["x_shape"], cfg["dtype"], cfg["f_shape"], cfg["dtype"], cfg["p_shape"],
                              cfg["dtype"], *args, dilations=cfg["rate"], **kwargs)


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cfg=configs(), seed=SEEDS)
@pytest.mark.parametrize("op", ["depthwise", "separable"])
def test_split_kernels_of_random_configurations_match_the_reference(op, cfg, seed):
    """The property tests of test_ops.py, for split kernels: random shapes, paddings, strides,
    rates, multipliers, layouts, dtypes and epilogues, the output poisoned."""
    wl = _workload(op, cfg)
    rng = np.random.default_rng(seed)
    arrays = [rng.standard_normal(shape).astype(cfg["dtype"]) for shape in wl.arg_shapes]
    kernel = Kernel(wl, build.compile_module(wl, tvm.target.Target(AVX2)).mod["main"], "test")
    out = np.full(wl.output_shape, np.nan, cfg["dtype"])
    kernel.run(arrays, out)
    assert_close(out, reference_for(wl, arrays), cfg["dtype"])


def test_kernels_of_the_generic_tuning_space_are_split_and_match_the_reference(rng):
    """Schedules a tuning job draws from meta-schedule's generic space (its tiles, unrolling
    and parallel loops, not tvmsep's), split for AVX2, build and compute the reference. Among
    them are loops whose every iteration is interior, which once became a sequence of one
    loop that TVM refuses. The one refusal left is TVM's own buffer-region analysis
    overflowing on some split modules; compile_scheduled then builds the kernel unsplit."""
    wl = depthwise_workload((1, 8, 8, 16), "float32", (3, 3, 16, 1), "float32", [1, 1, 1, 1], "SAME")
    target = tvm.target.Target(AVX2)
    mod = build.workload_module(wl, target)
    spaces = ms.TuneContext(mod=mod, target=target, space_generator=ms.space_generator.PostOrderApply(),
                            task_name="generic").generate_design_space()
    arrays = [rng.standard_normal(shape).astype(np.float32) for shape in wl.arg_shapes]
    expected = reference_for(wl, arrays)
    split, refused = 0, 0
    for space in spaces:
        for seed in range(1, 7):
            sch = Schedule(mod, seed=seed)
            Trace(space.trace.insts, {}).apply_to_schedule(sch, remove_postproc=True)
            if not all(postproc.apply(sch) for postproc in ms.postproc.Postproc.create("llvm")):
                continue  # a draw the tuning job would drop too
            try:
                with tvm.transform.PassContext(opt_level=3, config=build.PASS_CONFIG):
                    tvm.compile(split_interior(sch.mod), target=target)
                split += 1
            except Exception as e:
                assert "exceeds range of int32" in str(e), str(e)[-2000:]
                refused += 1
            kernel = Kernel(wl, build.compile_scheduled(sch.mod, target).mod["main"], "test")
            out = np.full(wl.output_shape, np.nan, np.float32)
            kernel.run(arrays, out)
            assert_close(out, expected, "float32")
    assert split >= 3 * refused and split >= 6, (split, refused)
