"""64-bit ARM: cross-compiled bundles, checked here under qemu-user with an aarch64 Python and
the TVM runtime alone, and the refusals that keep aarch64 code off other machines.

The emulated tests need what `scripts/aarch64-emulation.sh` installs (CI runs it first) and
are skipped without it. Emulated times say nothing about a board's speed, so none is taken.
"""

import dataclasses
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from tvm.target import Target

import tvmsep
from tvmsep.backends import BACKENDS, host_architecture
from tvmsep.bundle import MANIFEST, BundleError
from tvmsep.export import compile_bundle
from tvmsep.matrix import CASES, case_name, case_workload, matrix
from tvmsep.networks import Layer, network
from tvmsep.schedules.llvm import vector_lanes

ROOT = Path(__file__).resolve().parent.parent
EMULATION = ROOT / ".aarch64"
A72 = {"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mcpu": "cortex-a72", "num-cores": 4}  # a Raspberry Pi 4
N1 = {"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mcpu": "neoverse-n1", "num-cores": 4}  # has fp16 arithmetic
CROSS_COMPILER = "aarch64-linux-gnu-g++"

needs_cross_compiler = pytest.mark.skipif(shutil.which(CROSS_COMPILER) is None,
                                          reason=f"no {CROSS_COMPILER} (scripts/aarch64-emulation.sh installs it)")
needs_emulation = pytest.mark.skipif(not (EMULATION / ".installed").exists() or shutil.which(CROSS_COMPILER) is None,
                                     reason="no emulated aarch64 here: run scripts/aarch64-emulation.sh")
on_x86 = pytest.mark.skipif(host_architecture() != "x86_64", reason="checks refusals on an x86-64 machine")


def _quiet(line):
    pass


def test_neon_targets_fill_128_bit_vectors_and_x86_ones_keep_theirs():
    """NEON has 128-bit registers on every core, named or not; a 256-bit vector would take two."""
    for target in ({"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mattr": ["+neon"]}, A72, N1,
                   {"kind": "llvm", "mtriple": "arm64-apple-darwin", "mcpu": "apple-m1"},
                   {"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mcpu": "neoverse-v1"},  # SVE: code is NEON
                   {"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mattr": ["+neon", "+sve"]}):
        assert vector_lanes(Target(target), "float32") == 4, target
        assert vector_lanes(Target(target), "float64") == 2, target
    assert vector_lanes(Target({"kind": "llvm", "mcpu": "haswell"}), "float32") == 8
    assert vector_lanes(Target({"kind": "llvm", "mcpu": "znver4"}), "float32") == 16


def test_tuning_logs_of_an_aarch64_cpu_have_a_folder_of_their_own():
    cpu = BACKENDS["llvm"]
    assert cpu.log_folder(Target(N1)) == "llvm-aarch64-neoverse-n1"
    assert cpu.log_folder(Target({"kind": "llvm", "mtriple": "aarch64-linux-gnu"})) == "llvm-aarch64"
    assert cpu.log_folder(Target({"kind": "llvm", "mcpu": "znver5", "mtriple": "x86_64-linux-gnu"})) == "llvm-znver5"


def test_a_cpu_architecture_tvmsep_does_not_compile_for_is_a_clear_error():
    with pytest.raises(ValueError, match="riscv64"):
        tvmsep.depthwise_conv2d(np.ones((1, 8, 8, 8), np.float32), np.ones((3, 3, 8, 1), np.float32),
                                [1, 1, 1, 1], "SAME", target={"kind": "llvm", "mtriple": "riscv64-linux-gnu"})


@on_x86
def test_the_public_ops_refuse_a_cross_target_before_compiling(tmp_path, monkeypatch):
    monkeypatch.setenv("TVMSEP_CACHE_DIR", str(tmp_path))
    x, f = np.ones((1, 8, 8, 8), np.float32), np.ones((3, 3, 8, 1), np.float32)
    with pytest.raises(RuntimeError, match="for aarch64.*this machine is x86_64.*tvmsep compile --target"):
        tvmsep.depthwise_conv2d(x, f, [1, 1, 1, 1], "SAME", target=A72)
    assert not list(tmp_path.iterdir()), "nothing was compiled"


