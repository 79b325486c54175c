"""What the padding's tests cost a depthwise kernel, and what splitting them out of the interior saves.

    python benchmarks/padding.py [--target JSON] [--layers v1_02,v1_03] [--output PATH]

A padded layer tests, per product, whether its tap lies on the input (tvmsep/interior.py).
Each padded depthwise layer of the public and unseen lists is timed here three ways, side
by side, with the hand-written schedule for the target:

- `unsplit`: every product tested for the padding, as tvmsep compiles kernels for CPUs
  with AVX-512 (build.compile_scheduled; the bounds tests of a tile that overhangs are
  split out of both kinds, as on every CPU);
- `split`: the interior's loops without the padding's tests, as tvmsep compiles kernels
  for x86-64 CPUs below AVX-512 and aarch64;
- `pre-padded`: the same layer with VALID padding on an input padded beforehand: the same
  output and the same work with no test at all, the bound for `split`.

The target must run on this machine (an AVX2 target runs on any AVX-512 x86-64 CPU). Medians
in microseconds; inputs on a page, the result placed against the input as tvmsep places its
own (two lines before it in a page: tvmsep/runtime.py).
"""

from __future__ import annotations

import functools
import json
import sys

import numpy as np
import tvm

from tvmsep import build, runtime
from tvmsep.backends import backend_for
from tvmsep.interior import split_interior
from tvmsep.networks import network
from tvmsep.target import host_target, resolve_target

from alignment import array_at, placed_result
from limits import median_ms_in_turns
import report

KINDS = ("unsplit", "split", "pre-padded")


def _compiled(wl, target, split: bool):
    """`wl`'s hand-written kernel, compiled as build.compile_scheduled does, split at the padding or not."""
    with tvm.transform.PassContext(opt_level=3, config=build.PASS_CONFIG):
        return tvm.compile(split_interior(build.scheduled_module(wl, target), padding=split), target=target)


def measure(layer_names: list[str], target, repeats: int = 200) -> list[tuple[str, list[float]]]:
    layers = {layer.name: layer for layer in network("public") + network("unseen")}
    rng = np.random.default_rng(0)
    rows = []
    for name in layer_names:
        wl = layers[name].workload("depthwise")
        calls, arrays = {}, {}
        for kind, kernel_wl, split in (("unsplit", wl, False), ("split", wl, True),
                                       ("pre-padded", wl.pre_padded(), False)):
            kernel = runtime.Kernel(kernel_wl, _compiled(kernel_wl, target, split)["main"], kind)
            # The two kernels of one workload read and write the same arrays, the result placed
            # against the input as tvmsep places its own (alignment.placed_result).
            if kernel_wl not in arrays:
                inputs = [array_at(rng.standard_normal(shape, dtype=np.float32), 0, runtime.PAGE_BYTES)
                          for shape in (kernel_wl.input_shape, kernel_wl.filter_shape)]
                arrays[kernel_wl] = (inputs, placed_result(kernel_wl.output_shape, inputs[0]))
            calls[kind] = functools.partial(kernel.run, *arrays[kernel_wl])
        ms = median_ms_in_turns(calls, repeats)
        rows.append((name, [ms[kind] * 1e3 for kind in KINDS]))
        print(name, " ".join(f"{t:.1f}" for t in rows[-1][1]), flush=True)
    return rows


def _padded_layers() -> list[str]:
    return [layer.name for layer in network("public") + network("unseen")
            if layer.workload("depthwise").pre_padded() != layer.workload("depthwise")]


def main() -> int:
    parser = report.arguments(__doc__, None, "comma-separated layer names (default: every padded one)")
    parser.add_argument("--target", default=None, help="a TVM target as JSON (default: this CPU)")
    args = parser.parse_args()
    target = resolve_target(json.loads(args.target)) if args.target else host_target()
    rows = measure(args.layers.split(",") if args.layers else _padded_layers(), target)
    mcpu = target.attrs["mcpu"]
    lines = [*report.header(f"Padding tests in depthwise kernels, fp32, compiled for {mcpu}, "
                            f"run on {host_target().attrs['mcpu']}"),
             f"- tvmsep compiles kernels for this target "
             f"{'' if backend_for(target).splits_padding(target) else 'un'}split",
             "- median us per call of the hand-written kernel: `unsplit` tests every product for the padding, "
             "`split` has no padding tests in the interior (both have the bounds tests of a tile that overhangs "
             "split out), `pre-padded` is VALID on an input padded beforehand; the three take turns "
             "in blocks of 25 calls, in a random order each round, the first 5 of a block not counted; inputs "
             "on a page, the result placed as tvmsep places its own", "",
             "| layer | " + " | ".join(KINDS) + " | unsplit / split | split / pre-padded |",
             "|---|" + "---|" * (len(KINDS) + 2)]
    for name, (unsplit, split, padded) in rows:
        lines.append(f"| {name} | {unsplit:.1f} | {split:.1f} | {padded:.1f} | {unsplit / split:.2f}x | "
                     f"{split / padded:.2f}x |")
    ratios = np.array([[u / s, s / p] for _, (u, s, p) in rows])
    geomean = np.exp(np.log(ratios).mean(axis=0))
    lines.append(f"| geomean | | | | {geomean[0]:.2f}x | {geomean[1]:.2f}x |")
    return report.write(lines, "padding", mcpu, args.output)


if __name__ == "__main__":
    sys.exit(main())
