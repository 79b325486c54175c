"""Check and time tvmsep's CUDA kernels on a GPU, with the TVM runtime alone.

Two steps, on two machines:

    # where TVM's compiler is (nvcc is enough, no GPU): two bundles and a
    # runtime-only TVM for the GPU machine's Python
    python benchmarks/gpu_check.py prepare --arch sm_90 --out gpu_run
    # on the GPU machine: no compiler, no package index
    TVM_USE_RUNTIME_LIB=1 PYTHONPATH=gpu_run/site:. python benchmarks/gpu_check.py check gpu_run

`check` does, in one process:
1. every kernel of the configuration matrix (tvmsep.matrix) against the
   float64 numpy reference, with fresh random inputs, through the public
   bundle API five ways: numpy in and out; numpy into a NaN-poisoned numpy
   `out=`; torch tensors on the device (the result must be a torch tensor on
   the same device); a NaN-poisoned torch `out=`; misaligned torch views
   launched on a side stream;
2. every public depthwise layer at batch 1 and 32, fp32 and fp16, NHWC and
   NCHW: checked against PyTorch's float64 convolution on the device, then
   timed against `torch.nn.functional.conv2d(groups=C)` (cuDNN) in the same
   memory format. Device time: TVM's time_evaluator against a CUDA graph of
   cuDNN launches; call time: CUDA events around back-to-back public calls;
   medians of repeats. Achieved bandwidth is compulsory bytes over device
   time, against a large device-to-device copy measured in the same run.
It writes a markdown table and the raw rows (JSON) to --results and exits 1
if any check failed. With an llvm bundle (prepare --target llvm) the same
checks run on the CPU; the tests use that.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import importlib.metadata
import json
import math
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path
from typing import Any, Callable

import numpy as np

BATCHES = (1, 32)
DTYPES = ("float32", "float16")
# Not needed to run compiled modules; kept off the GPU machine to stay small.
_RUNTIME_SKIP = ("libtvm_compiler.so", "3rdparty", "src", "include", "__pycache__")


# ---------------------------------------------------------------------------------------------- prepare

def prepare(args: argparse.Namespace) -> int:
    from tvmsep.export import compile_bundle
    from tvmsep.matrix import matrix

    target = "llvm" if args.target == "llvm" else {"kind": "cuda", "arch": args.arch}
    out = Path(args.out)
    compile_bundle(matrix(), target, out / "matrix")
    compile_bundle(public_layers(args.batches, args.layers), target, out / "layers")
    if args.runtime:
        pack_runtime(out / "site", args.python_version)
    return 0


def public_layers(batches: tuple[int, ...] = BATCHES, only: str | None = None) -> list[tuple[str, Any]]:
    """The public list's depthwise layers in every batch, dtype and layout; each workload once."""
    from tvmsep.networks import network
    from tvmsep.spec import LAYOUTS

    layers, seen = [], set()
    for layer in network("public"):
        if only and layer.name not in only.split(","):
            continue
        for batch in batches:
            for dtype in DTYPES:
                for layout in LAYOUTS:
                    wl = dataclasses.replace(layer, batch=batch, dtype=dtype, layout=layout).workload("depthwise")
                    if wl not in seen:
                        seen.add(wl)
                        layers.append((f"{layer.name}-b{batch}-{dtype}-{layout}", wl))
    return layers


def pack_runtime(site: Path, python_version: str) -> None:
    """The installed tvm package without its compiler, plus wheels for the GPU machine's Python."""
    import tvm

    if site.exists():
        shutil.rmtree(site)
    shutil.copytree(Path(tvm.__file__).parent, site / "tvm", ignore=shutil.ignore_patterns(*_RUNTIME_SKIP))
    wanted = [f"apache-tvm-ffi=={importlib.metadata.version('apache-tvm-ffi')}",
              f"psutil=={importlib.metadata.version('psutil')}", "typing-extensions"]
    with tempfile.TemporaryDirectory() as wheels:
        subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
                        "--python-version", python_version, "--platform", "manylinux2014_x86_64",
                        "--platform", "manylinux_2_17_x86_64", "--platform", "manylinux_2_28_x86_64",
                        "--dest", wheels, *wanted], check=True)
        for wheel in sorted(Path(wheels).glob("*.whl")):
            with zipfile.ZipFile(wheel) as z:
                z.extractall(site)
            print(f"unpacked {wheel.name}")
    size = sum(f.stat().st_size for f in site.rglob("*") if f.is_file())
    print(f"runtime for Python {python_version} in {site}: {size / 2**20:.0f} MiB")


# ------------------------------------------------------------------------------------------------ check

