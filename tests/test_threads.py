"""TVM's thread pool gets one worker per usable core, none pinned, unless the user chose."""

import os
import subprocess
import sys

import pytest

# Runs in a fresh process: the pool is sized once, when it first starts.
_SCRIPT = """
import os, numpy as np, tvm, tvmsep
from tvmsep.threads import usable_cores
mask = os.sched_getaffinity(0)
x = np.random.rand(1, 32, 32, 64).astype("float32")  # enough work to run in parallel: the pool starts
f = np.random.rand(3, 3, 64, 1).astype("float32")
tvmsep.depthwise_conv2d(x, f, [1, 1, 1, 1], "SAME")
workers = tvm.runtime.num_threads()
threads = [int(tid) for tid in os.listdir("/proc/self/task")]
print(workers, usable_cores(), all(os.sched_getaffinity(t) == mask for t in threads))
"""


def _pool(tmp_path, **user_env):
    env = {k: v for k, v in os.environ.items() if k not in ("TVM_NUM_THREADS", "OMP_NUM_THREADS", "TVM_BIND_THREADS")}
    env.update(user_env, TVMSEP_CACHE_DIR=str(tmp_path))
    done = subprocess.run([sys.executable, "-c", _SCRIPT], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    workers, cores, masks_kept = done.stdout.split()
    return int(workers), int(cores), masks_kept == "True"


@pytest.mark.skipif(not hasattr(os, "sched_getaffinity"), reason="needs sched_getaffinity")
def test_pool_uses_every_usable_core_and_pins_no_thread(tmp_path):
    """A pinned worker halved the speed of parallel kernels whenever the calling
    thread landed on its core (threads.py)."""
    workers, cores, masks_kept = _pool(tmp_path)
    assert workers == cores
    assert masks_kept, "a thread (the caller or a worker) was pinned to fewer cores than the process may use"


def test_a_thread_count_the_user_chose_is_kept(tmp_path):
    workers, _, _ = _pool(tmp_path, TVM_NUM_THREADS="1")
    assert workers == 1


@pytest.mark.skipif(not hasattr(os, "sched_getaffinity") or len(os.sched_getaffinity(0)) < 2,
                    reason="needs sched_getaffinity and two cores to pin workers to")
def test_pinning_the_user_asked_for_is_kept(tmp_path):
    workers, _, masks_kept = _pool(tmp_path, TVM_BIND_THREADS="1")
    assert workers >= 2 and not masks_kept, "TVM_BIND_THREADS=1 pins the workers"


_FORK_SCRIPT = """
import multiprocessing, os, sys, warnings, numpy as np, tvmsep
from tvmsep.reference import scaled_error, depthwise_reference
from tvmsep.spec import depthwise_workload
rng = np.random.default_rng()
x = rng.standard_normal((1, 32, 32, 64)).astype("float32")  # parallel: the pool starts
f = rng.standard_normal((3, 3, 64, 1)).astype("float32")
wl = depthwise_workload(x.shape, "float32", f.shape, "float32", [1, 1, 1, 1], "SAME")
expected = depthwise_reference(x, f, wl)

def child_error(_=None):
    return scaled_error(tvmsep.depthwise_conv2d(x, f, [1, 1, 1, 1], "SAME"), expected)

assert child_error() < 1e-4
pid = os.fork()
if pid == 0:
    os._exit(0 if child_error() < 1e-4 else 3)
_, status = os.waitpid(pid, 0)
print("fork", os.waitstatus_to_exitcode(status))
with multiprocessing.get_context("fork").Pool(2) as pool:
    print("pool", max(pool.map(child_error, range(4))) < 1e-4)
"""


def test_a_forked_child_runs_kernels_after_the_parent_started_the_pool(tmp_path):
    """The child of a process whose pool has started must not wait forever on workers it
    does not have: by os.fork and by a fork multiprocessing.Pool."""
    env = dict(os.environ, TVMSEP_CACHE_DIR=str(tmp_path))
    done = subprocess.run([sys.executable, "-c", _FORK_SCRIPT], env=env, capture_output=True, text=True,
                          timeout=240)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["fork", "0", "pool", "True"], done.stdout
    assert "run on one thread" in done.stderr, done.stderr
