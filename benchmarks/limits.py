"""This machine's physical limits, measured: FMA throughput and copy bandwidth.

The FLOP/s peak is a TVM kernel that does nothing but independent vector FMAs
on registers (one broadcast load per CHAINS FMAs), one task per core. BLAS
libraries are no measure of it here: OpenBLAS and MKL both take AVX2 paths on
this AMD CPU and reach about half of it; their GEMM speed is reported beside it.
"""

from __future__ import annotations

import math
import random
import statistics
import time

import numpy as np
import tvm
from tvm import s_tir, te

from tvmsep.build import compile_scheduled
from tvmsep.schedules.llvm import vector_lanes
from tvmsep.spec import Workload
from tvmsep.target import host_target
from tvmsep.threads import usable_cores

__all__ = ["median_seconds", "median_ms_in_turns", "copy_bandwidth_gbs", "fma_peak_gflops", "blas_gflops", "copy_ms",
           "compulsory_bytes"]

# Independent accumulators per core: FMA latency (4 cycles) x 2 pipes, plus slack.
CHAINS = 12
STEPS = 1 << 15


def median_seconds(fn, repeats: int = 15) -> float:
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def median_ms_in_turns(calls: dict, repeats: int, block: int = 25, settle: int = 5) -> dict[str, float]:
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


def copy_bandwidth_gbs() -> float:
    """Copy of a 512 MiB array: bytes read plus bytes written per second."""
    src = np.ones(128 * 2**20, np.float32)
    dst = np.empty_like(src)
    return 2 * src.nbytes / median_seconds(lambda: np.copyto(dst, src), 7) / 1e9


def fma_peak_gflops() -> float:
    """out[p, c, :] = sum_r x[p, c, :] * w[r]: CHAINS vector FMA chains per core."""
    target = host_target()
    cores, lanes = usable_cores(), vector_lanes(target, "float32")
    x = te.placeholder((cores, CHAINS, lanes), "float32", name="x")
    w = te.placeholder((STEPS,), "float32", name="w")
    r = te.reduce_axis((0, STEPS), name="r")
    out = te.compute(x.shape, lambda p, c, v: te.sum(x[p, c, v] * w[r], axis=r), name="out")
    sch = s_tir.Schedule(te.create_prim_func([x, w, out]))
    block = sch.get_sblock("out")
    p, c, v, step = sch.get_loops(block)
    sch.reorder(p, step, c, v)
    sch.parallel(p)
    sch.unroll(c)
    sch.vectorize(v)
    store = sch.cache_write(block, 0, "local")
    sch.reverse_compute_at(store, p)
    init = sch.decompose_reduction(block, step)
    for b in (init, store):
        *_, chain, lane = sch.get_loops(b)
        sch.unroll(chain)
        sch.vectorize(lane)
    kernel = compile_scheduled(sch.mod, target)
    dev = tvm.cpu()
    args = [tvm.runtime.tensor(np.random.rand(*shape).astype("float32"), dev)
            for shape in ((cores, CHAINS, lanes), (STEPS,), (cores, CHAINS, lanes))]
    # The fastest repeat: a peak is what the cores can do, and on a shared
    # machine a repeat that lost a core to a neighbour runs at half speed.
    seconds = min(kernel.mod.time_evaluator("main", dev, number=20, repeat=15)(*args).results)
    return 2 * cores * CHAINS * lanes * STEPS / seconds / 1e9


def blas_gflops() -> dict[str, float]:
    """2048^3 float32 GEMM through numpy (OpenBLAS) and PyTorch (MKL), all cores."""
    import torch
    torch.set_num_threads(usable_cores())
    a, b = np.random.rand(2048, 2048).astype(np.float32), np.random.rand(2048, 2048).astype(np.float32)
    ta, tb = torch.from_numpy(a), torch.from_numpy(b)
    return {name: 2 * 2048**3 / median_seconds(fn, 10) / 1e9
            for name, fn in (("numpy", lambda: a @ b), ("torch", lambda: torch.mm(ta, tb)))}


def copy_ms(nbytes: int) -> float:
    """A copy on all cores moving `nbytes` in all (half read, half written)."""
    import torch
    torch.set_num_threads(usable_cores())
    src = torch.ones(max(1, nbytes // 8))
    dst = torch.empty_like(src)
    return median_seconds(lambda: dst.copy_(src), 200) * 1e3


def compulsory_bytes(wl: Workload) -> int:
    """Bytes a kernel must move at the least: each tensor read or written once."""
    item = np.dtype(wl.dtype).itemsize
    shapes = [wl.input_shape, wl.filter_shape, wl.output_shape]
    if wl.op == "separable":
        shapes.append(wl.pointwise_shape)
    return item * sum(math.prod(s) for s in shapes)


if __name__ == "__main__":
    print(f"FMA peak {fma_peak_gflops():.0f} GFLOP/s, copy {copy_bandwidth_gbs():.0f} GB/s, "
          + ", ".join(f"{k} GEMM {v:.0f} GFLOP/s" for k, v in blas_gflops().items()))
