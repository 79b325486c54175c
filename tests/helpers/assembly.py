"""benchmarks/hot_loops.py, which reads a kernel's loops from its assembly, for the tests that
check register tiles (benchmarks/ is not a package, so it is loaded by its path)."""

import importlib.util
import sys
from pathlib import Path

_PATH = Path(__file__).resolve().parents[2] / "benchmarks" / "hot_loops.py"
_spec = importlib.util.spec_from_file_location("hot_loops", _PATH)
hot_loops = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = hot_loops  # its dataclass looks its module up there
_spec.loader.exec_module(hot_loops)


def spilling_loops(workloads, target) -> dict:
    """The loops with vector FMAs that spill vector registers, in the kernels of `workloads`
    compiled for `target`, by workload and label; each kernel must have such a loop at all."""
    spilling = {}
    for wl in workloads:
        loops = hot_loops.loops(hot_loops.kernel_assembly(wl, target))
        assert any(loop.fmas >= 8 for loop in loops), f"no vector FMA loop found in {wl.describe()}"
        spilling.update({f"{wl.describe()} {loop.label}": loop for loop in loops if loop.spills})
    return spilling
