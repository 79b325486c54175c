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
    seen = set()
    timed = []  # (layer, workload, origin, median s, inputs, result)
    for layer in layers:
        wl = layer.workload("separable")
        x = rng.standard_normal(wl.input_shape, dtype=np.float32)
        f = rng.standard_normal(wl.filter_shape, dtype=np.float32)
        p = rng.standard_normal(wl.pointwise_shape, dtype=np.float32)
        origin = "cached" if wl in seen or ops.get_kernel(wl).origin == "disk" else "compiled"
        seen.add(wl)
        y = ops.separable_conv2d(x, f, p, layer.strides, layer.padding)
        times = []
        out = np.empty_like(y)
        for _ in range(args.repeats):
            start = time.perf_counter()
            ops.separable_conv2d(x, f, p, layer.strides, layer.padding, out=out)
            times.append(time.perf_counter() - start)
        timed.append((layer, wl, origin, statistics.median(times), (x, f, p), y))
    # The references after all the timing: numpy's BLAS threads keep spinning for a
    # while after a matmul and would share the cores with the kernels being timed.
    worst = 0.0
    for layer, wl, origin, seconds, inputs, y in timed:
        ref = separable_reference(*inputs, wl)
        err = float(np.abs(y - ref).max() / max(np.abs(ref).max(), 1e-30))
        worst = max(worst, err)
        shape = lambda s: "x".join(map(str, s[1:]))  # noqa: E731
        print(f"{layer.name:8} {shape(wl.input_shape):>16} {shape(wl.output_shape):>16} {origin:9} "
              f"{seconds * 1e3:11.3f} {err:11.1e}", flush=True)
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
    removed, left = module_cache.clear_disk()
    print(f"removed {removed} compiled modules from {module_cache.directory}")
    if left:
        shown = ", ".join(p.name for p in left[:10]) + (", ..." if len(left) > 10 else "")
        print(f"left {len(left)} entries that the cache did not write: {shown}")
    return 0


