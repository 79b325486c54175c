"""tvmsep against ONNX Runtime, PyTorch (NCHW and channels_last) and TensorFlow.

Every implementation gets the same inputs in its own preferred layout, is
checked against tvmsep's result first, then timed call by call in one process,
taking turns in blocks, in a random order each round, so drift and a previous
library's spinning threads hit all of them alike. Medians in ms.
tvmsep is called as users call it: numpy in, numpy out (and with `out=`).
Beside each layer: what tvmsep's call achieves against this machine's peaks
(limits.py), so it is clear how far each kernel is from the physical limit.

Layers: the public list (MobileNetV1, MobileNetV2, batch 8, rate 2,
multiplier 2), layers of other networks that were never tuned (`unseen`),
and an 8x8x8 layer whose time is almost all per-call overhead.

    python benchmarks/peers.py [--repeats 200] [--threads 2] [--only v1_03,v2_01] [--epilogue]

With `--epilogue` every implementation computes relu6(conv + bias), as a
MobileNet block does: tvmsep with its fused epilogue (`bias=`, `activation=`),
ONNX Runtime with the bias in its Conv and a Clip after it (which its graph
optimizer fuses), PyTorch and TF as their users write it.

Writes benchmarks/results/cpu-<mcpu>[-epilogue].md and a plot of the ratios
beside it (.png), and prints the table.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path

import dataclasses

import numpy as np

import tvmsep
from tvmsep import build, runtime
from tvmsep.networks import Layer, network
from tvmsep.spec import Workload
from tvmsep.target import host_target

from limits import compulsory_bytes, copy_bandwidth_gbs, fma_peak_gflops

PEERS = ("ort", "torch", "torch_cl", "tf")
BASELINES = ("ort", "torch", "torch_cl")  # "best peer" is the fastest of these
TINY = Layer("tiny_8x8x8", 1, 8, 8, 1, 8)  # a kernel of well under a microsecond: the call is the cost
GROUPS = {"v1": "MobileNetV1", "v2": "MobileNetV2", "extra": "batch 8 / rate 2 / multiplier 2",
          "unseen": "other networks, never tuned", "tiny": "8x8x8, per-call overhead"}


def _nchw_filter(layer: Layer, f: np.ndarray) -> np.ndarray:
    """TF's [KH, KW, C, M] as the grouped-conv weight [C*M, 1, KH, KW] (channel k*M+q)."""
    kh, kw, c, m = f.shape
    return np.ascontiguousarray(f.transpose(2, 3, 0, 1).reshape(c * m, 1, kh, kw))


def _pads(wl: Workload) -> tuple[int, int, int, int]:
    return wl.pad_top, wl.pad_left, wl.pad_bottom, wl.pad_right


def _ort(layer: Layer, wl: Workload, x, f, p, bias, threads: int):
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    last = "conv" if bias is not None else "y"
    depthwise_inputs = ["x", "wd"] + (["b"] if bias is not None and p is None else [])
    nodes = [helper.make_node("Conv", depthwise_inputs, ["mid" if p is not None else last], group=wl.in_channels,
                              strides=[wl.stride_h, wl.stride_w], pads=list(_pads(wl)),
                              dilations=[wl.dilation_h, wl.dilation_w], kernel_shape=[wl.kernel_h, wl.kernel_w])]
    inits = [numpy_helper.from_array(_nchw_filter(layer, f), "wd")]
    if p is not None:
        nodes.append(helper.make_node("Conv", ["mid", "wp"] + (["b"] if bias is not None else []), [last],
                                      kernel_shape=[1, 1]))
        inits.append(numpy_helper.from_array(np.ascontiguousarray(p[0, 0].T[:, :, None, None]), "wp"))
    if bias is not None:
        nodes.append(helper.make_node("Clip", ["conv", "zero", "six"], ["y"]))
        inits += [numpy_helper.from_array(bias, "b"), numpy_helper.from_array(np.float32(0), "zero"),
                  numpy_helper.from_array(np.float32(6), "six")]
    out_shape = [wl.batch, wl.out_channels, wl.out_height, wl.out_width]
    graph = helper.make_graph(nodes, "layer", [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(x.shape))],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, out_shape)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    y = np.empty(out_shape, np.float32)
    binding = session.io_binding()
    binding.bind_cpu_input("x", x)
    binding.bind_output("y", "cpu", 0, np.float32, out_shape, y.ctypes.data)

    def call():  # holds `y`: ORT writes through a raw pointer and would scribble on freed memory
        session.run_with_iobinding(binding)
        return y
    return call, lambda: y


