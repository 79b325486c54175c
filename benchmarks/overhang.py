"""What the bounds test of a pixel block that overhangs the width costs a depthwise kernel.

    python benchmarks/overhang.py [--target JSON] [--output PATH]

Where the output width is not a multiple of the register block (19 in blocks of 8), TVM
guards the last block's overhang with a test in every block, which tvmsep splits out of
the whole blocks on every CPU (tvmsep/interior.py). Each depthwise layer here, whose
blocks overhang, is timed two ways, side by side, with the hand-written schedule:

- `tested`: compiled by TVM as it is, every block testing its bounds (and, where the
  target splits the padding's tests, those too: nothing split);
- `split`: as tvmsep compiles it (build.compile_scheduled).

The layers are the lists' layers whose blocks overhang and widths of real networks that
the lists lack: Xception and Inception at 299x299 (74, 37 and 17 pixels wide),
EfficientNet-B3 at 300x300 (38 and 19) and B2 at 260x260 (33), DeepLab at 513x513 (129),
and a VALID layer on an input padded beforehand (27). Medians in microseconds; inputs on a page, the
result placed against the input as tvmsep places its own (tvmsep/runtime.py).
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
from pathlib import Path

import numpy as np
import tvm

from tvmsep import build, runtime
from tvmsep.networks import network
from tvmsep.spec import Workload, depthwise_workload
from tvmsep.target import host_target, resolve_target

from alignment import array_at, placed_result
from limits import median_ms_in_turns
import report

KINDS = ("tested", "split")

# (name, input shape, filter size, stride, padding), each with pixel blocks that overhang
OTHER_NETWORKS = [
    ("xception_147x128_s2", (1, 147, 147, 128), 3, 2, "SAME"),  # 74 wide
    ("inception_37x256", (1, 37, 37, 256), 3, 1, "SAME"),
    ("inception_17x768_k5", (1, 17, 17, 768), 5, 1, "SAME"),
    ("effb3_38x192_k5", (1, 38, 38, 192), 5, 1, "SAME"),
    ("effb3_19x816_k5", (1, 19, 19, 816), 5, 1, "SAME"),
    ("effb2_33x288_k5", (1, 33, 33, 288), 5, 1, "SAME"),
    ("deeplab_129x256", (1, 129, 129, 256), 3, 1, "SAME"),
    ("padded_29x96_valid", (1, 29, 29, 96), 3, 1, "VALID"),  # 27 wide
]


def layers() -> list[tuple[str, Workload]]:
    """The lists' depthwise layers whose pixel blocks overhang, then OTHER_NETWORKS'."""
    listed = [(layer.name, layer.workload("depthwise")) for layer in network("public") + network("unseen")]
    other = [(name, depthwise_workload(shape, "float32", (k, k, shape[3], 1), "float32", [1, s, s, 1], padding))
             for name, shape, k, s, padding in OTHER_NETWORKS]
    return [(name, wl) for name, wl in listed + other if _overhangs(wl)]


def _overhangs(wl: Workload) -> bool:
    return "T.where(" in build.scheduled_module(wl, host_target()).script()


def _compiled(wl: Workload, target, split: bool):
    if split:
        return build.compile_scheduled(build.scheduled_module(wl, target), target)
    with tvm.transform.PassContext(opt_level=3, config=build.PASS_CONFIG):
        return tvm.compile(build.scheduled_module(wl, target), target=target)


def measure(named: list[tuple[str, Workload]], target, repeats: int = 200) -> list[tuple[str, Workload, list[float]]]:
    rng = np.random.default_rng(0)
    rows = []
    for name, wl in named:
        inputs = [array_at(rng.standard_normal(shape, dtype=np.float32), 0, runtime.PAGE_BYTES)
                  for shape in (wl.input_shape, wl.filter_shape)]
        out = placed_result(wl.output_shape, inputs[0])
        calls = {kind: functools.partial(runtime.Kernel(wl, _compiled(wl, target, kind == "split")["main"], kind).run,
                                         inputs, out) for kind in KINDS}
        ms = median_ms_in_turns(calls, repeats)
        rows.append((name, wl, [ms[kind] * 1e3 for kind in KINDS]))
        print(name, " ".join(f"{t:.1f}" for t in rows[-1][2]), flush=True)
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--target", default=None, help="a TVM target as JSON (default: this CPU)")
    parser.add_argument("--output", type=Path, default=None)
    args = parser.parse_args()
    target = resolve_target(json.loads(args.target)) if args.target else host_target()
    rows = measure(layers(), target)
    mcpu = target.attrs["mcpu"]
    lines = [*report.header(f"Bounds tests of overhanging pixel blocks in depthwise kernels, fp32, compiled for "
                            f"{mcpu}, run on {host_target().attrs['mcpu']}"),
             "- median us per call of the hand-written kernel: `tested` as TVM compiles it, every pixel block "
             "testing its bounds, `split` as tvmsep compiles it; the two take turns in blocks of 25 calls, in a "
             "random order each round, the first 5 of a block not counted; inputs on a page, the result "
             "placed as tvmsep places its own", "",
             "| layer | shape | " + " | ".join(KINDS) + " | tested / split |", "|---|---|" + "---|" * (len(KINDS) + 1)]
    for name, wl, (tested, split) in rows:
        lines.append(f"| {name} | {wl.describe()} | {tested:.1f} | {split:.1f} | {tested / split:.2f}x |")
    geomean = np.exp(np.mean([np.log(t / s) for _, _, (t, s) in rows]))
    lines.append(f"| geomean | | | | {geomean:.2f}x |")
    return report.write(lines, "overhang", mcpu, args.output)


if __name__ == "__main__":
    sys.exit(main())
