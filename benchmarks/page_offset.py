"""What a result's place in a 4 KiB page, against its input's, costs a kernel, on this machine.

    python benchmarks/page_offset.py [--layers v1_07,v1_13] [--op depthwise] [--output PATH]

A CPU checks each load against the stores still in flight by the low 12 bits of their
addresses, and holds a load that matches one ("4K aliasing"). numpy puts a new array
anywhere in a page, so where a kernel's result lies against its input, in the low 12 bits,
is left to chance; tvmsep places its own results two lines before the input
(tvmsep/runtime.py). Each layer's hand-written kernel is timed here on the same input, on a
page, with its result at each distance from the input's place (result minus input, in bytes,
modulo a page), the distances taking turns; medians in microseconds.
"""

from __future__ import annotations

import sys

import numpy as np

from tvmsep import runtime
from tvmsep.target import host_target

from alignment import array_at, time_arrangements
import report

# Result minus input, modulo a page: the lines right after the input's place, and after a KiB
# or two past it, then the place tvmsep chooses (runtime.RESULT_BEFORE_INPUT_BYTES before it).
DISTANCES = (0, 64, 128, 256, 1024, 2048, 512, 1536, -64, -runtime.RESULT_BEFORE_INPUT_BYTES)
CHOSEN = DISTANCES[-1]


def _at_distances(values: list[np.ndarray], out_shape: tuple[int, ...]) -> dict:
    """One input on a page, the filters on lines, and a result at each of DISTANCES from the input."""
    inputs = [array_at(values[0], 0, runtime.PAGE_BYTES)] + [array_at(v, 0) for v in values[1:]]
    return {d: (inputs, array_at(np.full(out_shape, np.nan, np.float32), d % runtime.PAGE_BYTES, runtime.PAGE_BYTES))
            for d in DISTANCES}


def main() -> int:
    parser = report.arguments(__doc__, "v1_03,v1_05,v1_06,v1_07,v1_12,v1_13,v2_05,v2_09,v2_11,"
                                       "xception_19x728,effb0_14x672_k5,convnext_7x768_k7")
    parser.add_argument("--op", choices=("depthwise", "separable"), default="depthwise")
    args = parser.parse_args()
    rows = time_arrangements(args.layers.split(","), args.op, _at_distances, 200)
    mcpu = host_target().attrs["mcpu"]
    lines = [*report.header(f"A result's place in a page against its input's, {args.op}, fp32 ({mcpu})"),
             "- median us per call of the hand-written kernel, input and result on cache lines, the result's "
             "start minus the input's at each distance modulo 4 KiB (the column, in bytes); the distances take "
             "turns in blocks of 25 calls, in a random order each round, the first 5 of a block not counted. "
             f"tvmsep places its own results at {CHOSEN}", "",
             "| layer | channels | " + " | ".join(f"{d:+d}" for d in DISTANCES) + f" | worst / {CHOSEN} |",
             "|---|---|" + "---|" * (len(DISTANCES) + 1)]
    for name, wl, us in rows:
        times = [us[d] for d in DISTANCES]
        lines.append(f"| {name} | {wl.in_channels} | " + " | ".join(f"{t:.1f}" for t in times)
                     + f" | {max(times) / times[-1]:.2f}x |")
    return report.write(lines, "page-offset", mcpu, args.output)


if __name__ == "__main__":
    sys.exit(main())