def check(args: argparse.Namespace) -> int:
    import torch
    import tvm

    import tvmsep

    from tvmsep.bundle import BundleError

    root = Path(args.bundles)
    try:
        matrix_bundle, layer_bundle = tvmsep.load(root / "matrix"), tvmsep.load(root / "layers")
    except BundleError as e:
        print(f"FAIL: bundle refused: {e}")
        return 1
    on_gpu = matrix_bundle.manifest.target_kind == "cuda"
    device = torch.device("cuda" if on_gpu else "cpu")
    compiler = any("libtvm_compiler" in line for line in open("/proc/self/maps"))
    name = torch.cuda.get_device_name() if on_gpu else "CPU"
    print(f"device: {name}; torch {torch.__version__}; TVM {tvm.__version__}, compiler loaded: {compiler}")
    failures: list[str] = []
    timer = Timer(device, args.repeats)
    rng = np.random.default_rng()

    for entry_name, kernel in matrix_bundle.kernels.items():
        try:
            errors = check_matrix_entry(matrix_bundle, entry_name, device, rng)
        except Exception as e:  # a kernel that raises is one failed check; the others still run
            errors = {f"raised {type(e).__name__}: {e}": math.inf}
        worst = max(errors.values())
        status = "ok" if worst <= _tolerance(kernel.workload.dtype) else "FAIL"
        if status == "FAIL":
            failures.append(f"{entry_name}: {errors}")
        print(f"matrix {entry_name:44} {status} (largest error {worst:.1e})")

    copy_gbs = timer.copy_bandwidth_gbs()
    print(f"device copy bandwidth: {copy_gbs:.0f} GB/s (read + write)")
    rows = []
    for entry_name, kernel in layer_bundle.kernels.items():
        try:
            row = time_layer(layer_bundle, entry_name, kernel, device, rng, timer)
        except Exception as e:
            failures.append(f"{entry_name}: raised {type(e).__name__}: {e}")
            print(f"layer {entry_name:36} FAIL: {type(e).__name__}: {e}")
            continue
        row["gbs_of_copy"] = row["gbs"] / copy_gbs
        if not row["error"] <= _tolerance(kernel.workload.dtype):
            failures.append(f"{entry_name}: error {row['error']:.2e}")
        rows.append(row)
        print(f"layer {entry_name:36} tvmsep {row['tvmsep_us']:9.2f} us  peer {row['torch_us']:9.2f} us  "
              f"x{row['speedup']:.2f}  call {row['tvmsep_call_us']:8.2f} / {row['torch_call_us']:8.2f} us  "
              f"{row['gbs']:6.0f} GB/s  err {row['error']:.1e}")

    results = Path(args.results)
    results.mkdir(parents=True, exist_ok=True)
    slug = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")
    (results / f"gpu-{slug}.json").write_text(json.dumps({"device": name, "rows": rows}, indent=1))
    report = render(name, "cuDNN" if on_gpu else "PyTorch", copy_gbs, len(matrix_bundle.kernels), rows,
                    failures, compiler)
    (results / f"gpu-{slug}.md").write_text(report)
    print(report)
    return 1 if failures else 0


def _tolerance(dtype: str) -> float:
    from tvmsep.reference import TOLERANCE
    return TOLERANCE[dtype]


def random_inputs(wl: Any, rng: np.random.Generator) -> list[np.ndarray]:
    return [rng.standard_normal(shape).astype(wl.dtype) for shape in wl.arg_shapes]


def public_call(bundle: Any, wl: Any) -> Callable[..., Any]:
    """fn(*arrays, out=None): the bundle's public op with arguments that resolve to `wl`."""
    strides, padding, rate, layout = wl.call_arguments()
    op = bundle.depthwise_conv2d if wl.op == "depthwise" else bundle.separable_conv2d
    return lambda *arrays, out=None: op(*arrays, strides, padding, rate, data_format=layout, out=out)


