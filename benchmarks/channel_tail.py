"""Depthwise tiles over channels that no wide vector divides: a masked tail against narrow vectors.

    python benchmarks/channel_tail.py [--layers c11_56,c22_56] [--output PATH]

An NHWC depthwise tile's vector runs along the channels. Where only narrow vectors divide
them (11 channels: none but scalars; 22: pairs; 100: fours), the hand-written schedule
takes vectors of 8 lanes with the last one of each pixel a masked tail, if that saves
enough narrow vectors a pixel (schedules/llvm.py, `_depthwise_channel_knob`). This times,
on the same values, taking turns, for each layer and both ops: tvmsep's hand-written kernel
(`tail`, as it is built now), the same schedule with the dividing vectors (`dividing`, the
rule switched off), and LiteRT's invoke in this process (its XNNPACK delegate, as
benchmarks/peers.py builds it), each checked against the float64 reference first.
"""

from __future__ import annotations

import contextlib
import sys

import numpy as np

from tvmsep.networks import Layer
from tvmsep.reference import reference_for, scaled_error
from tvmsep.schedules import llvm
from tvmsep.target import host_target

from alignment import array_at
from limits import median_ms_in_turns
import peers
import report
from variants import variant_calls

LAYERS = {layer.name: layer for layer in [
    Layer("c11_56", 1, 56, 11, 1, 22), Layer("c11_112_s2", 1, 112, 11, 2, 22), Layer("c22_56", 1, 56, 22, 1, 44),
    Layer("c22_112_s2", 1, 112, 22, 2, 44), Layer("c13_28_k5", 1, 28, 13, 1, 24, kernel=5),
    Layer("c26_28", 1, 28, 26, 1, 32), Layer("c60_28", 1, 28, 60, 1, 24), Layer("c100_28", 1, 28, 100, 1, 40)]}
KINDS = ("tail", "dividing", "litert_invoke")


@contextlib.contextmanager
def _dividing_vectors():
    """Kernels built inside take the widest dividing vectors, as before the tail rule."""
    cost = llvm.TAIL_COST
    llvm.TAIL_COST = sys.maxsize
    try:
        yield
    finally:
        llvm.TAIL_COST = cost


def time_layer(layer: Layer, op: str, rng: np.random.Generator) -> dict[str, float]:
    """Median microseconds of each of KINDS for `layer`'s `op`, on the same values, taking turns."""
    wl = layer.workload(op)
    arrays = [array_at(rng.standard_normal(shape, dtype=np.float32), 0) for shape in wl.arg_shapes]
    expected = reference_for(wl, arrays)
    calls, _keep = variant_calls(wl, arrays, expected, {"tail": contextlib.nullcontext(),
                                                        "dividing": _dividing_vectors()}, f"{layer.name} {op}")
    (set_invoke_get, _), (invoke, output) = peers._litert(layer, wl, *arrays, *([None] if op == "depthwise" else []),
                                                           None, 2)
    set_invoke_get()  # the input stays in the interpreter for `invoke`
    if not scaled_error(np.asarray(output(), np.float64), expected) <= 1e-4:
        raise SystemExit(f"{layer.name} {op}: LiteRT is off the reference")
    calls["litert_invoke"] = invoke
    return {kind: ms * 1e3 for kind, ms in median_ms_in_turns(calls, 400).items()}


def main() -> int:
    parser = report.arguments(__doc__, ",".join(LAYERS))
    args = parser.parse_args()
    peers._configure(["tvmsep", "litert"], 2)
    rng = np.random.default_rng(0)
    mcpu = host_target().attrs["mcpu"]
    lines = [*report.header(f"Depthwise tiles over channels no wide vector divides, fp32 ({mcpu})"),
             "- median us per call, 2 threads, arrays on cache lines, the result placed as tvmsep places its own: "
             "tvmsep's hand-written kernel as built now (`tail`: vectors of 8 with a masked tail where the rule "
             "takes them), the same with the widest vectors that divide the channels (`dividing`), LiteRT's "
             "invoke in this process; the three take turns in blocks of 25 calls, in a random order each round, "
             "the first 5 of a block not counted", "",
             "| layer | op | shape | " + " | ".join(KINDS) + " | dividing / tail | LiteRT / tail |",
             "|---|---|---|" + "---|" * (len(KINDS) + 2)]
    for op in ("depthwise", "separable"):
        for name in args.layers.split(","):
            layer = LAYERS[name]
            us = time_layer(layer, op, rng)
            print(name, op, " ".join(f"{kind} {us[kind]:.1f}" for kind in KINDS), flush=True)
            lines.append(f"| {name} | {op} | {layer.workload(op).describe()} | "
                         + " | ".join(f"{us[kind]:.1f}" for kind in KINDS)
                         + f" | {us['dividing'] / us['tail']:.2f}x | {us['litert_invoke'] / us['tail']:.2f}x |")
    return report.write(lines, "channel-tail", mcpu, args.output)


if __name__ == "__main__":
    sys.exit(main())
