"""The GPU check script, run end to end on the CPU (an llvm bundle): the same
code path the GPU run takes, minus CUDA events and graphs, so a broken check
is found here and not on a borrowed GPU."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).parents[1] / "benchmarks" / "gpu_check.py"


def _run(*args, timeout=600):
    env = {**os.environ, "TVM_USE_RUNTIME_LIB": "1"} if args[0] == "check" else dict(os.environ)
    return subprocess.run([sys.executable, str(SCRIPT), *args], env=env, capture_output=True, text=True,
                          timeout=timeout)


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu_run")
    done = _run("prepare", "--target", "llvm", "--out", str(out), "--layers", "v2_02", "--batches", "1",
                "--no-runtime")
    assert done.returncode == 0, done.stderr
    return out


def test_check_passes_the_matrix_and_times_the_layers_runtime_only(prepared, tmp_path):
    done = _run("check", str(prepared), "--results", str(tmp_path), "--repeats", "2")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "compiler loaded: False" in done.stdout
    report = (tmp_path / "gpu-cpu.md").read_text()
    assert "failures: 0" in report
    rows = json.loads((tmp_path / "gpu-cpu.json").read_text())["rows"]
    assert len(rows) == 4  # v2_02 at batch 1: 2 dtypes x 2 layouts
    assert all(row["tvmsep_us"] > 0 and row["torch_us"] > 0 and row["error"] < 1e-2 for row in rows)


def test_check_fails_when_a_kernel_is_wrong(prepared, tmp_path):
    """Point one matrix entry at another entry's function: the check must notice and exit 1
    (the loader now refuses such a manifest, since a function is named by its workload)."""
    broken = tmp_path / "broken"
    subprocess.run(["cp", "-r", str(prepared), str(broken)], check=True)
    manifest_path = broken / "matrix" / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    first, second = manifest["kernels"][0], manifest["kernels"][2]
    first["function"] = second["function"]
    manifest_path.write_text(json.dumps(manifest))
    done = _run("check", str(broken), "--results", str(tmp_path), "--repeats", "2")
    assert done.returncode == 1
    assert f"kernel {first['name']!r} names function" in done.stdout and "FAIL" in done.stdout, done.stdout
