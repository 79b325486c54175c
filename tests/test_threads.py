"""TVM's thread pool gets one worker per usable core, unless the user chose."""

import os
import subprocess
import sys

import pytest

# Runs in a fresh process: the pool is sized once, when it first starts.
_SCRIPT = """
import os, numpy as np, tvm, tvmsep
from tvmsep.threads import usable_cores
mask = os.sched_getaffinity(0)
x = np.random.rand(1, 8, 8, 8).astype("float32")
f = np.random.rand(3, 3, 8, 1).astype("float32")
tvmsep.depthwise_conv2d(x, f, [1, 1, 1, 1], "SAME")
print(tvm.runtime.num_threads(), usable_cores(), os.sched_getaffinity(0) == mask)
"""


def _pool(tmp_path, **user_env):
    env = {k: v for k, v in os.environ.items() if k not in ("TVM_NUM_THREADS", "OMP_NUM_THREADS")}
    env.update(user_env, TVMSEP_CACHE_DIR=str(tmp_path))
    done = subprocess.run([sys.executable, "-c", _SCRIPT], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    workers, cores, mask_kept = done.stdout.split()
    return int(workers), int(cores), mask_kept == "True"


@pytest.mark.skipif(not hasattr(os, "sched_getaffinity"), reason="needs sched_getaffinity")
def test_pool_uses_every_usable_core_and_keeps_the_affinity_mask(tmp_path):
    workers, cores, mask_kept = _pool(tmp_path)
    assert workers == cores
    assert mask_kept, "the calling thread was pinned to fewer cores"


def test_a_thread_count_the_user_chose_is_kept(tmp_path):
    workers, _, _ = _pool(tmp_path, TVM_NUM_THREADS="1")
    assert workers == 1