def _torch(layer: Layer, wl: Workload, x, f, p, bias, channels_last: bool):
    import torch
    import torch.nn.functional as F

    memory = torch.channels_last if channels_last else torch.contiguous_format
    xt = torch.from_numpy(x).contiguous(memory_format=memory)
    wd = torch.from_numpy(_nchw_filter(layer, f)).contiguous(memory_format=memory)
    wp = None if p is None else torch.from_numpy(np.ascontiguousarray(p[0, 0].T[:, :, None, None])) \
        .contiguous(memory_format=memory)
    bt = None if bias is None else torch.from_numpy(bias)
    top, left, bottom, right = _pads(wl)
    symmetric = top == bottom and left == right
    result = {}

    def call():
        with torch.inference_mode():
            inp = xt if symmetric else F.pad(xt, (left, right, top, bottom))
            y = F.conv2d(inp, wd, bt if wp is None else None, stride=(wl.stride_h, wl.stride_w),
                         padding=(top, left) if symmetric else 0, dilation=(wl.dilation_h, wl.dilation_w),
                         groups=wl.in_channels)
            if wp is not None:
                y = F.conv2d(y, wp, bt)
            result["y"] = y if bt is None else F.relu6(y)
    return call, lambda: result["y"].numpy()


def _tf(layer: Layer, wl: Workload, x, f, p, bias):
    import tensorflow as tf
    xt, ft = tf.constant(x), tf.constant(f)
    pt = None if p is None else tf.constant(p)
    bt = None if bias is None else tf.constant(bias)
    strides, rate = layer.strides, [layer.rate, layer.rate]
    result = {}

    def call():
        if pt is None:
            y = tf.nn.depthwise_conv2d(xt, ft, strides, layer.padding, dilations=rate)
        else:
            y = tf.nn.separable_conv2d(xt, ft, pt, strides, layer.padding, dilations=rate)
        result["y"] = y if bt is None else tf.nn.relu6(tf.nn.bias_add(y, bt))
    return call, lambda: result["y"].numpy().transpose(0, 3, 1, 2)


def _implementations(layer: Layer, op: str, threads: int, rng, with_tf: bool, epilogue: bool):
    """`epilogue`: relu6(conv + bias) everywhere, with a fresh bias."""
    wl = layer.workload(op)
    x = rng.standard_normal(wl.input_shape, dtype=np.float32)
    f = rng.standard_normal(wl.filter_shape, dtype=np.float32)
    p = rng.standard_normal(wl.pointwise_shape, dtype=np.float32) if op == "separable" else None
    bias = rng.standard_normal(wl.out_channels, dtype=np.float32) if epilogue else None
    if epilogue:
        wl = dataclasses.replace(wl, bias=True, activation="relu6")
    x_nchw = np.ascontiguousarray(x.transpose(0, 3, 1, 2))
    args = (layer.strides, layer.padding, [layer.rate, layer.rate])
    fused = dict(bias=bias, activation=wl.activation)
    ours = (lambda **kw: tvmsep.depthwise_conv2d(x, f, *args, **fused, **kw)) if p is None else \
        (lambda **kw: tvmsep.separable_conv2d(x, f, p, *args, **fused, **kw))
    expected = ours().transpose(0, 3, 1, 2)
    out = np.empty(wl.output_shape, np.float32)
    hand = runtime.Kernel(wl, build.compile_module(wl, host_target())["main"], "hand-written")
    inputs = [a for a in (x, f, p, bias) if a is not None]
    impls = {"tvmsep": (ours, None), "tvmsep_out": (lambda: ours(out=out), None),
             "tvmsep_hand": (lambda: hand.run(inputs, out), lambda: out.transpose(0, 3, 1, 2)),
             "ort": _ort(layer, wl, x_nchw, f, p, bias, threads),
             "torch": _torch(layer, wl, x_nchw, f, p, bias, channels_last=False),
             "torch_cl": _torch(layer, wl, x_nchw, f, p, bias, channels_last=True),
             }
    if with_tf:
        impls["tf"] = _tf(layer, wl, x, f, p, bias)
    for name, (call, result) in impls.items():
        call()
        if result is not None:  # every peer computes the same numbers before it is timed
            np.testing.assert_allclose(result(), expected, rtol=1e-3, atol=1e-3 * np.abs(expected).max(),
                                       err_msg=f"{name} disagrees with tvmsep on {layer.name} {op}")
    return wl, {name: call for name, (call, _) in impls.items()}


