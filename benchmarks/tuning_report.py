"""Tuning results against this machine's limits.

For each preset workload with a verdict in the tuning logs: hand-written and
tuned time (measured side by side at the end of the tuning job), the chosen
schedule, and what the chosen kernel achieves: GFLOP/s and GB/s (compulsory
traffic: inputs, filters and output once each), next to this machine's peaks
measured here (a large copy for bandwidth, an FMA-only kernel for FLOP/s: see
limits.py). Layers
this small live in cache, so each row also gives the time of a plain copy of
the layer's own compulsory bytes: a kernel cannot beat that by much.

    python benchmarks/tuning_report.py [--networks mobilenet_v1,mobilenet_v2]
"""

from __future__ import annotations

import argparse
import datetime
import statistics
import sys
from pathlib import Path


from limits import blas_gflops, compulsory_bytes, copy_bandwidth_gbs, copy_ms, fma_peak_gflops
from tvmsep.build import workload_module
from tvmsep.networks import network
from tvmsep.target import host_target
from tvmsep.threads import usable_cores
from tvmsep.verdicts import USE_TUNED, module_hash, read_verdicts, shipped_log_folder, target_folder_name


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--networks", default="mobilenet_v1,mobilenet_v2")
    parser.add_argument("--output", type=Path, default=None)
    args = parser.parse_args()

    target = host_target()
    verdicts = read_verdicts(shipped_log_folder(target))
    bandwidth, gflops, blas = copy_bandwidth_gbs(), fma_peak_gflops(), blas_gflops()
    ops = ("depthwise", "separable")
    rows, speedups, peak_shares = [], {op: [] for op in ops}, {op: [] for op in ops}
    for name in args.networks.split(","):
        for op in ops:
            for wl in dict.fromkeys(layer.workload(op) for layer in network(name)):
                verdict = verdicts.get(module_hash(workload_module(wl, target)))
                if verdict is None:
                    rows.append(f"| {name} | {wl.describe()} | not tuned | | | | | | |")
                    continue
                chosen_ms = verdict.tuned_ms if verdict.use == USE_TUNED else verdict.hand_ms
                speedups[op].append(verdict.hand_ms / chosen_ms)
                achieved_gflops = wl.flops / chosen_ms / 1e6
                flops_share = achieved_gflops / gflops
                peak_shares[op].append(flops_share)
                achieved_gbs = compulsory_bytes(wl) / chosen_ms / 1e6
                rows.append(f"| {name} | {wl.describe()} | {verdict.hand_ms:.4f} | {verdict.tuned_ms:.4f} | "
                            f"{verdict.use} {verdict.hand_ms / chosen_ms:.2f}x | {verdict.trials} | "
                            f"{achieved_gflops:.0f} ({flops_share:.0%}) | "
                            f"{achieved_gbs:.0f} ({achieved_gbs / bandwidth:.0%}) | "
                            f"{copy_ms(compulsory_bytes(wl)):.4f} |")
    every = [s for op in ops for s in speedups[op]]
    geomean = statistics.geometric_mean(every) if every else float("nan")
    per_op = [f"{op}: {statistics.geometric_mean(s):.2f}x over {len(s)}, chosen kernels at a median "
              f"{statistics.median(peak_shares[op]):.0%} of the FMA peak" for op, s in speedups.items() if s]
    report = "\n".join([
        f"# Tuning results, {target_folder_name(target)}", "",
        f"- date: {datetime.date.today()}; target: `{target}`",
        "- hand and tuned ms: medians of 5 side-by-side rounds at the end of each tuning job "
        "(`tvmsep tune`), taken after the 3 fastest logged candidates and the last job's choice "
        "were measured side by side to pick `tuned`; `chosen` is what compiling now uses, and its "
        "speed-up over hand-written",
        f"- this machine's peaks, measured now on {usable_cores()} cores: copy bandwidth {bandwidth:.0f} GB/s "
        f"(512 MiB, read + write), FMA throughput {gflops:.0f} GFLOP/s (fp32, `benchmarks/limits.py`); "
        "for comparison, a 2048^3 fp32 GEMM: " + ", ".join(f"{k} {v:.0f} GFLOP/s" for k, v in blas.items()),
        "- achieved: chosen kernel's GFLOP/s and compulsory GB/s (each tensor touched once), "
        "as a share of those peaks; `copy ms`: a plain copy of the same number of bytes on all cores, now", "",
        "| preset | workload | hand ms | tuned ms | chosen | trials | GFLOP/s (of peak) | GB/s (of peak) | copy ms |",
        "|---|---|---|---|---|---|---|---|---|",
        *rows, "",
        f"Geometric-mean speed-up of the chosen schedules over hand-written: {geomean:.2f}x "
        f"over {len(every)} workloads ({'; '.join(per_op)}).", ""])
    print(report)
    output = args.output or Path(__file__).parent / "results" / f"tuning-{target.attrs['mcpu']}.md"
    output.write_text(report)
    print(f"wrote {output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
