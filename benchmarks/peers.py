"""tvmsep against the libraries users pick for these layers: LiteRT (XNNPACK),
OpenVINO, ONNX Runtime, PyTorch (NCHW and channels_last) and TensorFlow.

Every implementation gets the same inputs in its own preferred layout, is
checked against the float64 reference first, then timed call by call, taking
turns in blocks, in a random order each round, so drift and a previous
library's spinning threads hit all of them alike. Medians in ms.
tvmsep is called as users call it: numpy in, numpy out (and with `out=`).
Every library gets its inputs on a cache line, as the allocators of torch, TF,
LiteRT and tvmsep's own results place them; `tvmsep_off_line` is tvmsep's call
on an input 16 bytes past a line, where numpy puts most large arrays;
`tvmsep_layer` is the layer as a network holds it, `tvmsep.DepthwiseConv2D` or
`SeparableConv2D` made once from the weights, as the peers build their models from them.
The peers are run as their users run them:

- LiteRT: a model converted by TensorFlow's TFLiteConverter from the TF op on
  a tf.function with concrete shapes, run by the LiteRT interpreter with its
  default XNNPACK delegate (`num_threads` set), which must have taken the
  layer (a DELEGATE node writes the output); set_tensor, invoke, get_tensor.
- OpenVINO: the layer built with its opset (not its converter, which starts a
  telemetry sender), NHWC in and out, compiled for the CPU plugin in f32
  (`INFERENCE_PRECISION_HINT`: its default on an AMX CPU is bf16, another
  computation), `INFERENCE_NUM_THREADS` set, latency hint; one infer request.
- ONNX Runtime with io-binding, PyTorch in inference mode, TF eager.

The layers run twice: every library in this one process, taking turns, and
each library alone in a process of its own, as a user runs one, the processes
taking turns layer by layer. A ratio is the less favourable of the two. Each
turn of a library's own process is measured while the cores compute in
parallel (limits.WholeCores), and again when they stopped during it. Beside
each layer: what tvmsep's call achieves against this machine's peaks
(limits.py), so it is clear how far each kernel is from the physical limit.

Layers: the public list (MobileNetV1, MobileNetV2, batch 8, rate 2,
multiplier 2), layers of other networks that were never tuned (`unseen`),
and an 8x8x8 layer whose time is almost all per-call overhead. With
`--layers other`, instead, layers of real networks in neither list
(other_layers.py), to check that the speed carries over to layers nobody listed.

    python benchmarks/peers.py [--repeats 200] [--threads 2] [--only v1_03,v2_01] [--epilogue] [--no-tf]
                               [--layers listed|other]

With `--epilogue` every implementation computes relu6(conv + bias), as a
MobileNet block does: tvmsep with its fused epilogue (`bias=`, `activation=`),
ONNX Runtime with the bias in its Conv and a Clip after it (which its graph
optimizer fuses), the others as their users write it.

Writes benchmarks/results/cpu-<mcpu>[-other][-epilogue].md and a plot of the ratios
beside it (.png), and prints the table.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import dataclasses
import datetime
import functools
import json
import os
import platform
import random
import statistics
import subprocess
import sys
import traceback
from pathlib import Path
from typing import Any

import numpy as np

import tvmsep
from tvmsep import build, runtime
from tvmsep.networks import Layer, network
from tvmsep.reference import reference_for, scaled_error
from tvmsep.spec import Workload
from tvmsep.target import host_target
from tvmsep.verdicts import log_folders, read_verdicts, target_folder_name

from alignment import array_at
from limits import (WholeCores, compulsory_bytes, copy_bandwidth_gbs, fma_peak_gflops, median_ms_in_turns,
                    wait_until_quiet)
from other_layers import OTHER_LAYERS

# Each library and the columns it times. A library's columns share its process when it runs alone.
LIBRARIES = {"tvmsep": ("tvmsep", "tvmsep_out", "tvmsep_hand", "tvmsep_off_line", "tvmsep_layer"),
             "litert": ("litert", "litert_invoke"), "openvino": ("openvino",), "ort": ("ort",),
             "torch": ("torch", "torch_cl"), "tf": ("tf",)}
PEERS = tuple(column for library, columns in LIBRARIES.items() if library != "tvmsep" for column in columns)
# "Best peer" is the fastest of these. LiteRT counts as its invoke alone, the input already in the
# interpreter's buffer (as a pipeline that writes into `interpreter.tensor(i)()` has it): its strongest form.
BASELINES = ("litert", "litert_invoke", "openvino", "ort", "torch", "torch_cl")
NAMES = {"litert": "LiteRT (XNNPACK) set/invoke/get", "litert_invoke": "LiteRT (XNNPACK) invoke",
         "openvino": "OpenVINO", "ort": "ONNX Runtime", "torch": "PyTorch NCHW", "torch_cl": "PyTorch channels_last",
         "tf": "TensorFlow"}
PEER_TOLERANCE = 1e-3  # of the output's scale: the peers sum in other orders, some with FMA and some without
# Every library gets its inputs on a cache line, as the allocators of tvmsep's results, torch, TF and
# LiteRT place them; tvmsep_off_line is tvmsep's call on an input this far past one, where numpy
# puts most large arrays (benchmarks/alignment.py times what that costs a kernel).
OFF_LINE_BYTES = 16
# A measurement made while the cores were not whole (limits.WholeCores) is made again, this many
# times at most (`_on_whole_cores`).
ATTEMPTS = 4
TINY = Layer("tiny_8x8x8", 1, 8, 8, 1, 8)  # a kernel of well under a microsecond: the call is the cost
GROUPS = {"v1": "MobileNetV1", "v2": "MobileNetV2", "extra": "batch 8 / rate 2 / multiplier 2",
          "unseen": "other networks, never tuned", "tiny": "8x8x8, per-call overhead",
          "other": "real networks' layers in neither list"}


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
    return call, lambda: y.transpose(0, 2, 3, 1)


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
    return call, lambda: result["y"].numpy().transpose(0, 2, 3, 1)


def _tf_layer(layer: Layer, f, p, bias):
    """The layer as TF's own ops (NHWC), with the epilogue as Keras writes it."""
    import tensorflow as tf
    ft = tf.constant(f)
    pt = None if p is None else tf.constant(p)
    bt = None if bias is None else tf.constant(bias)
    strides, rate = layer.strides, [layer.rate, layer.rate]

    def apply(x):
        if pt is None:
            y = tf.nn.depthwise_conv2d(x, ft, strides, layer.padding, dilations=rate)
        else:
            y = tf.nn.separable_conv2d(x, ft, pt, strides, layer.padding, dilations=rate)
        return y if bt is None else tf.nn.relu6(tf.nn.bias_add(y, bt))
    return apply


