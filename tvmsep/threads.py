"""TVM's CPU thread pool: one worker per usable physical core, none pinned.

TVM sizes its pool from TVM_NUM_THREADS, else OMP_NUM_THREADS, else half the
hardware threads on x86 (it assumes two-way SMT). On a machine without SMT
that leaves half the cores idle, and a one-worker pool pins the calling thread
to core 0, a mask that every thread the process starts later inherits (torch's
and ONNX Runtime's pools included). So `import tvmsep` sets TVM_NUM_THREADS to
the usable physical cores unless the user set either variable.

TVM also pins each worker but the calling thread to a core of its own, while
the calling thread floats. When another library's threads push the caller onto
a worker's core (torch's OpenMP pool still spinning on the other), both halves
of every parallel kernel run on that one core until the scheduler moves the
caller back, which doubles a kernel's time for as long as that lasts; unpinned
workers are spread over the cores again by the scheduler. So `import tvmsep`
also sets TVM_BIND_THREADS=0 unless the user set it. The pool reads both when it first starts.

A forked child inherits the pool's state but not its worker threads, so its
first parallel kernel waits forever for workers that do not exist (os.fork, a
`multiprocessing` fork pool). Once this process has made a kernel, a forked
child therefore runs TVM single-threaded, with a warning; a child forked
before any kernel starts a pool of its own. (The spawn and forkserver start
methods start fresh interpreters and are unaffected.)
"""

from __future__ import annotations

import os
import warnings

import psutil

__all__ = ["usable_cores", "configure_thread_pool", "note_kernel"]

_kernel_made = False  # whether TVM's pool may have started in this process


def usable_cores() -> int:
    """Physical cores this process may run on (its affinity mask caps the count)."""
    allowed = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    physical = psutil.cpu_count(logical=False) or allowed
    return max(1, min(allowed, physical))


def configure_thread_pool() -> None:
    """Ask TVM for `usable_cores()` workers, not pinned to cores, unless the user chose."""
    if "TVM_NUM_THREADS" not in os.environ and "OMP_NUM_THREADS" not in os.environ:
        os.environ["TVM_NUM_THREADS"] = str(usable_cores())
    os.environ.setdefault("TVM_BIND_THREADS", "0")


def note_kernel() -> None:
    """A kernel exists, so TVM's pool may have started: a forked child must not use it."""
    global _kernel_made
    _kernel_made = True


def _after_fork_in_child() -> None:
    if not _kernel_made:
        return
    import tvm_ffi
    tvm_ffi.get_global_func("runtime.config_threadpool")(0, 1)  # a pool of the caller alone
    warnings.warn("tvmsep: this process was forked after TVM's thread pool started, and the pool's workers "
                  "do not survive a fork: kernels here run on one thread (use the 'spawn' or 'forkserver' "
                  "start method for parallel kernels in child processes)", RuntimeWarning, stacklevel=2)


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