def _time(calls: dict, repeats: int, block: int = 25, settle: int = 5) -> dict[str, float]:
    """Median ms per call. Implementations take turns in blocks of `block` calls,
    in a fresh random order every round: drift hits all alike. The first
    `settle` calls of a block are not counted: they share the cores with the
    previous library's thread pool, still spinning (TF's spins for milliseconds)."""
    samples = {name: [] for name in calls}
    order = list(calls)
    shuffle = random.Random(0).shuffle
    for _ in range(3):
        for call in calls.values():
            call()
    for _ in range(max(1, repeats // (block - settle))):
        shuffle(order)
        for name in order:
            call = calls[name]
            for i in range(block):
                start = time.perf_counter()
                call()
                if i >= settle:
                    samples[name].append(time.perf_counter() - start)
    return {name: statistics.median(s) * 1e3 for name, s in samples.items()}


def _machine() -> str:
    try:
        model = next(line.split(":", 1)[1].strip() for line in subprocess.run(
            ["lscpu"], capture_output=True, text=True).stdout.splitlines() if line.startswith("Model name"))
    except (StopIteration, OSError):
        model = platform.processor() or "unknown"
    target = host_target()
    return f"{model} ({target.attrs['mcpu']}), {target.attrs['num-cores']} cores, {platform.system()}"


def _group(layer: Layer) -> str:
    if layer.name.startswith(("v1_", "v2_")):
        return layer.name[:2]
    if layer == TINY:
        return "tiny"
    return "unseen" if layer in network("unseen") else "extra"


def _plot(ratios: dict[str, list[tuple[str, float]]], title: str, path: Path) -> None:
    """Best peer / tvmsep per layer, one panel per op; above the line at 1.0, tvmsep wins."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(len(ratios), 1, figsize=(14, 4 * len(ratios)), squeeze=False)
    for ax, (op, rows) in zip(axes[:, 0], ratios.items()):
        names, values = zip(*rows)
        ax.bar(range(len(values)), values, color=["tab:green" if v >= 1 else "tab:red" for v in values])
        ax.axhline(1.0, color="black", linewidth=0.8)
        ax.set_xticks(range(len(names)), names, rotation=70, fontsize=8)
        ax.set_ylabel("best peer / tvmsep")
        ax.set_title(f"{op}: geometric mean {_geomean(list(values)):.2f}x")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _geomean(values: list[float]) -> float:
    return statistics.geometric_mean(values) if values else float("nan")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=200)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--only", default="", help="comma-separated layer names")
    parser.add_argument("--output", type=Path, default=None)
    parser.add_argument("--tf", action=argparse.BooleanOptionalAction, default=True,
                        help="include TensorFlow (eager) as a peer")
    parser.add_argument("--epilogue", action="store_true", help="every implementation computes relu6(conv + bias)")
    args = parser.parse_args()

    import torch
    torch.set_num_threads(args.threads)
    if args.tf:
        import tensorflow as tf
        tf.config.threading.set_intra_op_parallelism_threads(args.threads)
        tf.config.threading.set_inter_op_parallelism_threads(1)
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    os.environ["TVM_NUM_THREADS"] = str(args.threads)  # read when TVM's pool starts, at the first kernel

    layers = [layer for layer in network("public") + network("unseen") + [TINY]
              if not args.only or layer.name in args.only.split(",")]
    rng = np.random.default_rng(0)
    peaks = [(copy_bandwidth_gbs(), fma_peak_gflops())]
    columns = ("tvmsep", "tvmsep_out", "tvmsep_hand") + (PEERS if args.tf else PEERS[:-1])
    lines = [f"| layer | op | shape | {' | '.join(columns)} | best peer / tvmsep | GFLOP/s (of peak) "
             "| GB/s (of copy) |", "|" + "---|" * (len(columns) + 6)]
    measured = []  # (layer, op, workload, ms): the rows, written once the peaks are known
    ratios: dict[tuple[str, str], list[float]] = {}
    plotted: dict[str, list[tuple[str, float]]] = {}
    overhead = []
    for op in ("depthwise", "separable"):
        for layer in layers:
            wl, calls = _implementations(layer, op, args.threads, rng, args.tf, args.epilogue)
            ms = _time(calls, args.repeats)
            ratio = min(ms[p] for p in BASELINES) / ms["tvmsep"]
            ratios.setdefault((op, _group(layer)), []).append(ratio)
            if layer == TINY:
                overhead.append(f"- {op}: tvmsep {ms['tvmsep'] * 1e3:.1f} us per call, ONNX Runtime "
                                f"{ms['ort'] * 1e3:.1f} us, torch {ms['torch'] * 1e3:.1f} us")
            else:
                plotted.setdefault(op, []).append((layer.name, ratio))
            measured.append((layer, op, wl, ms, ratio))
            print(f"{layer.name} {op}: " + ", ".join(f"{c} {ms[c]:.3f}" for c in columns), flush=True)
    # A peak is the most the machine did: measured before and after, as a neighbour
    # on a shared machine can take a core for the length of one measurement.
    peaks.append((copy_bandwidth_gbs(), fma_peak_gflops()))
    bandwidth, gflops = max(b for b, _ in peaks), max(g for _, g in peaks)
    for layer, op, wl, ms, ratio in measured:
        achieved_gflops = wl.flops / ms["tvmsep"] / 1e6
        achieved_gbs = compulsory_bytes(wl) / ms["tvmsep"] / 1e6
        lines.append(f"| {layer.name} | {op} | {wl.describe().split(' ', 2)[2]} | "
                     + " | ".join(f"{ms[c]:.3f}" for c in columns) + f" | {ratio:.2f}x | "
                     + f"{achieved_gflops:.0f} ({achieved_gflops / gflops:.0%}) | "
                     + f"{achieved_gbs:.0f} ({achieved_gbs / bandwidth:.0%}) |")
    summary = ["", "Geometric mean of best peer (ORT, torch NCHW, torch channels_last) / tvmsep:", ""]
    for (op, group), values in ratios.items():
        summary.append(f"- {op}, {GROUPS[group]} ({len(values)} layers): {_geomean(values):.2f}x "
                       f"(lowest {min(values):.2f}x)")
    for op in ("depthwise", "separable"):
        values = [r for (o, group), rs in ratios.items() if o == op and group != "tiny" for r in rs]
        if values:
            summary.append(f"- {op}, all layers above ({len(values)}): {_geomean(values):.2f}x "
                           f"(lowest {min(values):.2f}x)")
    if overhead:
        summary += ["", "Per-call overhead (median time of the 8x8x8 layer, whose kernel takes well under "
                        "a microsecond):", "", *overhead]
    versions = [f"tvmsep {tvmsep.__version__}", f"torch {torch.__version__}"]
    if args.tf:
        versions.append(f"tensorflow {tf.__version__}")
    import onnxruntime
    versions.append(f"onnxruntime {onnxruntime.__version__}")
    what = "relu6(conv + bias), " if args.epilogue else ""
    header = [f"# tvmsep vs peers, {what}fp32, {args.threads} threads", "",
              f"- machine: {_machine()}", f"- date: {datetime.date.today()}", f"- versions: {', '.join(versions)}",
              f"- command: `python benchmarks/peers.py {' '.join(sys.argv[1:])}`",
              "- median ms per call, in one process, implementations taking turns in blocks of 25 calls "
              "(the first 5 not counted) in a random order each round; "
              "tvmsep is NHWC numpy in/out, `tvmsep_out` passes `out=`; `tvmsep_hand` (with `out=`) is the "
              "hand-written schedule, which differs from tvmsep's where a tuned one is shipped; "
              "ORT and torch get NCHW (torch_cl: channels_last), TF NHWC eager.",
              f"- this machine's peaks, the higher of two measurements, before and after the layers: FMA throughput {gflops:.0f} GFLOP/s, copy "
              f"bandwidth {bandwidth:.0f} GB/s (`benchmarks/limits.py`); tvmsep's GFLOP/s and GB/s are those of "
              "its user-facing call, counting each tensor read or written once (so a layer whose tensors stay "
              "in cache can pass the copy bandwidth, which is measured on 512 MiB)", ""]
    report = "\n".join(header + lines + summary) + "\n"
    print("\n".join(lines + summary))
    suffix = "-epilogue" if args.epilogue else ""
    output = args.output or Path(__file__).parent / "results" / f"cpu-{host_target().attrs['mcpu']}{suffix}.md"
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(report)
    print(f"\nwrote {output}")
    if plotted:
        _plot(plotted, f"best of ONNX Runtime and PyTorch / tvmsep, {what}fp32, {args.threads} threads, "
                       f"{_machine()}",
              output.with_suffix(".png"))
        print(f"wrote {output.with_suffix('.png')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