def _tf(layer: Layer, wl: Workload, x, f, p, bias):
    import tensorflow as tf
    xt, apply = tf.constant(x), _tf_layer(layer, f, p, bias)
    result = {}

    def call():
        result["y"] = apply(xt)
    return call, lambda: result["y"].numpy()


def _litert(layer: Layer, wl: Workload, x, f, p, bias, threads: int):
    """TF's op converted to a LiteRT model (weights as constants, as a converted Keras model has
    them), run by the interpreter with its default XNNPACK delegate: (set, invoke and get; invoke
    alone, on the input the other left in the interpreter)."""
    import tensorflow as tf
    from ai_edge_litert.interpreter import Interpreter

    fn = tf.function(_tf_layer(layer, f, p, bias), input_signature=[tf.TensorSpec(x.shape, tf.float32)])
    model = tf.lite.TFLiteConverter.from_concrete_functions([fn.get_concrete_function()], fn).convert()
    interpreter = Interpreter(model_content=model, num_threads=threads)
    interpreter.allocate_tensors()
    source, sink = interpreter.get_input_details()[0]["index"], interpreter.get_output_details()[0]["index"]
    writers = [op["op_name"] for op in interpreter._get_ops_details() if sink in op["outputs"]]
    if "DELEGATE" not in writers:
        raise RuntimeError(f"LiteRT's XNNPACK delegate did not take {layer.name} (output written by {writers})")

    def call():
        interpreter.set_tensor(source, x)
        interpreter.invoke()
        return interpreter.get_tensor(sink)
    return (call, call), (interpreter.invoke, lambda: interpreter.get_tensor(sink))


