"""What reading the pointwise weights as the call gives them costs a separable's GEMM, on this machine.

    python benchmarks/weight_copy.py [--layers v1_12,v1_13,convnext_7x768_k7] [--output PATH]

`tf.nn.separable_conv2d` takes its pointwise weights, [C*M, O], with every call, so
tvmsep's GEMM reads them in that layout on every call. Where their rows are a multiple
of 512 bytes apart it first copies each [C*M, NR] panel into a contiguous buffer, which
the panel's tiles then read (schedules/llvm.py, `_packs_panels`). A library that builds
a model from constant weights (LiteRT's XNNPACK, OpenVINO) packs them once, when the
model is built, and its GEMM streams them in order (so does `tvmsep.SeparableConv2D`, which
holds its weights: `Workload.pointwise_panel`). For layers whose hand-written GEMM
is the panel-outer nest that copies its panels (outputs of 7 rows), this times, on the
same values, taking turns:

- `separable`: tvmsep's hand-written kernel, depthwise and GEMM;
- `copied`: the GEMM alone ([OH*OW, C*M] x [C*M, O]) in that nest, with tvmsep's tile
  sizes for this CPU, each panel copied under the panel loop as tvmsep's kernel does;
- `packed`: the same nest reading weights packed ahead of the call into [O/NR, C*M, NR].

`copied` minus `packed` is what the copy costs; `separable` against `copied` checks that
the GEMM here is tvmsep's.
"""

from __future__ import annotations

import functools
import sys

import numpy as np
from tvm import s_tir, te

from tvmsep import build, runtime
from tvmsep.compute import accumulation_dtype
from tvmsep.networks import network
from tvmsep.schedules import llvm
from tvmsep.spec import Workload
from tvmsep.target import host_target

from alignment import array_at, placed_result
from limits import median_ms_in_turns
import report

KINDS = ("separable", "copied", "packed")