def check_matrix_entry(bundle: Any, entry_name: str, device: Any, rng: np.random.Generator) -> dict[str, float]:
    """Errors (over the output's scale) of each way of calling; inf for a wrong type, device or NaN."""
    import torch

    from tvmsep.reference import reference_for, scaled_error

    wl = bundle.kernel(entry_name).workload
    arrays = random_inputs(wl, rng)
    reference = reference_for(wl, arrays)
    call = lambda *arrays, out=None: bundle.run(entry_name, *arrays, out=out)  # noqa: E731  the public op
    errors = {"numpy": scaled_error(call(*arrays), reference)}
    poisoned = np.full(wl.output_shape, np.nan, wl.dtype)
    call(*arrays, out=poisoned)
    errors["numpy out="] = scaled_error(poisoned, reference)

    tensors = [torch.from_numpy(a).to(device) for a in arrays]
    result = call(*tensors)
    same_place = isinstance(result, torch.Tensor) and result.device == tensors[0].device
    errors["torch"] = scaled_error(result.cpu().numpy(), reference) if same_place else math.inf
    poisoned = torch.full(wl.output_shape, math.nan, dtype=tensors[0].dtype, device=device)
    call(*tensors, out=poisoned)
    errors["torch out="] = scaled_error(poisoned.cpu().numpy(), reference)

    views = [_misaligned_copy(t) for t in tensors]
    side = torch.cuda.Stream() if device.type == "cuda" else None
    with torch.cuda.stream(side) if side is not None else contextlib.nullcontext():
        result = call(*views)
    if side is not None:
        side.synchronize()
    errors["misaligned, side stream"] = scaled_error(result.cpu().numpy(), reference)
    return errors


def _misaligned_copy(t: Any) -> Any:
    """`t`'s values in a view one element past an aligned allocation."""
    buffer = t.new_empty(t.numel() + 1)
    view = buffer[1:].view(t.shape)
    view.copy_(t)
    return view


class Timer:
    """Medians of repeated timings; CUDA events on a GPU, the host clock on the CPU."""

    def __init__(self, device: Any, repeats: int) -> None:
        import torch
        self.torch, self.device, self.repeats = torch, device, repeats
        self.on_gpu = device.type == "cuda"

    def seconds(self, fn: Callable[[], Any], number: int) -> float:
        """Median over repeats of (time of `number` back-to-back calls) / number."""
        torch = self.torch
        fn()
        times = []
        for _ in range(self.repeats):
            if self.on_gpu:
                start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                for _ in range(number):
                    fn()
                stop.record()
                stop.synchronize()
                times.append(start.elapsed_time(stop) / 1e3 / number)
            else:
                begin = time.perf_counter()
                for _ in range(number):
                    fn()
                times.append((time.perf_counter() - begin) / number)
        return statistics.median(times)

    def graph_seconds(self, fn: Callable[[], Any], number: int) -> float:
        """Device time of `fn`: replays of a CUDA graph of `number` calls (the host loop on the CPU)."""
        torch = self.torch
        if not self.on_gpu:
            return self.seconds(fn, number)
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):  # warm up (cuDNN picks its algorithm) off the capture
            for _ in range(3):
                fn()
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            for _ in range(number):
                fn()
        return self.seconds(graph.replay, 1) / number

    def number_for(self, fn: Callable[[], Any], budget_s: float = 0.01) -> int:
        """How many back-to-back calls fill about `budget_s`."""
        one = self.seconds(fn, 1)
        return int(min(max(budget_s / max(one, 1e-7), 3), 200))

    def copy_bandwidth_gbs(self) -> float:
        torch = self.torch
        size = 2**28 if self.on_gpu else 2**24  # floats: 1 GiB on a GPU
        src = torch.rand(size, device=self.device)
        dst = torch.empty_like(src)
        return 2 * src.numel() * 4 / self.seconds(lambda: dst.copy_(src), 5) / 1e9


def time_layer(bundle: Any, entry_name: str, kernel: Any, device: Any, rng: np.random.Generator,
               timer: Timer) -> dict[str, Any]:
    import torch
    import torch.nn.functional as F
    import tvm_ffi

    from tvmsep.reference import scaled_error

    wl = kernel.workload
    x, f = (torch.from_numpy(a).to(device) for a in random_inputs(wl, rng))
    nchw = x if wl.layout == "NCHW" else x.permute(0, 3, 1, 2)
    weight = f.permute(2, 3, 0, 1).reshape(wl.mid_channels, 1, wl.kernel_h, wl.kernel_w)
    fmt = torch.channels_last if wl.layout == "NHWC" else torch.contiguous_format
    torch_x = nchw.contiguous(memory_format=fmt)
    conv = dict(stride=(wl.stride_h, wl.stride_w), dilation=(wl.dilation_h, wl.dilation_w), groups=wl.in_channels)

    # Correct first: against PyTorch's float64 convolution, with TF's asymmetric pads.
    padded = F.pad(nchw.double(), (wl.pad_left, wl.pad_right, wl.pad_top, wl.pad_bottom))
    reference = F.conv2d(padded, weight.double(), **conv)
    if wl.layout == "NHWC":
        reference = reference.permute(0, 2, 3, 1)
    call = public_call(bundle, wl)
    out = torch.full(wl.output_shape, math.nan, dtype=x.dtype, device=device)
    call(x, f, out=out)
    error = scaled_error(out.cpu().numpy(), reference.cpu().numpy())

    # cuDNN pads symmetrically; the larger of TF's two pads does the same work (same output size).
    pads = (max(wl.pad_top, wl.pad_bottom), max(wl.pad_left, wl.pad_right))
    peer = lambda: F.conv2d(torch_x, weight, padding=pads, **conv)  # noqa: E731
    args = [tvm_ffi.from_dlpack(t) for t in (x, f, out)]
    number = timer.number_for(lambda: call(x, f, out=out))
    evaluator = bundle.module.time_evaluator(bundle.function_name(entry_name), kernel.device,
                                             number=number, repeat=timer.repeats)
    tvmsep_s = statistics.median(evaluator(*args).results)
    torch_s = timer.graph_seconds(peer, number)
    nbytes = (math.prod(wl.input_shape) + math.prod(wl.filter_shape) + math.prod(wl.output_shape)) \
        * np.dtype(wl.dtype).itemsize
    return {
        "layer": entry_name, "workload": wl.describe(), "batch": wl.batch, "dtype": wl.dtype, "layout": wl.layout,
        "tvmsep_us": tvmsep_s * 1e6, "torch_us": torch_s * 1e6, "speedup": torch_s / tvmsep_s,
        "tvmsep_call_us": timer.seconds(lambda: call(x, f), number) * 1e6,
        "torch_call_us": timer.seconds(peer, number) * 1e6,
        "gbs": nbytes / tvmsep_s / 1e9, "error": error,
    }