def _openvino(layer: Layer, wl: Workload, x, f, p, bias, threads: int):
    """The layer in OpenVINO's opset, NHWC in and out (transposes around its NCHW convolutions, which
    the CPU plugin folds into its layouts), compiled in f32 for latency."""
    import openvino as ov
    from openvino import opset13 as ops

    top, left, bottom, right = _pads(wl)
    source = ops.parameter(list(x.shape), np.float32, name="x")
    y = ops.transpose(source, ops.constant(np.array([0, 3, 1, 2], np.int64)))
    weights = np.ascontiguousarray(f.transpose(2, 3, 0, 1)[:, :, None])  # [C, M, 1, KH, KW]: channel k*M+q
    y = ops.group_convolution(y, ops.constant(weights), [wl.stride_h, wl.stride_w], [top, left], [bottom, right],
                              [wl.dilation_h, wl.dilation_w])
    if p is not None:
        y = ops.convolution(y, ops.constant(np.ascontiguousarray(p[0, 0].T[:, :, None, None])), [1, 1], [0, 0],
                            [0, 0], [1, 1])
    if bias is not None:
        y = ops.clamp(ops.add(y, ops.constant(bias.reshape(1, -1, 1, 1))), 0.0, 6.0)
    y = ops.transpose(y, ops.constant(np.array([0, 2, 3, 1], np.int64)))
    compiled = ov.Core().compile_model(ov.Model([y], [source]), "CPU", {
        "INFERENCE_PRECISION_HINT": "f32", "INFERENCE_NUM_THREADS": threads, "PERFORMANCE_HINT": "LATENCY"})
    precision = compiled.get_property("INFERENCE_PRECISION_HINT")
    if precision != ov.Type.f32:
        raise RuntimeError(f"OpenVINO ignored the f32 precision hint: it compiled for {precision}")
    request = compiled.create_infer_request()

    def call():
        return request.infer({0: x}, share_inputs=True, share_outputs=True)[0]
    return call, call