def gemm_schedule(pixels: int, channels: int, outputs: int, rows: int, panel: int, packed: bool) -> s_tir.Schedule:
    """tvmsep's panel-outer GEMM nest (schedules/llvm.py): panels of `panel` output channels in
    parallel, tiles of `rows` pixels inside, an accumulator of rows x panel in registers. Its
    weights are [channels, outputs] copied panel by panel under the panel loop, or, `packed`,
    [outputs / panel, channels, panel] read as they are."""
    a = te.placeholder((pixels, channels), "float32", name="a")
    w = te.placeholder((outputs // panel, channels, panel) if packed else (channels, outputs), "float32", name="w")
    c = te.reduce_axis((0, channels), "c")
    weight = (lambda k, o: w[o // panel, k, o % panel]) if packed else (lambda k, o: w[k, o])
    out = te.compute((pixels, outputs), lambda p, o: te.sum(a[p, c] * weight(c, o), axis=c), name="out")
    sch = s_tir.Schedule(te.create_prim_func([a, w, out]))
    block = sch.get_sblock("out")
    accumulator = sch.cache_write(block, 0, "local")
    p, o, c = sch.get_loops(block)
    tile, row = sch.split(p, [None, rows])
    panel_loop, lane = sch.split(o, [None, panel])
    sch.reorder(panel_loop, tile, c, row, lane)
    sch.parallel(panel_loop)
    sch.reverse_compute_at(accumulator, tile)
    sch.vectorize(lane)
    sch.unroll(row)
    init = sch.decompose_reduction(block, c)
    for stage in (init, accumulator):
        *_, stage_row, stage_lane = sch.get_loops(stage)
        sch.vectorize(stage_lane)
        sch.unroll(stage_row)
    if not packed:
        read = [region.source.name for region in sch.get(block).reads].index("w")
        copy = sch.cache_read(block, read, "global")
        sch.compute_at(copy, panel_loop)
        sch.vectorize(sch.get_loops(copy)[-1])
    return sch


def _tile_sizes(wl: Workload) -> tuple[int, int]:
    """(rows per tile, channels per panel) of `wl`'s hand-written GEMM on this CPU; raises where that
    GEMM is not the panel-outer nest that copies its panels, which `gemm_schedule` reproduces."""
    target = host_target()
    lanes = llvm.vector_lanes(target, accumulation_dtype(wl.dtype))
    rows, width, outputs = llvm._gemm_domain(wl, target, lanes)
    panel_outer = llvm._pointwise_chunks(wl, target, width // rows)[0] == 1 and not llvm._chunk_rows(wl, target, lanes)
    copies = "pointwise_filter_global" in build.hand_schedule(wl, target).mod.script()  # the panels' cache_read
    if not (panel_outer and copies and (width, outputs) == (wl.out_width, wl.out_channels)):
        raise SystemExit(f"{wl.describe()}: its hand-written GEMM is not the panel-outer nest that copies its panels")
    return rows, llvm._vector(outputs, llvm.GEMM_VECTORS * lanes, lanes)


def time_layer(wl: Workload, rng: np.random.Generator) -> dict[str, float]:
    """Median microseconds of each of KINDS for `wl` (batch 1), on the same values, taking turns."""
    rows, panel = _tile_sizes(wl)
    pixels, channels, outputs = wl.out_height * wl.out_width, wl.mid_channels, wl.out_channels
    x, f, weights = (array_at(rng.standard_normal(shape, dtype=np.float32), 0)
                     for shape in (wl.input_shape, wl.filter_shape, wl.pointwise_shape))
    mid = array_at(rng.standard_normal((pixels, channels), dtype=np.float32), 0)
    plain = weights.reshape(channels, outputs)
    packed = array_at(np.ascontiguousarray(plain.reshape(channels, outputs // panel, panel).transpose(1, 0, 2)), 0)
    target = host_target()
    kernel = runtime.Kernel(wl, build.compile_module(wl, target)["main"], "hand-written")
    calls, keep = {"separable": functools.partial(kernel.run, [x, f, weights], placed_result(wl.output_shape, x))}, []
    expected = mid.astype(np.float64) @ plain
    for kind, w in (("copied", plain), ("packed", packed)):
        executable = build.compile_scheduled(gemm_schedule(pixels, channels, outputs, rows, panel,
                                                           kind == "packed").mod, target)
        keep.append(executable)  # the function needs its module alive
        out = array_at(np.full((pixels, outputs), np.nan, np.float32), 0)
        executable["main"](mid, w, out)
        np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-3 * np.sqrt(channels))
        calls[kind] = functools.partial(executable["main"], mid, w, out)
    return {kind: ms * 1e3 for kind, ms in median_ms_in_turns(calls, 400).items()}


def main() -> int:
    parser = report.arguments(__doc__, "v1_12,v1_13,convnext_7x768_k7")
    args = parser.parse_args()
    layers = {layer.name: layer for layer in network("public") + network("unseen")}
    rng = np.random.default_rng(0)
    mcpu = host_target().attrs["mcpu"]
    lines = [*report.header(f"The pointwise weights as the call gives them against packed ahead, separable, "
                            f"fp32 ({mcpu})"),
             "- median us per call: tvmsep's hand-written separable kernel; its GEMM alone with the weight panels "
             "copied on every call as tvmsep's are; the same GEMM on weights packed before the call. Arrays on "
             "cache lines; the three take turns in blocks of 25 calls, in a random order each round, the first 5 "
             "of a block not counted", "",
             "| layer | GEMM | weights | separable | copied | packed | copied - packed | copied / packed |",
             "|---|---|---|---|---|---|---|---|"]
    for name in args.layers.split(","):
        wl = layers[name].workload("separable")
        us = time_layer(wl, rng)
        print(name, " ".join(f"{kind} {us[kind]:.1f}" for kind in KINDS), flush=True)
        gemm = f"{wl.out_height * wl.out_width}x{wl.mid_channels}x{wl.out_channels}"
        lines.append(f"| {name} | {gemm} | {wl.mid_channels * wl.out_channels * 4 / 2**20:.1f} MiB | "
                     + " | ".join(f"{us[kind]:.1f}" for kind in KINDS)
                     + f" | {us['copied'] - us['packed']:.1f} | {us['copied'] / us['packed']:.2f}x |")
    return report.write(lines, "weight-copy", mcpu, args.output)


if __name__ == "__main__":
    sys.exit(main())
