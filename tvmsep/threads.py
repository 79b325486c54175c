"""TVM's CPU thread pool: one worker per usable physical core.

TVM sizes its pool from TVM_NUM_THREADS, else OMP_NUM_THREADS, else half the
hardware threads on x86 (it assumes two-way SMT). On a machine without SMT
that leaves half the cores idle, and a one-worker pool pins the calling thread
to core 0, a mask that every thread the process starts later inherits (torch's
and ONNX Runtime's pools included). So `import tvmsep` sets TVM_NUM_THREADS to
the usable physical cores unless the user set either variable; the pool reads
it when it first starts.
"""

from __future__ import annotations

import os

import psutil

__all__ = ["usable_cores", "size_thread_pool"]


def usable_cores() -> int:
    """Physical cores this process may run on (its affinity mask caps the count)."""
    allowed = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    physical = psutil.cpu_count(logical=False) or allowed
    return max(1, min(allowed, physical))


def size_thread_pool() -> None:
    """Ask TVM for `usable_cores()` workers, unless the user chose a count."""
    if "TVM_NUM_THREADS" not in os.environ and "OMP_NUM_THREADS" not in os.environ:
        os.environ["TVM_NUM_THREADS"] = str(usable_cores())