def _implementations(layer: Layer, op: str, threads: int, rng, libraries, epilogue: bool):
    """The columns of `libraries` for one layer, each checked against the float64 reference.
    `epilogue`: relu6(conv + bias) everywhere, with a fresh bias. Every process draws the same
    inputs (the same seed, the same layers in the same order)."""
    wl = layer.workload(op)
    x = array_at(rng.standard_normal(wl.input_shape, dtype=np.float32), 0)
    f = array_at(rng.standard_normal(wl.filter_shape, dtype=np.float32), 0)
    p = array_at(rng.standard_normal(wl.pointwise_shape, dtype=np.float32), 0) if op == "separable" else None
    bias = array_at(rng.standard_normal(wl.out_channels, dtype=np.float32), 0) if epilogue else None
    if epilogue:
        wl = dataclasses.replace(wl, bias=True, activation="relu6")
    inputs = [a for a in (x, f, p, bias) if a is not None]
    x_nchw = array_at(np.ascontiguousarray(x.transpose(0, 3, 1, 2)), 0)
    impls = {}
    if "tvmsep" in libraries:
        # The call as a user writes it: the epilogue's arguments only when there is one.
        filters = (f,) if p is None else (f, p)
        options = (layer.strides, layer.padding, [layer.rate, layer.rate])
        fused = dict(bias=bias, activation=wl.activation) if epilogue else {}
        op_call = tvmsep.depthwise_conv2d if p is None else tvmsep.separable_conv2d
        ours = functools.partial(op_call, x, *filters, *options, **fused)
        out = array_at(np.full(wl.output_shape, np.nan, np.float32), 0)
        hand = runtime.Kernel(wl, build.compile_module(wl, host_target())["main"], "hand-written")
        hand_out = array_at(np.full(wl.output_shape, np.nan, np.float32), 0)
        off_line = functools.partial(op_call, array_at(x, OFF_LINE_BYTES), *filters, *options, **fused)
        # The layer as a network holds it: its weights given once (a separable's packed).
        held = functools.partial(tvmsep.DepthwiseConv2D(f, *options, **fused) if p is None
                                 else tvmsep.SeparableConv2D(f, p, *options, **fused), x)
        impls.update(tvmsep=(ours, ours), tvmsep_out=(functools.partial(ours, out=out), lambda: out),
                     tvmsep_hand=(lambda: hand.run(inputs, hand_out), lambda: hand_out),
                     tvmsep_off_line=(off_line, off_line), tvmsep_layer=(held, held))
    if "litert" in libraries:
        impls["litert"], impls["litert_invoke"] = _litert(layer, wl, x, f, p, bias, threads)
    if "openvino" in libraries:
        impls["openvino"] = _openvino(layer, wl, x, f, p, bias, threads)
    if "ort" in libraries:
        impls["ort"] = _ort(layer, wl, x_nchw, f, p, bias, threads)
    if "torch" in libraries:
        impls["torch"] = _torch(layer, wl, x_nchw, f, p, bias, channels_last=False)
        impls["torch_cl"] = _torch(layer, wl, x_nchw, f, p, bias, channels_last=True)
    if "tf" in libraries:
        impls["tf"] = _tf(layer, wl, x, f, p, bias)
    expected = reference_for(wl, inputs)
    for name, (call, result) in impls.items():
        call()
        error = scaled_error(np.asarray(result(), np.float64), expected)
        if not error <= PEER_TOLERANCE:  # NaN fails too
            raise RuntimeError(f"{name} is off the float64 reference on {layer.name} {op}: error {error:.1e} "
                               "of the output's scale")
    return wl, {name: call for name, (call, _) in impls.items()}


def _schedules() -> str:
    """Which schedules tvmsep's call runs here: the tuning verdicts it reads, or none."""
    target = host_target()
    count = sum(len(read_verdicts(folder)) for folder in log_folders(target))
    source = "`TVMSEP_TUNING_DIR`" if os.environ.get("TVMSEP_TUNING_DIR") else "the shipped logs"
    if not count:
        return f"hand-written alone (no tuning verdicts for `{target_folder_name(target)}` in {source})"
    return f"tuned where {source} hold a verdict ({count} in `{target_folder_name(target)}`), else hand-written"


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
    if layer in OTHER_LAYERS:
        return "other"
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


def _configure(libraries, threads: int) -> None:
    """Each library's thread count, set before its pool starts."""
    os.environ.setdefault("OMP_NUM_THREADS", str(threads))
    os.environ["TVM_NUM_THREADS"] = str(threads)  # read when TVM's pool starts, at the first kernel
    if "torch" in libraries:
        import torch
        torch.set_num_threads(threads)
    if {"tf", "litert"} & set(libraries):  # LiteRT's models are converted by TF
        import tensorflow as tf
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(1)


