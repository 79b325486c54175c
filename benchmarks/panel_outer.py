"""A GEMM copying weights many times its intermediate, its panels outermost, against a chunk per core.

    python benchmarks/panel_outer.py [--layers xception_10x1024] [--mcpu haswell] [--output PATH]

A separable's GEMM whose weight rows are 2 KiB or more apart copies each weight panel before
the tiles that read it. With one chunk of output rows per core, every core runs, and so copies,
every panel: the whole weights once per core, in strided reads the prefetchers do not follow.
Where the weights are many times the intermediate, the hand-written schedule runs the panels
outermost instead, split over the cores, each copied once, each core then reading all of the
intermediate (schedules/llvm.py, `_copies_each_panel_once`). For each layer of the public,
unseen and other lists (other_layers.py) whose hand-written schedule the rule changes, this
times, on the same values, taking turns: tvmsep's hand-written kernel as built now
(`panels`) and the same schedule with the rule switched off (`chunks`), each checked against
the float64 reference first. `--mcpu` builds both for another x86 CPU whose code runs here
(an AVX2 one: haswell), where the rule changes other layers.
"""

from __future__ import annotations

import contextlib
import sys
from unittest import mock

import numpy as np
import tvm

from tvmsep.backends import BACKENDS
from tvmsep.networks import network
from tvmsep.target import host_target

import report
from other_layers import OTHER_LAYERS
from variants import rule_changes, time_rule

KINDS = ("panels", "chunks")


def _without_the_rule() -> contextlib.AbstractContextManager:
    """Kernels built inside keep a chunk of rows per core wherever the rows or tiles split evenly."""
    return mock.patch.object(BACKENDS["llvm"].schedules(), "_copies_each_panel_once", lambda *args: False)


def main() -> int:
    parser = report.arguments(__doc__, None, "comma-separated layer names (default: every layer the rule changes)")
    parser.add_argument("--mcpu", help="build for this x86 CPU instead of this one (its code must run here)")
    args = parser.parse_args()
    here = host_target()
    target = tvm.target.Target({**here.export(), "mcpu": args.mcpu}) if args.mcpu else here
    layers = {layer.name: layer for layer in network("public") + network("unseen") + OTHER_LAYERS}
    names = args.layers.split(",") if args.layers else list(layers)
    workloads = {}
    for name in names:
        wl = layers[name].workload("separable")
        if args.layers or rule_changes(wl, _without_the_rule, target):
            workloads.setdefault(wl, name)
    rng = np.random.default_rng(0)
    mcpu = here.attrs["mcpu"]
    code = f"{args.mcpu} code on " if args.mcpu else ""
    lines = [*report.header(f"GEMM weight panels copied once, outermost, against a chunk of rows per core, "
                            f"separable fp32 ({code}{mcpu})"),
             "- median us per call, 2 threads, arrays on cache lines, the result placed as tvmsep places its own: "
             "tvmsep's hand-written kernel as built now (`panels`: where it copies weights more than "
             "WEIGHTS_OVER_INTERMEDIATE times the intermediate, their panels outermost, each copied once) and "
             "with the rule switched off (`chunks`: one chunk of rows per core, each copying every panel); the two "
             "take turns in blocks of 25 calls, in a random order each round, the first 5 of a block not counted",
             "", "| layer | shape | weights / intermediate | panels | chunks | chunks / panels |",
             "|---|---|---|---|---|---|"]
    for wl, name in workloads.items():
        us = time_rule(wl, rng, KINDS, _without_the_rule, target)
        ratio = wl.out_channels / (wl.batch * wl.out_height * wl.out_width)  # [C*M, O] over [pixels, C*M]
        print(name, " ".join(f"{kind} {us[kind]:.1f}" for kind in KINDS), flush=True)
        lines.append(f"| {name} | {wl.describe()} | {ratio:.1f} | {us['panels']:.1f} | {us['chunks']:.1f} | "
                     f"{us['chunks'] / us['panels']:.2f}x |")
    study = f"panel-outer-{args.mcpu}-code" if args.mcpu else "panel-outer"
    return report.write(lines, study, mcpu, args.output)


if __name__ == "__main__":
    sys.exit(main())