def _ints(text: str) -> list[int]:
    try:
        return [int(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def _padding(text: str):
    """SAME, VALID, or explicit pads as TOP,BOTTOM,LEFT,RIGHT (in the layout's spatial order)."""
    if text.upper() in ("SAME", "VALID"):
        return text.upper()
    return _ints(text)


def _tune_workloads(args: argparse.Namespace) -> list:
    """The workloads to tune, each with the epilogue asked for (argparse checked the activation's name)."""
    return [layer.workload() for layer in _tune_layers(args)]


def _tune_layers(args: argparse.Namespace) -> list:
    from .networks import network
    from .spec import LAYOUTS, LayerArguments
    ops = ("depthwise", "separable") if args.op == "both" else (args.op,)
    epilogue = dict(bias=args.bias, activation=args.activation)
    if args.network:
        return [layer.arguments(op, **epilogue) for op in ops for layer in network(args.network)]
    if args.input is None or args.filter is None:
        raise SystemExit("tvmsep tune: give --network, or --input and --filter (and --pointwise for separable)")
    padding = args.padding
    if isinstance(padding, list):
        if len(padding) != 4:
            raise SystemExit(f"tvmsep tune: explicit --padding needs 4 integers, got {padding}")
        padding = LAYOUTS[args.layout].padding(padding[:2], padding[2:])
    strides = LAYOUTS[args.layout].strides(args.stride, args.stride)
    layers = []
    for op in ops:
        if op == "depthwise":
            pointwise = None
        elif args.pointwise is None:
            raise SystemExit("tvmsep tune: separable needs --pointwise OUT_CHANNELS")
        else:
            pointwise = [1, 1, args.filter[2] * args.filter[3], args.pointwise]
        layers.append(LayerArguments(args.input, args.filter, strides, padding, pointwise_shape=pointwise,
                                     rate=[args.rate, args.rate], data_format=args.layout, dtype=args.dtype,
                                     **epilogue))
    return layers


def _tune(args: argparse.Namespace) -> int:
    """Tune workloads, print progress and a table, optionally plot the search."""
    from .export import parse_target
    from .tune import TuningError, format_table, tune
    try:
        workloads = _tune_workloads(args)
        target = parse_target(args.target)
        outcomes = tune(workloads, target=target, trials=args.trials, log_dir=args.log_dir, rpc=args.rpc,
                        rpc_key=args.rpc_key, compiler=args.cc, report=lambda line: print(line, flush=True))
    except (ValueError, TypeError) as e:
        print(f"tvmsep tune: {e}", file=sys.stderr)
        return 2
    except TuningError as e:
        print(f"tvmsep tune: {e}", file=sys.stderr)
        return 1
    print()
    print(format_table(outcomes))
    if args.plot:
        from .tune_plot import plot_search
        plot_search([o.workload for o in outcomes], args.log_dir, args.plot, target)
        print(f"wrote {args.plot}")
    return 0


def _compile(args: argparse.Namespace) -> int:
    """Compile layers into one bundle, showing progress, and print what went in."""
    from .export import compile_bundle, layers_from_file, parse_target
    from .networks import network
    try:
        if (args.network is None) == (args.layers is None):
            raise ValueError("give one of --network or --layers")
        if args.network:
            layers = [(layer.name, layer.workload(args.op)) for layer in network(args.network)]
        else:
            layers = layers_from_file(args.layers)
        manifest = compile_bundle(layers, parse_target(args.target), args.out,
                                  progress=lambda line: print(line, flush=True), compiler=args.cc)
    except (ValueError, TypeError, OSError) as e:
        print(f"tvmsep compile: {e}", file=sys.stderr)
        return 2
    print()
    print(f"{'layer':12} {'function':39} {'schedule':12} workload")
    for entry in manifest.kernels:
        print(f"{entry.name:12} {entry.function:39} {entry.schedule:12} {entry.workload.describe()}")
    print(f"\ntarget {manifest.target}; load it with tvmsep.load({str(args.out)!r})")
    return 0


TARGET_HELP = ('llvm (this CPU), cuda (this GPU) or TVM target JSON: \'{"kind": "cuda", "arch": "sm_90"}\', '
               '\'{"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mcpu": "cortex-a72", "num-cores": 4}\'')
CC_HELP = ("C++ compiler that links {what} (default: this machine's, or for another CPU architecture "
           "<triple>-g++, e.g. aarch64-linux-gnu-g++)")


def _parser() -> argparse.ArgumentParser:
    from .networks import NETWORKS
    from .spec import LAYOUTS
    parser = argparse.ArgumentParser(prog="tvmsep", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser("run", help="compile, check and time a network's separable layers")
    run.add_argument("--network", default="mobilenet_v1", choices=[n for n in NETWORKS if n != "public"])
    run.add_argument("--repeats", type=int, default=50, help="timed calls per layer (median reported)")
    run.add_argument("--seed", type=int, default=None, help="random seed for inputs (default: fresh)")
    run.set_defaults(func=_run_network)

    tune = commands.add_parser("tune", help="auto-tune workloads (meta-schedule, XGBoost cost model)",
                               description="Workloads come from --network, or from the shape options.")
    what = tune.add_argument_group("workloads")
    what.add_argument("--network", choices=[n for n in NETWORKS], help="a preset of real network layers")
    what.add_argument("--op", default="both", choices=["depthwise", "separable", "both"])
    what.add_argument("--input", type=_ints, help="input shape in --layout order, e.g. 1,56,56,128")
    what.add_argument("--filter", type=_ints, help="depthwise filter KH,KW,C,MULTIPLIER")
    what.add_argument("--pointwise", type=int, help="separable output channels")
    what.add_argument("--stride", type=int, default=1)
    what.add_argument("--padding", type=_padding, default="SAME", help="SAME, VALID or TOP,BOTTOM,LEFT,RIGHT")
    what.add_argument("--rate", type=int, default=1, help="dilation rate")
    what.add_argument("--layout", default="NHWC", choices=list(LAYOUTS))
    what.add_argument("--dtype", default="float32", choices=["float16", "float32", "float64"])
    what.add_argument("--bias", action="store_true", help="with the epilogue's per-output-channel bias")
    what.add_argument("--activation", choices=["relu", "relu6"], help="with the epilogue's activation")
    tune.add_argument("--trials", type=int, default=64, help="records per workload, counting logged ones")
    tune.add_argument("--log-dir", default="tuning_logs", help="one folder per target is made under it")
    tune.add_argument("--target", default="llvm", help=TARGET_HELP)
    tune.add_argument("--cc", metavar="COMPILER", help=CC_HELP.format(what="each candidate"))
    tune.add_argument("--rpc", metavar="HOST:PORT", help="measure on devices behind this TVM RPC tracker "
                                                         "(needed for a target of another machine)")
    tune.add_argument("--rpc-key", metavar="KEY", help="device key registered with the tracker")
    tune.add_argument("--plot", metavar="FILE.png", help="draw best time against trials per workload")
    tune.set_defaults(func=_tune)

    bundle = commands.add_parser("compile", help="compile layers ahead of time into one bundle (tvmsep.load)",
                                 description="Writes a folder: manifest.json and kernels.so, one library "
                                             "with every kernel, loadable with the TVM runtime alone.")
    bundle.add_argument("--network", choices=[n for n in NETWORKS], help="a preset of real network layers")
    bundle.add_argument("--op", default=None, choices=["depthwise", "separable"],
                        help="with --network: which op per layer (default: separable)")
    bundle.add_argument("--layers", metavar="FILE.json", help="layer specs with the public API's fields")
    bundle.add_argument("--target", default="llvm", help=TARGET_HELP)
    bundle.add_argument("--cc", metavar="COMPILER", help=CC_HELP.format(what="the library"))
    bundle.add_argument("--out", required=True, help="the bundle folder to write")
    bundle.set_defaults(func=_compile)

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
