"""`tvmsep` command line: thin commands that parse arguments and forward them."""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from typing import Sequence

import numpy as np

__all__ = ["main"]


def _run_network(args: argparse.Namespace) -> int:
    """Compile and run every layer of a network, check it, print a table."""
    from . import ops
    from .networks import network
    from .reference import separable_reference

    rng = np.random.default_rng(args.seed)
    layers = network(args.network)
    print(f"{args.network}: {len(layers)} separable layers, fp32, NHWC, target: host CPU", flush=True)
    header = f"{'layer':8} {'input':>16} {'output':>16} {'kernel':9} {'ms (median)':>11} {'max rel err':>11}"
    print(header)
    print("-" * len(header))
    worst = 0.0
    seen = set()
    for layer in layers:
        wl = layer.workload("separable")
        x = rng.standard_normal(wl.input_shape, dtype=np.float32)
        f = rng.standard_normal(wl.filter_shape, dtype=np.float32)
        p = rng.standard_normal(wl.pointwise_shape, dtype=np.float32)
        origin = "cached" if wl in seen or ops.get_kernel(wl).origin == "disk" else "compiled"
        seen.add(wl)
        y = ops.separable_conv2d(x, f, p, layer.strides, layer.padding)
        ref = separable_reference(x, f, p, wl)
        err = float(np.abs(y - ref).max() / max(np.abs(ref).max(), 1e-30))
        worst = max(worst, err)
        times = []
        out = np.empty_like(y)
        for _ in range(args.repeats):
            start = time.perf_counter()
            ops.separable_conv2d(x, f, p, layer.strides, layer.padding, out=out)
            times.append(time.perf_counter() - start)
        shape = lambda s: "x".join(map(str, s[1:]))  # noqa: E731
        print(f"{layer.name:8} {shape(wl.input_shape):>16} {shape(wl.output_shape):>16} {origin:9} "
              f"{statistics.median(times) * 1e3:11.3f} {err:11.1e}", flush=True)
    ok = worst < 1e-4
    print(f"\nall layers {'match' if ok else 'DO NOT match'} the float64 reference (worst {worst:.1e}, "
          "tolerance 1e-4)")
    return 0 if ok else 1


def _cache_info(args: argparse.Namespace) -> int:
    from .ops import module_cache
    entries = module_cache.disk_entries()
    size = sum(p.stat().st_size for p in entries)
    print(f"directory: {module_cache.directory}")
    print(f"modules:   {len(entries)}")
    print(f"size:      {size / 1e6:.2f} MB")
    return 0


def _cache_clear(args: argparse.Namespace) -> int:
    from .ops import module_cache
    removed = module_cache.clear_disk()
    print(f"removed {removed} compiled modules from {module_cache.directory}")
    return 0


def _parser() -> argparse.ArgumentParser:
    from .networks import NETWORKS
    parser = argparse.ArgumentParser(prog="tvmsep", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser("run", help="compile, check and time a network's separable layers")
    run.add_argument("--network", default="mobilenet_v1", choices=[n for n in NETWORKS if n != "public"])
    run.add_argument("--repeats", type=int, default=50, help="timed calls per layer (median reported)")
    run.add_argument("--seed", type=int, default=None, help="random seed for inputs (default: fresh)")
    run.set_defaults(func=_run_network)

    cache = commands.add_parser("cache", help="the compiled-module cache")
    cache_commands = cache.add_subparsers(dest="cache_command", required=True)
    cache_commands.add_parser("info", help="where it is and what it holds").set_defaults(func=_cache_info)
    cache_commands.add_parser("clear", help="delete every compiled module").set_defaults(func=_cache_clear)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