def _measure(layers: list[Layer], libraries, args) -> dict[str, dict[str, float]]:
    """Median ms per column of `libraries`, all in this process, per "layer op". A check of the
    cores (`_on_whole_cores`) would be no measure here: the libraries' own threads spin beside it."""
    _configure(libraries, args.threads)
    rng = np.random.default_rng(0)
    rows = {}
    for op in ("depthwise", "separable"):
        for layer in layers:
            _, calls = _implementations(layer, op, args.threads, rng, libraries, args.epilogue)
            rows[f"{layer.name} {op}"] = ms = median_ms_in_turns(calls, args.repeats)
            print(f"[{'+'.join(libraries)}] {layer.name} {op}: " + ", ".join(f"{c} {t:.3f}" for c, t in ms.items()),
                  flush=True)
    return rows


def _on_whole_cores(cores: WholeCores, measure, what: str, redone: list[str]) -> dict[str, float]:
    """`measure()` once the cores are whole, made again (up to ATTEMPTS times in all) while they
    were not whole right after it: a stretch on one core's time would have slowed whatever was
    measured then to its one-core speed. `what` is added to `redone` for each measurement made again."""
    for _ in range(ATTEMPTS):
        cores.wait()
        ms = measure()
        if cores.whole():
            break
        redone.append(what)
    return ms


class _LibraryProcess:
    """One library alone in a process of its own (this script with `--serve`), as a user runs it,
    building and timing its columns on request: a JSON request per line on the process's stdin,
    a JSON answer per line back (`_serve`). Each request returns once the process is quiet, its
    thread pools asleep (TVM's spins for a tenth of a second), so that the next process to
    measure has the cores to itself."""

    def __init__(self, library: str, args) -> None:
        self.library = library
        command = [sys.executable, __file__, "--serve", library, "--threads", str(args.threads), "--only", args.only,
                   "--repeats", str(args.repeats), "--layers", args.layers]
        self._process = subprocess.Popen(command + (["--epilogue"] if args.epilogue else []), text=True,
                                         stdin=subprocess.PIPE, stdout=subprocess.PIPE)

    def __enter__(self) -> _LibraryProcess:
        return self

    def __exit__(self, *exc) -> None:
        """Closing its stdin ends the process; one that does not end is killed."""
        self._process.stdin.close()
        try:
            self._process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()

    def prepare(self, layer: Layer, op: str) -> list[str]:
        """Build the library's columns for `layer` (each checked against the reference); their names."""
        return self._ask({"prepare": [layer.name, op]})

    def measure(self) -> dict[str, float]:
        """`_measure`'s row of the layer last prepared: median ms per column."""
        return self._ask({"measure": None})

    def _ask(self, request: dict) -> Any:
        self._process.stdin.write(json.dumps(request) + "\n")
        self._process.stdin.flush()
        line = self._process.stdout.readline()
        if not line:
            raise RuntimeError(f"{self.library}'s process ended (exit code {self._process.wait()}); "
                               "its output is above")
        answer = json.loads(line)
        if "error" in answer:
            raise RuntimeError(f"{self.library}'s process: {answer['error']}")
        wait_until_quiet(self._process.pid)
        return answer["value"]


def _serve(library: str, layers: list[Layer], args) -> int:
    """The body of a `_LibraryProcess`: answer requests until stdin closes. The answers go out on
    what was stdout; whatever the libraries print goes to stderr. Layers come in the order
    `_measure` takes them, so this process draws the same inputs."""
    answers = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)
    _configure([library], args.threads)
    rng = np.random.default_rng(0)
    by_name = {layer.name: layer for layer in layers}
    calls: dict[str, Any] = {}
    for line in sys.stdin:
        request = json.loads(line)
        try:
            if "prepare" in request:
                name, op = request["prepare"]
                calls = {}  # the last layer's, freed before the next one is built
                _, calls = _implementations(by_name[name], op, args.threads, rng, [library], args.epilogue)
                value: Any = list(calls)
            else:
                value = median_ms_in_turns(calls, args.repeats)
        except Exception as e:
            traceback.print_exc()
            print(json.dumps({"error": f"{type(e).__name__}: {e}"}), file=answers, flush=True)
            return 1
        print(json.dumps({"value": value}), file=answers, flush=True)
    return 0


