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
