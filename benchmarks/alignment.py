"""What an input that does not start on a cache line costs a kernel, on this machine.

    python benchmarks/alignment.py [--layers v1_06,v1_12,v1_13] [--op depthwise] [--output PATH]

numpy aligns its arrays to 16 bytes, not to a 64-byte cache line, so an NHWC input
whose channels are a multiple of the vector width starts each vector either on a line
or 16, 32 or 48 bytes past one, the same for every vector of the array. Past one, every
vector load the kernel makes straddles two lines when the vectors are a line wide
(AVX-512), and half of them do at 256 bits. Each layer's hand-written kernel is timed
here on the same values at each of the four starts, the result and the filter on a
line, taking turns; medians in microseconds.
"""

from __future__ import annotations

import functools
import sys
from typing import Callable

import numpy as np

from tvmsep import build, runtime
from tvmsep.networks import network
from tvmsep.spec import Workload
from tvmsep.target import host_target

from limits import median_ms_in_turns
import report

LINE_BYTES = 64
OFFSETS = (0, 16, 32, 48)  # where numpy may start an array, in bytes past a line


def array_at(values: np.ndarray, offset: int, boundary: int = LINE_BYTES) -> np.ndarray:
    """A copy of `values` whose first element lies `offset` bytes past a cache line (or
    another `boundary`: a page)."""
    raw = np.empty(values.nbytes + boundary + offset, np.uint8)
    start = -raw.ctypes.data % boundary + offset
    placed = raw[start:start + values.nbytes].view(values.dtype).reshape(values.shape)
    placed[...] = values
    return placed


def placed_result(shape: tuple[int, ...], first_input: np.ndarray) -> np.ndarray:
    """A float32 result full of NaN, placed against `first_input` as tvmsep places its own results
    (`runtime.placed_empty`), so that a timing is not a draw of where the two fall in a page."""
    result = runtime.placed_empty(shape, np.float32, first_input)
    result[...] = np.nan
    return result


def time_arrangements(layer_names: list[str], op: str, arrange: Callable[[list[np.ndarray], tuple], dict],
                      repeats: int) -> list[tuple[str, Workload, dict]]:
    """Per layer, (its name, its workload, the median microseconds of its hand-written kernel in
    each arrangement of the same random values), the arrangements taking turns. `arrange` takes
    the values (input, then filters) and the result's shape, and gives for each arrangement's key
    the arrays to call the kernel with: (inputs, result)."""
    layers = {layer.name: layer for layer in network("public") + network("unseen")}
    rng = np.random.default_rng(0)
    rows = []
    for name in layer_names:
        wl = layers[name].workload(op)
        kernel = runtime.Kernel(wl, build.compile_module(wl, host_target())["main"], "hand-written")
        shapes = [wl.input_shape, wl.filter_shape] + ([wl.pointwise_shape] if op == "separable" else [])
        values = [rng.standard_normal(shape, dtype=np.float32) for shape in shapes]
        arrays = arrange(values, wl.output_shape)
        ms = median_ms_in_turns({key: functools.partial(kernel.run, *a) for key, a in arrays.items()}, repeats)
        rows.append((name, wl, {key: ms[key] * 1e3 for key in arrays}))
        print(name, " ".join(f"{t:.1f}" for t in rows[-1][2].values()), flush=True)
    return rows


def _off_line(values: list[np.ndarray], out_shape: tuple[int, ...]) -> dict:
    """The input at each of OFFSETS past a line; the filters on lines, each result placed against its input."""
    filters = [array_at(v, 0) for v in values[1:]]
    arrays = {}
    for offset in OFFSETS:
        x = array_at(values[0], offset)
        arrays[offset] = ([x, *filters], placed_result(out_shape, x))
    return arrays


def main() -> int:
    parser = report.arguments(__doc__, "v1_02,v1_04,v1_06,v1_07,v1_12,v1_13,v2_02,v2_04,v2_06,v2_10,"
                                       "xception_19x728,effb0_14x672_k5")
    parser.add_argument("--op", choices=("depthwise", "separable"), default="depthwise")
    args = parser.parse_args()
    rows = time_arrangements(args.layers.split(","), args.op, _off_line, 400)
    mcpu = host_target().attrs["mcpu"]
    lines = [*report.header(f"Input start against a cache line, {args.op}, fp32 ({mcpu})"),
             "- median us per call of the hand-written kernel (result passed in, on a line, placed in its page "
             "against the input as tvmsep places its results), the input starting "
             "0, 16, 32 or 48 bytes past a cache line; the four take turns in blocks of 25 calls, in a random "
             "order each round, the first 5 of a block not counted", "",
             "| layer | " + " | ".join(f"+{o}" for o in OFFSETS) + " | worst / on a line |",
             "|---|" + "---|" * (len(OFFSETS) + 1)]
    for name, _, us in rows:
        times = [us[o] for o in OFFSETS]
        lines.append(f"| {name} | " + " | ".join(f"{t:.1f}" for t in times) + f" | {max(times) / times[0]:.2f}x |")
    return report.write(lines, "alignment", mcpu, args.output)


if __name__ == "__main__":
    sys.exit(main())