def geomean(values: list[float]) -> float:
    return statistics.geometric_mean(values) if values else math.nan


def render(name: str, peer: str, copy_gbs: float, matrix_size: int, rows: list[dict], failures: list[str],
           compiler: bool) -> str:
    lines = [f"# tvmsep kernels on {name}", "",
             f"- date: {datetime.date.today()}; `benchmarks/gpu_check.py check`, TVM runtime only "
             f"(compiler loaded: {compiler})",
             f"- matrix: {matrix_size} configurations against the float64 reference, 5 ways of calling each; "
             f"failures: {len(failures)}",
             f"- device copy bandwidth {copy_gbs:.0f} GB/s (a large copy on the device, read + write)",
             f"- device us: TVM time_evaluator (tvmsep) and a CUDA graph of {peer} launches (PyTorch "
             "`conv2d(groups=C)`, same memory format), medians; call us: CUDA events around back-to-back "
             f"user-facing calls; speed-up = {peer} / tvmsep device time", ""]
    for batch in sorted({r["batch"] for r in rows}):
        group = [r for r in rows if r["batch"] == batch]
        lines.append(f"- batch {batch}: geometric-mean speed-up over {peer} "
                     f"{geomean([r['speedup'] for r in group]):.2f}x over {len(group)} kernels; slower: "
                     + (", ".join(r["layer"] for r in group if r["speedup"] < 1) or "none"))
    lines += ["", f"| layer | workload | tvmsep us | {peer} us | speed-up | tvmsep call us | torch call us "
              "| GB/s (of copy) | error |", "|---|---|---|---|---|---|---|---|---|"]
    lines += [f"| {r['layer']} | {r['workload']} | {r['tvmsep_us']:.2f} | {r['torch_us']:.2f} | {r['speedup']:.2f}x | "
              f"{r['tvmsep_call_us']:.1f} | {r['torch_call_us']:.1f} | {r['gbs']:.0f} ({r['gbs_of_copy']:.0%}) | "
              f"{r['error']:.1e} |" for r in rows]
    if failures:
        lines += ["", "## Failures", *(f"- {f}" for f in failures)]
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="step", required=True)
    p = sub.add_parser("prepare", help="compile the bundles (and pack a runtime) where the compiler is")
    p.add_argument("--out", default="gpu_run")
    p.add_argument("--arch", default="sm_90")
    p.add_argument("--target", choices=("cuda", "llvm"), default="cuda")
    p.add_argument("--batches", type=lambda s: tuple(int(b) for b in s.split(",")), default=BATCHES)
    p.add_argument("--layers", default=None, help="comma-separated public layer names (default: all)")
    p.add_argument("--python-version", default="3.12", help="the GPU machine's Python")
    p.add_argument("--no-runtime", dest="runtime", action="store_false", help="do not pack a runtime-only TVM")
    c = sub.add_parser("check", help="run the checks and timings where the GPU is")
    c.add_argument("bundles", help="the folder `prepare` wrote")
    c.add_argument("--results", default="benchmarks/results")
    c.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    return prepare(args) if args.step == "prepare" else check(args)


if __name__ == "__main__":
    sys.exit(main())