def _measure_alone(layers: list[Layer], libraries, args, cores: WholeCores,
                   redone: list[str]) -> dict[str, dict[str, float]]:
    """`_measure` with each library alone in a process of its own. The processes take turns layer
    by layer, in a random order each time, so that a slow minute of the machine hits the libraries
    of a layer or two alike, not every layer of whichever library had the machine then; within its
    turn a library's columns take turns as in `_measure`, its thread pools kept awake as a user's
    loop keeps them (after its cores idled, this machine runs the next milliseconds at half speed,
    whichever library runs then). Each turn is made on whole cores (`_on_whole_cores`), checked by
    this process while the others wait."""
    rows = {}
    shuffle = random.Random(0).shuffle
    with contextlib.ExitStack() as stack:
        processes = [stack.enter_context(_LibraryProcess(library, args)) for library in libraries]
        for op in ("depthwise", "separable"):
            for layer in layers:
                for process in processes:
                    process.prepare(layer, op)
                shuffle(processes)
                rows[f"{layer.name} {op}"] = ms = {}
                for process in processes:
                    ms.update(_on_whole_cores(cores, process.measure, process.library, redone))
                print(f"[alone] {layer.name} {op}: " + ", ".join(f"{c} {t:.3f}" for c, t in ms.items()), flush=True)
    return rows


def _ratio(ms: dict[str, float], peers, ours: str = "tvmsep") -> float:
    return min(ms[p] for p in peers) / ms[ours]


