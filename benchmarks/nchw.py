"""tvmsep's NCHW call against its NHWC call and PyTorch's NCHW, on this machine.

    python benchmarks/nchw.py [--layers v1_07,v2_09] [--ops separable] [--output PATH]

A user whose tensors are NCHW (PyTorch's layout) calls tvmsep with `data_format="NCHW"`, and
the library that user would otherwise call is PyTorch. For each layer of the public and
unseen lists this times, on the same values, taking turns, with 2 threads: tvmsep's call on
the NCHW input (`tvmsep_nchw`), on the same input in NHWC (`tvmsep_nhwc`), and PyTorch's
NCHW convolution as benchmarks/peers.py runs it (`torch`), each checked against the float64
reference first.
"""

from __future__ import annotations

import dataclasses
import functools
import sys

import numpy as np

import tvmsep
from tvmsep.networks import Layer, network
from tvmsep.reference import reference_for, scaled_error
from tvmsep.target import host_target

from alignment import array_at
from limits import median_ms_in_turns
import peers
import report

KINDS = ("tvmsep_nchw", "tvmsep_nhwc", "torch")


def time_layer(layer: Layer, op: str, rng: np.random.Generator) -> dict[str, float]:
    """Median microseconds of each of KINDS for `layer`'s `op`, on the same values, taking turns."""
    nchw = dataclasses.replace(layer, layout="NCHW")
    wl = layer.workload(op)
    x, *weights = (array_at(rng.standard_normal(shape, dtype=np.float32), 0) for shape in wl.arg_shapes)
    x_nchw = array_at(np.ascontiguousarray(x.transpose(0, 3, 1, 2)), 0)
    call = tvmsep.depthwise_conv2d if op == "depthwise" else tvmsep.separable_conv2d
    rate = [layer.rate, layer.rate]
    calls = {"tvmsep_nchw": functools.partial(call, x_nchw, *weights, nchw.strides, layer.padding, rate,
                                              data_format="NCHW"),
             "tvmsep_nhwc": functools.partial(call, x, *weights, layer.strides, layer.padding, rate)}
    torch_call, torch_result = peers._torch(layer, wl, x_nchw, weights[0], weights[1] if op == "separable" else None,
                                            None, channels_last=False)
    expected = reference_for(wl, [x, *weights])
    results = {"tvmsep_nchw": lambda: calls["tvmsep_nchw"]().transpose(0, 2, 3, 1),
               "tvmsep_nhwc": calls["tvmsep_nhwc"], "torch": lambda: (torch_call(), torch_result())[1]}
    for kind, result in results.items():
        if not scaled_error(np.asarray(result(), np.float64), expected) <= 1e-4:
            raise SystemExit(f"{layer.name} {op}: {kind} is off the reference")
    calls["torch"] = torch_call
    return {kind: ms * 1e3 for kind, ms in median_ms_in_turns(calls, 100).items()}


def main() -> int:
    parser = report.arguments(__doc__, None, "comma-separated layer names (default: the public and unseen lists)")
    parser.add_argument("--ops", default="depthwise,separable")
    args = parser.parse_args()
    peers._configure(["tvmsep", "torch"], 2)
    layers = {layer.name: layer for layer in network("public") + network("unseen")}
    names = args.layers.split(",") if args.layers else list(layers)
    rng = np.random.default_rng(0)
    mcpu = host_target().attrs["mcpu"]
    lines = [*report.header(f"tvmsep's NCHW call against its NHWC call and PyTorch's NCHW, fp32 ({mcpu})"),
             "- median us per call, 2 threads, inputs on cache lines: tvmsep's op on the NCHW input "
             "(`data_format=\"NCHW\"`), on the same values in NHWC, and PyTorch's NCHW convolution in inference "
             "mode; the three take turns in blocks of 25 calls, in a random order each round, the first 5 of a "
             "block not counted", "",
             "| layer | op | shape (NHWC) | " + " | ".join(KINDS) + " | nchw / nhwc | torch / nchw |",
             "|---|---|---|" + "---|" * (len(KINDS) + 2)]
    for op in args.ops.split(","):
        for name in names:
            us = time_layer(layers[name], op, rng)
            print(name, op, " ".join(f"{kind} {us[kind]:.1f}" for kind in KINDS), flush=True)
            lines.append(f"| {name} | {op} | {layers[name].workload(op).describe()} | "
                         + " | ".join(f"{us[kind]:.1f}" for kind in KINDS)
                         + f" | {us['tvmsep_nchw'] / us['tvmsep_nhwc']:.2f}x | {us['torch'] / us['tvmsep_nchw']:.2f}x |")
    return report.write(lines, "nchw", mcpu, args.output)


if __name__ == "__main__":
    sys.exit(main())
