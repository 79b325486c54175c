"""Builder and runner functions that fail on purpose, for the tuning fault test.

They run inside meta-schedule's worker processes, which import this module
by name (tests/ is put on their PYTHONPATH). A counter in a file shared by
all workers decides each candidate's fate, so a crashed worker's successor
continues the pattern.
"""

import os
import time

from tvm.s_tir.meta_schedule.runner.local_runner import default_run_evaluator

from tvmsep.tune import build_candidate


def _next(name: str) -> int:
    path = os.path.join(os.environ["TVMSEP_FAULT_DIR"], name)
    count = int(open(path).read()) if os.path.exists(path) else 0
    with open(path, "w") as f:
        f.write(str(count + 1))
    return count


def build_some(mod, target, params):
    """Every third build fails."""
    if _next("builds") % 3 == 2:
        raise RuntimeError("injected build failure")
    return build_candidate(mod, target, params)


def run_some(rt_mod, device, evaluator_config, repeated_args):
    """Of every four runs: one crashes the worker, one hangs past the timeout."""
    fate = _next("runs") % 4
    if fate == 2:
        os.abort()
    if fate == 3:
        time.sleep(600)
    return default_run_evaluator(rt_mod, device, evaluator_config, repeated_args)


def run_none(rt_mod, device, evaluator_config, repeated_args):
    """A device that cannot run anything it is sent."""
    raise RuntimeError("injected: this device cannot run the candidates")