def _versions(libraries) -> list[str]:
    modules = {"tvmsep": "tvmsep", "litert": "ai_edge_litert", "openvino": "openvino", "ort": "onnxruntime",
               "torch": "torch", "tf": "tensorflow"}
    from importlib.metadata import PackageNotFoundError, version
    distributions = {"ai_edge_litert": "ai-edge-litert", "tensorflow": "tensorflow-cpu"}
    found = []
    for library in libraries:
        module = modules[library]
        try:
            found.append(f"{module} {version(distributions.get(module, module))}")
        except PackageNotFoundError:
            found.append(f"{module} (version unknown)")
    return found


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=200)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--only", default="", help="comma-separated layer names")
    parser.add_argument("--output", type=Path, default=None)
    parser.add_argument("--tf", action=argparse.BooleanOptionalAction, default=True,
                        help="include TensorFlow (eager) as a peer")
    parser.add_argument("--epilogue", action="store_true", help="every implementation computes relu6(conv + bias)")
    parser.add_argument("--layers", choices=["listed", "other"], default="listed",
                        help="the project's lists and the 8x8x8 layer, or real networks' layers in neither list")
    parser.add_argument("--serve", choices=list(LIBRARIES), help=argparse.SUPPRESS)  # a _LibraryProcess
    args = parser.parse_args()

    listed = network("public") + network("unseen") + [TINY] if args.layers == "listed" else OTHER_LAYERS
    layers = [layer for layer in listed if not args.only or layer.name in args.only.split(",")]
    if args.serve:
        return _serve(args.serve, layers, args)
    libraries = [library for library in LIBRARIES if args.tf or library != "tf"]
    columns = [c for library in libraries for c in LIBRARIES[library]]
    peers = [p for p in PEERS if p in columns]
    baselines = [p for p in BASELINES if p in columns]
    # A peak is the most the machine did: measured before and after, as a neighbour
    # on a shared machine can take a core for the length of one measurement.
    peaks = [(copy_bandwidth_gbs(), fma_peak_gflops())]
    _configure(["tvmsep"], args.threads)  # the checks of the cores start TVM's pool here
    cores, redone = WholeCores(), []
    alone = _measure_alone(layers, libraries, args, cores, redone)  # first, while this process has loaded no library
    shared = _measure(layers, libraries, args)
    peaks.append((copy_bandwidth_gbs(), fma_peak_gflops()))
    bandwidth, gflops = max(b for b, _ in peaks), max(g for _, g in peaks)

    lines = [f"| layer | op | shape | {' | '.join(columns)} | best peer | shared | alone | best peer / tvmsep "
             "| GFLOP/s (of peak) | GB/s (of copy) |", "|" + "---|" * (len(columns) + 9)]
    ratios: dict[tuple[str, str], list[float]] = {}
    per_peer: dict[tuple[str, str], list[float]] = {}
    off_line: dict[str, list[float]] = {}
    layered: dict[str, list[float]] = {}
    plotted: dict[str, list[tuple[str, float]]] = {}
    overhead = []
    overhead_columns = ("tvmsep", "tvmsep_out", "tvmsep_layer", *peers)
    for op in ("depthwise", "separable"):
        for layer in layers:
            key = f"{layer.name} {op}"
            modes = (shared[key], alone[key])
            ratio = min(_ratio(ms, baselines) for ms in modes)  # the less favourable of the two
            best = min(baselines, key=lambda p: min(ms[p] / ms["tvmsep"] for ms in modes))
            ratios.setdefault((op, _group(layer)), []).append(ratio)
            if layer == TINY:
                overhead.append(f"- {op}: " + ", ".join(
                    f"{c} {shared[key][c] * 1e3:.1f} / {alone[key][c] * 1e3:.1f} us"
                    for c in overhead_columns))
            else:
                plotted.setdefault(op, []).append((layer.name, ratio))
                off_line.setdefault(op, []).append(min(_ratio(ms, baselines, "tvmsep_off_line") for ms in modes))
                layered.setdefault(op, []).append(min(_ratio(ms, baselines, "tvmsep_layer") for ms in modes))
                for p in peers:
                    per_peer.setdefault((op, p), []).append(min(ms[p] / ms["tvmsep"] for ms in modes))
            wl = layer.workload(op)
            seconds = max(ms["tvmsep"] for ms in modes) / 1e3
            achieved_gflops, achieved_gbs = wl.flops / seconds / 1e9, compulsory_bytes(wl) / seconds / 1e9
            lines.append(f"| {layer.name} | {op} | {wl.describe().split(' ', 2)[2]} | "
                         + " | ".join(f"{shared[key][c]:.3f} / {alone[key][c]:.3f}" for c in columns)
                         + f" | {best} | {_ratio(modes[0], baselines):.2f}x | {_ratio(modes[1], baselines):.2f}x "
                         + f"| {ratio:.2f}x | {achieved_gflops:.0f} ({achieved_gflops / gflops:.0%}) | "
                         + f"{achieved_gbs:.0f} ({achieved_gbs / bandwidth:.0%}) |")
    summary = ["", f"Geometric mean of the best peer ({', '.join(NAMES[p] for p in baselines)}) over tvmsep, "
                   "the less favourable of the shared-process and own-process runs per layer:", ""]
    for (op, group), values in ratios.items():
        summary.append(f"- {op}, {GROUPS[group]} ({len(values)} layers): {_geomean(values):.2f}x "
                       f"(lowest {min(values):.2f}x)")
    for op in ("depthwise", "separable"):
        values = [r for (o, group), rs in ratios.items() if o == op and group != "tiny" for r in rs]
        if values:
            summary.append(f"- {op}, all layers above ({len(values)}): {_geomean(values):.2f}x "
                           f"(lowest {min(values):.2f}x; tvmsep fastest on {sum(v > 1 for v in values)})")
    for op, values in off_line.items():
        summary.append(f"- {op}, tvmsep on an input {OFF_LINE_BYTES} bytes past a cache line "
                       f"(`tvmsep_off_line`): {_geomean(values):.2f}x (lowest {min(values):.2f}x)")
    for op, values in layered.items():
        summary.append(f"- {op}, tvmsep's layer of held weights (`tvmsep_layer`): {_geomean(values):.2f}x "
                       f"(lowest {min(values):.2f}x; tvmsep fastest on {sum(v > 1 for v in values)})")
    summary += ["", "Geometric mean of each peer over tvmsep (all layers above, the less favourable run):", ""]
    for (op, p), values in per_peer.items():
        summary.append(f"- {op}, {NAMES[p]}: {_geomean(values):.2f}x (lowest {min(values):.2f}x)")
    if overhead:
        summary += ["", "Per-call overhead (median time of the 8x8x8 layer, whose kernel takes well under "
                        "a microsecond; shared / alone):", "", *overhead]
    what = "relu6(conv + bias), " if args.epilogue else ""
    header = [f"# tvmsep vs peers, {what}fp32, {args.threads} threads", "",
              f"- machine: {_machine()}", f"- date: {datetime.date.today()}",
              f"- versions: {', '.join(_versions(libraries))}",
              f"- tvmsep's schedules: {_schedules()}",
              f"- command: `python benchmarks/peers.py {' '.join(sys.argv[1:])}`",
              "- median ms per call, `shared / alone`: first each library alone in a process of its own, the "
              "processes taking turns layer by layer in a random order, then all in one process; within a "
              "process the implementations take turns in blocks of 25 calls (the first 5 not counted) in a "
              "random order each round. Each library's turn in its own process starts once the cores compute in "
              "parallel (`limits.WholeCores`: this virtual machine's cores at times run at one core's rate "
              "together) and is made again when they did not right after it "
              f"({len(redone)} of {2 * len(layers) * len(libraries)} turns made again"
              f"{': ' + ', '.join(f'{n} {c}' for n, c in collections.Counter(redone).items()) if redone else ''}). "
              "A ratio is the less favourable of the two "
              "runs. tvmsep is NHWC numpy in/out, called as a user writes it, `tvmsep_out` passes `out=` (on a "
              "line); `litert` is set_tensor, invoke "
              "and get_tensor, `litert_invoke` invoke alone; every library's inputs start on a cache line, "
              "as the allocators of torch, TF, LiteRT and tvmsep's own results place them, and "
              f"`tvmsep_off_line` is tvmsep's call on an input {OFF_LINE_BYTES} bytes past one, where numpy puts "
              "most large arrays; `tvmsep_layer` is `tvmsep.DepthwiseConv2D` or `SeparableConv2D`, made once "
              "from the weights (a separable's packed where the call's GEMM copies them), called with the input "
              "alone, as the peers' models are; `tvmsep_hand` (with `out=`) is "
              "the hand-written schedule, which differs from tvmsep's where a tuned one is shipped; LiteRT and "
              "OpenVINO get NHWC, ORT and torch NCHW (torch_cl: channels_last), TF NHWC eager. Every "
              "implementation was checked against the float64 reference first.",
              f"- this machine's peaks, the higher of two measurements, before and after the layers: FMA "
              f"throughput {gflops:.0f} GFLOP/s, copy bandwidth {bandwidth:.0f} GB/s (`benchmarks/limits.py`); "
              "tvmsep's GFLOP/s and GB/s are those of its user-facing call in the slower of its two runs, "
              "counting each tensor read or written once (so a layer whose tensors stay in cache can pass "
              "the copy bandwidth, which is measured on 512 MiB)", ""]
    report = "\n".join(header + lines + summary) + "\n"
    print("\n".join(lines + summary))
    suffix = ("-other" if args.layers == "other" else "") + ("-epilogue" if args.epilogue else "")
    output = args.output or Path(__file__).parent / "results" / f"cpu-{host_target().attrs['mcpu']}{suffix}.md"
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(report)
    print(f"\nwrote {output}")
    if plotted:
        _plot(plotted, f"best peer / tvmsep, {what}fp32, {args.threads} threads, {_machine()}",
              output.with_suffix(".png"))
        print(f"wrote {output.with_suffix('.png')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