def test_a_missing_cross_compiler_is_a_clear_error_naming_its_package(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # no compiler of any kind
    layer = network("mobilenet_v1")[0]
    target = A72 if host_architecture() != "aarch64" else {"kind": "llvm", "mtriple": "x86_64-linux-gnu"}
    package = "g++-aarch64-linux-gnu" if host_architecture() != "aarch64" else "g++-x86-64-linux-gnu"
    with pytest.raises(ValueError, match=f"needs a C\\+\\+ compiler.*apt-get install {re.escape(package)}.*--cc"):
        compile_bundle([(layer.name, layer.workload())], target, tmp_path / "b", progress=_quiet)
    with pytest.raises(ValueError, match="--cc no-such-g\\+\\+: no such command"):
        compile_bundle([(layer.name, layer.workload())], target, tmp_path / "b", progress=_quiet,
                       compiler="no-such-g++")
    assert not (tmp_path / "b").exists()


@on_x86
def test_linking_aarch64_code_with_the_host_compiler_is_a_clear_error(tmp_path):
    layer = network("mobilenet_v1")[0]
    with pytest.raises(ValueError, match="g\\+\\+ could not link the code for"):
        compile_bundle([(layer.name, layer.workload())], A72, tmp_path / "b", progress=_quiet, compiler="g++")
    assert not (tmp_path / "b").exists()


# Channels that no wide vector divides, whose depthwise tiles end in a masked tail of lanes
# (`llvm._depthwise_channel_knob`), one with a multiplier.
TAILED = [Layer("tail_15x11", 1, 15, 11, 1, 24), Layer("tail_12x13_m2_k5", 1, 12, 13, 1, 24, kernel=5, multiplier=2)]


def _checked_layers(dtypes_of_networks):
    """The configuration matrix (fp32, fp16; fp64 in NHWC), and MobileNetV1 and V2's layers and
    TAILED, both ops, in each of `dtypes_of_networks`."""
    named = matrix() + [(f"{case_name(case)}-NHWC-float64", case_workload(case, "NHWC", "float64"))
                        for case in CASES]
    for layers in (network("mobilenet_v1"), network("mobilenet_v2"), TAILED):
        for layer in layers:
            for op in ("depthwise", "separable"):
                named += [(f"{layer.name}-{op}-{dtype}", dataclasses.replace(layer.workload(op), dtype=dtype))
                          for dtype in dtypes_of_networks]
    return named


@pytest.fixture(scope="module")
def bundles(tmp_path_factory):
    """For a Pi 4's core (cortex-a72), everything `_checked_layers` names, fp32 and fp16; for
    neoverse-n1, whose code may use fp16 arithmetic the Pi lacks, the matrix and the networks
    in fp16."""
    folder = tmp_path_factory.mktemp("aarch64")
    compile_bundle(_checked_layers(("float32", "float16")), A72, folder / "a72", progress=_quiet)
    compile_bundle(_checked_layers(("float16",)), N1, folder / "n1", progress=_quiet)
    return folder


def _emulated(cpu, *args, timeout=900):
    """Run the emulated aarch64 Python with the TVM runtime alone, as core `cpu`."""
    env = {**os.environ, "QEMU_CPU": cpu, "TVM_USE_RUNTIME_LIB": "1"}
    return subprocess.run([str(EMULATION / "python"), *args], env=env, capture_output=True, text=True,
                          timeout=timeout)


@needs_emulation
def test_an_aarch64_bundle_records_its_architecture_and_features(bundles):
    a72 = json.loads((bundles / "a72" / MANIFEST).read_text())
    n1 = json.loads((bundles / "n1" / MANIFEST).read_text())
    assert a72["architecture"] == n1["architecture"] == "aarch64"
    assert {"fp", "asimd"} <= set(a72["cpu_flags"]) and not {"fphp", "asimdhp"} & set(a72["cpu_flags"])
    assert {"fp", "asimd", "fphp", "asimdhp", "asimddp"} <= set(n1["cpu_flags"])


@needs_emulation
@on_x86
def test_an_aarch64_bundle_is_refused_on_x86_with_the_reason(bundles):
    with pytest.raises(BundleError, match="for aarch64 \\(cortex-a72\\), and this machine is x86_64"):
        tvmsep.load(bundles / "a72")


@needs_emulation
@pytest.mark.parametrize("bundle, cpu", [("a72", "cortex-a72"), ("a72", "neoverse-n1"), ("n1", "neoverse-n1")])
def test_every_kernel_matches_the_reference_on_an_emulated_core(bundles, bundle, cpu):
    """Loaded by an aarch64 Python with the runtime alone, every kernel writes all of a NaN-poisoned
    `out=` within its dtype's tolerance of the float64 reference."""
    native_float16 = bundle == "n1"  # neoverse-n1's code sums a float16 depthwise in float16
    done = _emulated(cpu, str(ROOT / "tests/helpers/bundle_check.py"), str(bundles / bundle),
                     *(["--tf-cpu-float16"] if native_float16 else []))
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    lines = done.stdout.splitlines()
    checked = [line.split()[0] for line in lines if not line.startswith("machine:")]
    manifest = json.loads((bundles / bundle / MANIFEST).read_text())
    assert checked == [kernel["name"] for kernel in manifest["kernels"]]
    assert lines[-1].startswith("machine: aarch64 ")
    if native_float16:
        # It rounds after every tap, as TF's CPU kernel does;
        # its FMAs round once where TF rounds twice (float32, then float16), so a few results, drawn
        # at random, are a unit in the last place apart: too few to bound one small layer's share by
        # the rate (two of its results may be), so the rate bounds all layers' results together.
        # Sums in float32 leave a quarter to a half of every layer's results apart.
        depthwise = {kernel["name"] for kernel in manifest["kernels"]
                     if kernel["workload"]["op"] == "depthwise" and kernel["workload"]["dtype"] == "float16"}
        apart = {fields[0]: (int(fields[2]), int(fields[3])) for fields in (line.split() for line in lines[:-1])
                 if fields[0] in depthwise}
        assert apart, lines
        differ, results = (sum(counts) for counts in zip(*apart.values()))
        assert max(d / n for d, n in apart.values()) <= 1e-2 and differ <= 1e-3 * results, apart


@needs_emulation
def test_a_bundle_with_fp16_arithmetic_is_refused_on_a_core_without_it(bundles):
    script = (f"import tvmsep\ntry:\n    tvmsep.load({str(bundles / 'n1')!r})\n"
              "except tvmsep.bundle.BundleError as e:\n    print('refused:', e)\n")
    done = _emulated("cortex-a72", "-c", script, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "refused: the bundle is for neoverse-n1, whose instructions this CPU lacks (asimddp, asimdhp" \
        in done.stdout, done.stdout


def test_tuning_for_another_machine_without_rpc_is_a_clear_error(tmp_path, capsys):
    """Candidates for a board can only be measured on it: the job says how, before anything is compiled."""
    from tvmsep import cli
    target = A72 if host_architecture() != "aarch64" else {"kind": "llvm", "mtriple": "x86_64-linux-gnu"}
    status = cli.main(["tune", "--op", "depthwise", "--input", "1,8,8,8", "--filter", "3,3,8,1", "--trials", "2",
                       "--target", json.dumps(target), "--log-dir", str(tmp_path)])
    err = capsys.readouterr().err
    assert status == 2, err
    assert "measured there" in err and "--rpc HOST:PORT --rpc-key KEY" in err, err
    assert not list(tmp_path.iterdir()), "nothing was logged"


@needs_emulation
def test_a_tuning_job_measures_on_an_emulated_board_over_rpc(tmp_path):
    """A board with the TVM runtime alone and no compiler (qemu's aarch64 Python, runtime-only,
    without TVM's extra runtime library) behind a real tracker: the candidates are linked here
    and their inputs filled here, the job measures them there and ends in a verdict, filed
    under the board's architecture and CPU."""
    from helpers.rpc import kill_with_its_workers, start_server, start_tracker, wait_for_servers
    tracker, tracker_port = start_tracker()
    server = None
    try:
        env = {**os.environ, "QEMU_CPU": "cortex-a72", "TVM_USE_RUNTIME_LIB": "1"}
        server = start_server(tracker_port, "pi4", python=[str(EMULATION / "python")], env=env)
        wait_for_servers(tracker_port, "pi4", 1, timeout=180)
        job = subprocess.run(
            [sys.executable, "-m", "tvmsep.cli", "tune", "--op", "depthwise", "--input", "1,8,8,16",
             "--filter", "3,3,16,1", "--trials", "3", "--target", json.dumps(A72),
             "--rpc", f"127.0.0.1:{tracker_port}", "--rpc-key", "pi4", "--log-dir", str(tmp_path)],
            capture_output=True, text=True, timeout=900)
        assert job.returncode == 0, job.stdout[-3000:] + job.stderr[-3000:]
        assert "speed-up" in job.stdout and "failed" not in job.stdout, job.stdout
    finally:
        for process in (server, tracker):
            if process is not None:
                kill_with_its_workers(process)
    folder = tmp_path / "llvm-aarch64-cortex-a72"
    records = [json.loads(line) for line in (folder / "database_tuning_record.json").read_text().splitlines()]
    assert len(records) == 3 and all(0 < max(record[1][1]) < 1 for record in records), "each was measured"
    verdicts = [json.loads(line) for line in (folder / "verdicts.json").read_text().splitlines()]
    assert len(verdicts) == 1 and verdicts[0]["use"] in ("hand", "tuned") and 0 < verdicts[0]["hand_ms"] < 1e3


@pytest.mark.parametrize("preset", ["mobilenet_v1", "mobilenet_v2"])
def test_neon_register_tiles_fit_the_32_registers(preset):
    """Read from the assembly: no loop with vector FMAs in a MobileNet kernel for a Pi 4's core
    keeps part of its register tile on the stack."""
    from helpers.assembly import spilling_loops
    workloads = dict.fromkeys(layer.workload(op) for layer in network(preset) for op in ("depthwise", "separable"))
    spilling = spilling_loops(workloads, A72)
    assert not spilling, spilling


def test_a_float16_depthwise_sums_in_float16_vectors_on_a_core_with_fp16_arithmetic():
    """Read from the assembly: on neoverse-n1 (FP16) a float16 depthwise's hot loop has FMAs on 8
    float16 lanes and no conversion; on a Pi 4's core (none), FMAs on 4 float32 lanes, its inputs
    converted; the pointwise GEMM sums in float32 on both, as TF's 1x1 convolution does."""
    from helpers.assembly import hot_loops
    layer = network("mobilenet_v1")[2]  # 56x56x128, SAME: border and interior tiles
    for op, target, lanes in (("depthwise", N1, "8h"), ("depthwise", A72, "4s"), ("separable", N1, "4s")):
        wl = dataclasses.replace(layer.workload(op), dtype="float16")
        assembly = hot_loops.kernel_assembly(wl, target)
        fmas = set(re.findall(r"\bfmla\s+v\d+\.(\w+)", assembly))
        assert lanes in fmas, (op, target["mcpu"], fmas)
        if op == "depthwise":
            assert fmas == {lanes}, (target["mcpu"], fmas)
            assert (re.search(r"\bfcvtl2?\b", assembly) is None) == (lanes == "8h"), target["mcpu"]
