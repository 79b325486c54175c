"""This machine's physical limits, measured: FMA throughput and copy bandwidth.

The FLOP/s peak is a TVM kernel that does nothing but independent vector FMAs
on registers (one broadcast load per CHAINS FMAs), one task per core. BLAS
libraries are no measure of it here: OpenBLAS and MKL both take AVX2 paths on
this AMD CPU and reach about half of it; their GEMM speed is reported beside it.

A virtual machine's cores are not always whole: for seconds at a time its two
cores can compute at one core's rate together (the host runs them on one
physical core, as SMT siblings or taking turns), and a kernel on both then
takes its one-core time. `WholeCores` tells such a stretch by the same FMA
kernel, run briefly, so that a benchmark can measure outside it.
"""

from __future__ import annotations

import contextlib
import math
import os
import random
import statistics
import time
from pathlib import Path

import numpy as np
import tvm
from tvm import s_tir, te

from tvmsep.build import compile_scheduled
from tvmsep.schedules.llvm import vector_lanes
from tvmsep.spec import Workload
from tvmsep.target import host_target
from tvmsep.threads import usable_cores

__all__ = ["median_seconds", "median_ms_in_turns", "copy_bandwidth_gbs", "fma_peak_gflops", "blas_gflops", "copy_ms",
           "compulsory_bytes", "wait_until_quiet", "WholeCores"]

# Independent accumulators per core: FMA latency (4 cycles) x 2 pipes, plus slack.
CHAINS = 12
STEPS = 1 << 15
# A process is quiet once its threads ran for under a tenth of QUIET_WINDOW_S in one such
# window; `wait_until_quiet` waits for that up to QUIET_TIMEOUT_S.
QUIET_WINDOW_S = 0.002
QUIET_TIMEOUT_S = 1.0
# The cores are whole while the FMA kernel on all of them reaches this share of its best rate
# (`WholeCores`); a stretch on one core's time gives half of it.
WHOLE_SHARE = 0.75
# How long `WholeCores.wait` waits for whole cores at most, checking this often.
WHOLE_WAIT_S = 30.0
WHOLE_RECHECK_S = 0.05
# Runs of the FMA kernel (about 0.1 ms each) before a check measures: right after its cores
# idled, this machine runs the first milliseconds of work at half speed, which is no stretch.
WHOLE_WARMUP_RUNS = 200


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
    """The FMA kernel's GFLOP/s on every core: its fastest repeat, as a peak is what the cores can
    do, and on a shared machine a repeat that lost a core to a neighbour runs at half speed."""
    return max(_FmaKernel().gflops(number=20, repeat=15))


class _FmaKernel:
    """out[p, c, :] = sum_r x[p, c, :] * w[r]: CHAINS vector FMA chains per core, one task per core."""

    def __init__(self) -> None:
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
        self._module = compile_scheduled(sch.mod, target).mod
        self._device = tvm.cpu()
        self._args = [tvm.runtime.tensor(np.random.rand(*shape).astype("float32"), self._device)
                      for shape in ((cores, CHAINS, lanes), (STEPS,), (cores, CHAINS, lanes))]
        self._flops = 2 * cores * CHAINS * lanes * STEPS

    def gflops(self, number: int, repeat: int) -> list[float]:
        """GFLOP/s of each of `repeat` timings of `number` runs."""
        timer = self._module.time_evaluator("main", self._device, number=number, repeat=repeat)
        return [self._flops / seconds / 1e9 for seconds in timer(*self._args).results]


class WholeCores:
    """Whether this machine's cores compute in parallel now (module docstring): the FMA kernel on
    every core, run for a few milliseconds, reaches WHOLE_SHARE of the best rate it has reached.
    A check runs once this process is quiet (`wait_until_quiet`: no thread pool of its own spinning
    beside it), measures after WHOLE_WARMUP_RUNS, and leaves it quiet, TVM's workers asleep again."""

    def __init__(self) -> None:
        self._kernel = _FmaKernel()
        self._best = 0.0
        for _ in range(5):
            self.whole()

    def whole(self) -> bool:
        wait_until_quiet(os.getpid())
        self._kernel.gflops(number=WHOLE_WARMUP_RUNS, repeat=1)
        rate = statistics.median(self._kernel.gflops(number=5, repeat=3))
        self._best = max(self._best, rate)
        wait_until_quiet(os.getpid())
        return rate >= WHOLE_SHARE * self._best

    def wait(self) -> bool:
        """Until the cores are whole, or WHOLE_WAIT_S; whether they are."""
        deadline = time.perf_counter() + WHOLE_WAIT_S
        while not self.whole():
            if time.perf_counter() > deadline:
                return False
            time.sleep(WHOLE_RECHECK_S)
        return True


def wait_until_quiet(pid: int) -> None:
    """Until process `pid`'s threads ran for under a tenth of a QUIET_WINDOW_S, or QUIET_TIMEOUT_S:
    a library's thread pool spins for a while after a call (TVM's for a tenth of a second)."""
    deadline = time.perf_counter() + QUIET_TIMEOUT_S
    last = _cpu_ns(pid)
    while last is not None and time.perf_counter() < deadline:
        time.sleep(QUIET_WINDOW_S)
        now = _cpu_ns(pid)
        if now is None or now - last < QUIET_WINDOW_S * 1e8:
            return
        last = now
    if last is None:  # no /proc: a pause as long as the slowest pool's spin seen
        time.sleep(QUIET_TIMEOUT_S / 5)


def _cpu_ns(pid: int) -> int | None:
    """Nanoseconds process `pid`'s threads have run (Linux's schedstat), None where unreadable."""
    try:
        threads = list(Path(f"/proc/{pid}/task").iterdir())
    except OSError:
        return None
    total = 0
    for thread in threads:
        with contextlib.suppress(OSError, ValueError, IndexError):  # a thread that just ended
            total += int((thread / "schedstat").read_text().split()[0])
    return total


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
