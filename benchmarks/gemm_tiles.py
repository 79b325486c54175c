"""Separable GEMM tiles as tall as the registers hold, against GEMM_ROWS, on this machine.

    python benchmarks/gemm_tiles.py [--layers v1_07,v2_09] [--output PATH]

Each tile of a separable's pointwise GEMM reads its whole weight panel ([C*M, NR]), one row
of vectors per step of the reduction. Where that panel is more than half the L1, the
hand-written schedule makes the tiles as tall as the register file holds (14 rows of two
vectors with AVX-512), so that the panel, which then comes from L2 for every tile, is read
half as often (schedules/llvm.py, `_gemm_rows`). For each layer of the public and unseen lists
whose hand-written schedule the rule changes on this CPU, this times, on the same values,
taking turns: tvmsep's hand-written kernel as built now (`tall`) and the same schedule with
the rule switched off (`gemm_rows`: tiles of GEMM_ROWS, or the width's divisor under it),
each checked against the float64 reference first.
"""

from __future__ import annotations

import contextlib
import sys

import numpy as np

from tvmsep.backends import BACKENDS
from tvmsep.networks import network
from tvmsep.target import host_target

import report
from variants import rule_changes, time_rule

KINDS = ("tall", "gemm_rows")


@contextlib.contextmanager
def _without_the_rule():
    """Kernels built inside take tiles of GEMM_ROWS, as before the rule: no panel outgrows the L1."""
    backend = BACKENDS["llvm"]
    backend.l1_bytes = lambda target: sys.maxsize
    try:
        yield
    finally:
        del backend.l1_bytes


def main() -> int:
    parser = report.arguments(__doc__, None, "comma-separated layer names (default: every layer the rule changes)")
    args = parser.parse_args()
    layers = {layer.name: layer for layer in network("public") + network("unseen")}
    names = args.layers.split(",") if args.layers else list(layers)
    workloads = {}
    for name in names:
        wl = layers[name].workload("separable")
        if args.layers or rule_changes(wl, _without_the_rule):
            workloads.setdefault(wl, name)  # the five V1 14x14x512 layers are one workload
    rng = np.random.default_rng(0)
    mcpu = host_target().attrs["mcpu"]
    lines = [*report.header(f"Separable GEMM tiles as tall as the registers hold, NHWC fp32 ({mcpu})"),
             "- median us per call, 2 threads, arrays on cache lines, the result placed as tvmsep places its own: "
             "tvmsep's hand-written kernel as built now "
             "(`tall`: tiles as tall as the registers hold where the weight panel is more than half the L1) "
             "and with tiles of GEMM_ROWS (`gemm_rows`, the rule switched off); the two take turns in blocks of "
             "25 calls, in a random order each round, the first 5 of a block not counted", "",
             "| layer | shape | tall | gemm_rows | gemm_rows / tall |", "|---|---|---|---|---|"]
    for wl, name in workloads.items():
        us = time_rule(wl, rng, KINDS, _without_the_rule)
        print(name, " ".join(f"{kind} {us[kind]:.1f}" for kind in KINDS), flush=True)
        lines.append(f"| {name} | {wl.describe()} | {us['tall']:.1f} | {us['gemm_rows']:.1f} | "
                     f"{us['gemm_rows'] / us['tall']:.2f}x |")
    return report.write(lines, "gemm-tiles", mcpu, args.output)


if __name__ == "__main__":
    sys.exit(main())
