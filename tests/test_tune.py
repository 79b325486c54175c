"""Tuning jobs: real meta-schedule search on small workloads, small budgets.

Each test checks what a user relies on: the log stays readable by plain TVM
whatever happens to the job, a rerun continues it, jobs can share a folder,
failing candidates do not stop a job, RPC measurement survives losing a
device, and compiling uses what a job chose.
"""

import dataclasses
import json
import os
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import tvm
from tvm.s_tir import Schedule
from tvm.s_tir.schedule import Trace
from tvm.s_tir import meta_schedule as ms

import tvmsep
from tvmsep import build, ops
from tvmsep.cache import cache_key
from tvmsep.networks import network
from tvmsep.reference import depthwise_reference
from tvmsep.schedules import llvm
from tvmsep.spec import depthwise_workload, separable_workload
from tvmsep.tune import tune
from tvmsep.tuning_log import RECORD_FILE, WORKLOAD_FILE, TuningLog
from tvmsep.verdicts import VERDICT_FILE, Verdict, plain_json, target_folder_name
from tvmsep.target import host_target

from conftest import assert_close
from helpers.rpc import kill_with_its_workers, start_server, start_tracker, wait_for_servers

TESTS = Path(__file__).parent
FOLDER = target_folder_name(host_target())
# The tiny job's budget: after the 1 or 2 design-space defaults, rounds of 8
# candidates do not divide what is left, so an inexact budget would show.
TRIALS = 19


def _tiny(channels=16, size=8):
    return depthwise_workload([1, size, size, channels], "float32", [3, 3, channels, 1], "float32",
                              [1, 1, 1, 1], "SAME")


def _cli_args(wl, trials, log_dir, *extra):
    n, h, w, c = wl.input_shape
    return [sys.executable, "-m", "tvmsep.cli", "tune", "--op", "depthwise", "--input", f"{n},{h},{w},{c}",
            "--filter", f"3,3,{c},1", "--trials", str(trials), "--log-dir", str(log_dir), *extra]


def _tvm_records(folder: Path) -> list:
    """Every record, as plain TVM reads the folder."""
    return list(ms.database.JSONDatabase(work_dir=str(folder)).get_all_tuning_records())


def _lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


def _wait_for_lines(path: Path, count: int, proc: subprocess.Popen, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while len(_lines(path)) < count:
        assert proc.poll() is None, f"job ended early: {proc.communicate()[0]}"
        assert time.monotonic() < deadline, f"no {count} records in {path} after {timeout} s"
        time.sleep(0.5)


@pytest.fixture(scope="module")
def tuned_log(tmp_path_factory):
    """One real tuning job on a tiny workload: (workload, log folder, outcomes)."""
    wl = _tiny()
    log_dir = tmp_path_factory.mktemp("logs")
    outcomes = tune([wl, wl], trials=TRIALS, log_dir=log_dir, report=lambda line: None, seed=1)
    return wl, log_dir / FOLDER, outcomes


def test_job_logs_in_tvm_format_with_a_verdict(tuned_log):
    wl, folder, outcomes = tuned_log
    assert len(outcomes) == 1, "a workload listed twice is tuned once"
    outcome = outcomes[0]
    assert outcome.trials == TRIALS, "the budget is exact, though rounds of candidates do not divide it"
    assert outcome.use in ("tuned", "hand")
    assert outcome.hand_ms > 0 and outcome.tuned_ms > 0
    assert outcome.use == "hand" or outcome.tuned_ms < outcome.hand_ms
    records = _tvm_records(folder)
    assert len(records) == outcome.trials
    assert any(r.run_secs and float(r.run_secs[0]) < 1 for r in records), "no candidate ran"
    verdict = json.loads(_lines(folder / VERDICT_FILE)[-1])
    assert verdict["use"] == outcome.use and verdict["trials"] == outcome.trials
    # The schedule checked against hand-written is one of the three fastest logged others
    # (this job is the workload's first, so there is no earlier choice among the finalists).
    log = TuningLog(folder)
    logged = log.records(log.commit_workload(build.workload_module(wl, host_target())))
    others = sorted((r for r in logged if r.run_secs and str(r.trace) != str(logged[0].trace)),
                    key=lambda r: np.mean([float(s) for s in r.run_secs]))
    fastest = list(dict.fromkeys(json.dumps(plain_json(r.trace.as_json(remove_postproc=False))) for r in others))
    assert json.dumps(verdict["trace"]) in fastest[:3]


def _quiet_tuned_trace(wl):
    """build.tuned_trace, failing on a TuningWarning: a verdict a job wrote always fits."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", build.TuningWarning)
        return build.tuned_trace(wl, host_target())


def test_compiling_uses_the_verdict(tuned_log, monkeypatch, rng):
    wl, folder, outcomes = tuned_log
    monkeypatch.setenv("TVMSEP_TUNING_DIR", str(folder.parent))
    trace = _quiet_tuned_trace(wl)
    assert (trace is not None) == (outcomes[0].use == "tuned")
    # Force each choice through a verdict of the job's own form: the latest verdict wins.
    log = TuningLog(folder)
    records = log.records(log.commit_workload(build.workload_module(wl, host_target())))
    best = min((r for r in records[1:] if r.run_secs), key=lambda r: float(r.run_secs[0]))
    verdict = Verdict.from_json(json.loads(_lines(folder / VERDICT_FILE)[-1]))
    trace = plain_json(best.trace.as_json(remove_postproc=False))
    log.commit_verdict(dataclasses.replace(verdict, use="hand", trace=trace))
    build.forget_verdicts()
    assert _quiet_tuned_trace(wl) is None
    # Found by the workload's structural hash alone: the description is for people.
    log.commit_verdict(dataclasses.replace(verdict, use="tuned", trace=trace, describe="reworded"))
    build.forget_verdicts()
    assert _quiet_tuned_trace(wl) == trace
    key_tuned = cache_key(wl, host_target(), build.tuned_trace(wl, host_target()))
    assert key_tuned != cache_key(wl, host_target())
    ops.forget_kernels()
    x = rng.standard_normal(wl.input_shape, dtype=np.float32)
    f = rng.standard_normal(wl.filter_shape, dtype=np.float32)
    out = np.full(wl.output_shape, np.nan, np.float32)
    tvmsep.depthwise_conv2d(x, f, [1, 1, 1, 1], "SAME", out=out)
    assert_close(out, depthwise_reference(x, f, wl), "float32")
    # The same convolution with an epilogue, never tuned: the tuned choice, the epilogue inlined into its store.
    with_epilogue = dataclasses.replace(wl, bias=True, activation="relu6")
    instructions, _ = build.tuned_trace(with_epilogue, host_target())
    assert [i[0] for i in instructions[-2:]] == ["GetSBlock", "ReverseComputeInline"], instructions[-2:]
    bias = rng.standard_normal(wl.out_channels, dtype=np.float32)
    out = np.full(wl.output_shape, np.nan, np.float32)
    tvmsep.depthwise_conv2d(x, f, [1, 1, 1, 1], "SAME", bias=bias, activation="relu6", out=out)
    assert_close(out, depthwise_reference(x, f, with_epilogue, bias), "float32")
    ops.forget_kernels()


def test_an_epilogue_follows_a_verdict_from_the_generic_space(tuned_log, monkeypatch, rng):
    """A verdict from meta-schedule's generic space writes the convolution in place, with
    no store to inline an epilogue into: the epilogue is computed under its outer spatial
    tile and post-processed with it, and computes the reference (it used to fall back to
    the hand-written schedule)."""
    wl, folder, _ = tuned_log
    monkeypatch.setenv("TVMSEP_TUNING_DIR", str(folder.parent))
    log = TuningLog(folder)
    generic = [r for r in log.records(log.commit_workload(build.workload_module(wl, host_target())))
               if r.run_secs and "meta_schedule.tiling_structure" in str(r.trace)]
    assert generic, "the tiny job measured no candidate of the generic space"
    best = min(generic, key=lambda r: float(r.run_secs[0]))
    verdict = Verdict.from_json(json.loads(_lines(folder / VERDICT_FILE)[-1]))
    generic_trace = plain_json(best.trace.as_json(remove_postproc=False))
    log.commit_verdict(dataclasses.replace(verdict, use="tuned", trace=generic_trace))
    ops.forget_kernels()
    try:
        with_epilogue = dataclasses.replace(wl, bias=True, activation="relu6")
        trace = _quiet_tuned_trace(with_epilogue)
        assert trace is not None, "the epilogue workload fell back to the hand-written schedule"
        sch = Schedule(build.workload_module(with_epilogue, host_target()))
        Trace.apply_json_to_schedule(trace, sch)
        outermost = {sch.get(b).name_hint: sch.get(sch.get_loops(b)[0])
                     for b in sch.get_child_blocks(sch.get_sblock("root"))}
        epilogue = outermost.pop("depthwise_epilogue", None)
        assert epilogue is None or any(epilogue.same_as(loop) for loop in outermost.values()), \
            "the epilogue is a loop nest of its own"
        x = rng.standard_normal(wl.input_shape, dtype=np.float32)
        f = rng.standard_normal(wl.filter_shape, dtype=np.float32)
        bias = rng.standard_normal(wl.out_channels, dtype=np.float32)
        out = np.full(wl.output_shape, np.nan, np.float32)
        tvmsep.depthwise_conv2d(x, f, [1, 1, 1, 1], "SAME", bias=bias, activation="relu6", out=out)
        assert_close(out, depthwise_reference(x, f, with_epilogue, bias), "float32")
    finally:
        ops.forget_kernels()


def test_each_design_space_is_measured_at_the_hand_written_sizes_once(tmp_path):
    wl = separable_workload([1, 8, 8, 16], "float32", [3, 3, 16, 1], "float32", [1, 1, 16, 24], "float32",
                            [1, 1, 1, 1], "SAME")
    spaces = llvm.design_spaces(Schedule(build.workload_module(wl, host_target())), wl, host_target())
    for _ in range(2):  # the rerun finds both logged and measures neither again
        tune([wl], trials=2, log_dir=tmp_path, report=lambda line: None)
        log = TuningLog(tmp_path / FOLDER)
        records = log.records(log.commit_workload(build.workload_module(wl, host_target())))
        assert [str(r.trace) for r in records] == [str(s.trace) for s in spaces]
        assert all(r.run_secs and float(r.run_secs[0]) < 1 for r in records)


def test_partial_last_line_is_trimmed_and_tvm_still_reads(tuned_log, tmp_path):
    _, folder, _ = tuned_log
    copy = tmp_path / "copy"
    copy.mkdir()
    for name in (WORKLOAD_FILE, RECORD_FILE, VERDICT_FILE):
        (copy / name).write_bytes((folder / name).read_bytes())
    whole = _lines(copy / RECORD_FILE)
    with open(copy / RECORD_FILE, "a") as f:
        f.write(whole[-1][: len(whole[-1]) // 2])  # a writer killed mid-line
    with pytest.warns(UserWarning, match="unfinished last line"):
        log = TuningLog(copy)
    assert _lines(copy / RECORD_FILE) == whole
    assert len(log) == len(whole) == len(_tvm_records(copy))


def test_killed_job_resumes_without_losing_records(tmp_path):
    wl = _tiny(channels=32)
    records = tmp_path / FOLDER / RECORD_FILE
    job = subprocess.Popen(_cli_args(wl, 14, tmp_path), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                           start_new_session=True)
    try:
        _wait_for_lines(records, 5, job)  # the hand-written record and part of the search
    finally:
        kill_with_its_workers(job)  # as in a crash: the job cleans up nothing
    before = _lines(records)
    assert len(_tvm_records(tmp_path / FOLDER)) == len(before)
    plot = tmp_path / "search.png"
    done = subprocess.run(_cli_args(wl, 14, tmp_path, "--plot", str(plot)), capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    after = _lines(records)
    assert after[: len(before)] == before, "a record logged before the kill was lost or changed"
    # Counting what is logged, the rerun searches exactly the rest of the budget; one that
    # did not count the logged records would add a whole budget of 14.
    assert len(after) == 14, "the rerun did not count the records already logged"
    assert f"continuing from {len(before)} logged trials" in done.stdout
    assert "speed-up" in done.stdout  # the closing table
    assert plot.stat().st_size > 1000


def test_two_jobs_share_one_folder(tmp_path):
    jobs = [subprocess.Popen(_cli_args(_tiny(channels=c), 8, tmp_path), stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True) for c in (16, 48)]
    for job in jobs:
        output = job.communicate(timeout=900)[0]
        assert job.returncode == 0, output
    folder = tmp_path / FOLDER
    assert len(_lines(folder / WORKLOAD_FILE)) == 2
    assert len(_lines(folder / VERDICT_FILE)) == 2
    db = ms.database.JSONDatabase(work_dir=str(folder))
    for c in (16, 48):
        workload = db.commit_workload(build.workload_module(_tiny(channels=c), host_target()))
        assert len(db.get_top_k(workload, 100)) >= 1
    assert len(_tvm_records(folder)) >= 16


def test_failing_candidates_are_recorded_and_the_job_goes_on(tmp_path, monkeypatch):
    from helpers import faulty
    monkeypatch.setenv("TVMSEP_FAULT_DIR", str(tmp_path))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]))
    builder = ms.builder.LocalBuilder(f_build=faulty.build_some, max_workers=1, timeout_sec=60)
    runner = ms.runner.LocalRunner(timeout_sec=5, f_run_evaluator=faulty.run_some)
    start = time.monotonic()
    outcomes = tune([_tiny(channels=24)], trials=10, log_dir=tmp_path, builder=builder, runner=runner,
                    report=lambda line: None)
    assert time.monotonic() - start < 600
    records = _tvm_records(tmp_path / FOLDER)
    failed = [r for r in records if not r.run_secs or float(r.run_secs[0]) >= 1e9]
    assert failed, "no failure was recorded"
    assert len(failed) < len(records), "nothing succeeded"
    assert int((tmp_path / "runs").read_text()) >= 4, "the crash and the hang were not both reached"
    assert outcomes[0].trials == len(records)


def test_a_job_whose_measurements_all_fail_says_so_and_writes_no_verdict(tmp_path, monkeypatch, capsys):
    """A device that runs nothing: no failed measurement is shown as a time, the job stops with
    the first error, no verdict is written, and `tvmsep tune` exits non-zero."""
    from helpers import faulty
    from tvmsep import cli, tune as tune_module
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]))
    monkeypatch.setattr(tune_module, "make_runner", lambda rpc=None, rpc_key=None: ms.runner.LocalRunner(
        timeout_sec=30, f_run_evaluator=faulty.run_none))
    status = cli.main(["tune", "--input", "1,8,8,24", "--filter", "3,3,24,1", "--op", "depthwise", "--trials", "3",
                       "--log-dir", str(tmp_path)])
    out, err = capsys.readouterr()
    assert status == 1, (out, err)
    assert "the hand-written schedule could not be measured" in err and "this device cannot run" in err, err
    assert "failed: RuntimeError: injected: this device cannot run the candidates" in out, out
    assert "000000000" not in out + err and "no candidate measured yet" in out, out
    assert not (tmp_path / FOLDER / VERDICT_FILE).exists() or not _lines(tmp_path / FOLDER / VERDICT_FILE)
    assert _tvm_records(tmp_path / FOLDER), "the failed records are logged"


def test_candidates_here_are_timed_on_arguments_placed_as_a_call_places_them():
    """A candidate is timed as tvmsep's call runs it: inputs on cache lines, random, and the result
    two lines before the input's place in a page. TVM's own allocator puts the result a line or two
    past it, where a depthwise kernel's stores hold up its loads, so the search timed another case."""
    from tvmsep import runtime, tune as tune_module
    runner = tune_module.make_runner()
    assert runner.f_alloc_argument is tune_module.place_on_host
    wl = _tiny(channels=256)
    info = [["TENSOR", wl.dtype, list(shape)] for shape in (wl.input_shape, wl.filter_shape, wl.output_shape)]
    repeated = tune_module.place_on_host(tvm.cpu(), info, 2)
    for args in repeated:
        x, f, out = (a.numpy() for a in args)
        assert [a.shape for a in (x, f, out)] == [wl.input_shape, wl.filter_shape, wl.output_shape]
        addresses = [a.data_ptr() for a in args]
        assert all(address % runtime.CACHE_LINE_BYTES == 0 for address in addresses)
        before = (addresses[0] - addresses[2]) % runtime.PAGE_BYTES
        assert runtime.RESULT_BEFORE_INPUT_BYTES <= before < runtime.RESULT_BEFORE_INPUT_BYTES + 64, before
        assert np.all(np.abs(x) < 1) and np.unique(x).size > x.size // 2 and np.unique(f).size > f.size // 2
    assert not np.array_equal(repeated[0][0].numpy(), repeated[1][0].numpy())


def test_rpc_measurement_survives_losing_a_server(tmp_path):
    tracker, tracker_port = start_tracker()
    servers = []
    try:
        servers = [start_server(tracker_port, "testbox") for _ in range(2)]
        wait_for_servers(tracker_port, "testbox", 2, timeout=120)
        wl = _tiny(channels=40)
        records = tmp_path / FOLDER / RECORD_FILE
        job = subprocess.Popen(_cli_args(wl, 10, tmp_path, "--rpc", f"127.0.0.1:{tracker_port}",
                                         "--rpc-key", "testbox"),
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        _wait_for_lines(records, 2, job)
        servers[0].kill()
        output = job.communicate(timeout=900)[0]
        assert job.returncode == 0, output
        assert "speed-up" in output
        records_read = _tvm_records(tmp_path / FOLDER)
        assert len(records_read) >= 10
        assert any(r.run_secs and float(r.run_secs[0]) < 1 for r in records_read[2:]), \
            "nothing was measured after the server was killed"
    finally:
        for proc in servers + [tracker]:
            kill_with_its_workers(proc)


def test_tuning_records_that_do_not_fit_fall_back_to_hand_written(tmp_path, monkeypatch, rng):
    """A verdict with no choice in it, a tuned verdict without its trace, and a separable's trace
    filed under a depthwise workload: each kernel runs its hand-written schedule, with a
    warning naming the folder, and computes the reference."""
    from tvmsep.verdicts import module_hash
    folder = tmp_path / FOLDER
    folder.mkdir()
    shapes = ((1, 6, 6, 3), (1, 6, 6, 5), (1, 7, 7, 4))
    workloads = [depthwise_workload(s, "float32", (3, 3, s[3], 1), "float32", [1, 1, 1, 1], "SAME") for s in shapes]
    separable = separable_workload((1, 6, 6, 8), "float32", (3, 3, 8, 1), "float32", (1, 1, 8, 16), "float32",
                                   [1, 1, 1, 1], "SAME")
    foreign = plain_json(build.hand_schedule(separable, host_target()).trace.as_json(remove_postproc=False))
    choices = [{}, {"use": "tuned"}, {"use": "tuned", "trace": foreign}]
    with open(folder / VERDICT_FILE, "w") as f:
        for wl, choice in zip(workloads, choices):
            verdict = {"workload": module_hash(build.workload_module(wl, host_target())), "describe": wl.describe(),
                       **choice}
            f.write(json.dumps(verdict) + "\n")
    monkeypatch.setenv("TVMSEP_TUNING_DIR", str(tmp_path))
    ops.forget_kernels()
    try:
        for wl, why in zip(workloads, ("names no schedule", "names no schedule", "does not apply")):
            x = rng.standard_normal(wl.input_shape, dtype=np.float32)
            f = rng.standard_normal(wl.filter_shape, dtype=np.float32)
            with pytest.warns(build.TuningWarning, match=f"{wl.describe()} in {folder}: .*{why}"):
                y = tvmsep.depthwise_conv2d(x, f, [1, 1, 1, 1], "SAME")
            assert_close(y, depthwise_reference(x, f, wl), "float32")
    finally:
        ops.forget_kernels()


def test_a_tuning_folder_replaces_the_shipped_logs(tmp_path, monkeypatch):
    """$TVMSEP_TUNING_DIR is where verdicts are read, in place of the shipped logs: pointed at an
    empty folder, every workload gets its hand-written schedule (how that schedule is measured
    alone on a CPU that has shipped logs)."""
    shipped = tvm.target.Target({"kind": "llvm", "mcpu": "znver4", "num-cores": 2})
    wl = next(layer for layer in network("mobilenet_v1") if layer.name == "v1_13").workload("separable")
    monkeypatch.delenv("TVMSEP_TUNING_DIR", raising=False)
    assert build.tuned_trace(wl, shipped) is not None, "a verdict shipped in tuning_logs/llvm-znver4"
    monkeypatch.setenv("TVMSEP_TUNING_DIR", str(tmp_path))
    build.forget_verdicts()
    try:
        assert build.tuned_trace(wl, shipped) is None
    finally:
        build.forget_verdicts()


def test_a_tuning_folder_others_can_write_is_not_used(tmp_path, monkeypatch):
    """$TVMSEP_TUNING_DIR gets the cache's permission rule: logs that other users can write
    (where a forged trace could be planted) are passed over with a warning."""
    from tvmsep import verdicts
    from tvmsep.verdicts import log_folders
    folder = tmp_path / FOLDER
    folder.mkdir()
    (folder / VERDICT_FILE).write_text("")
    monkeypatch.setenv("TVMSEP_TUNING_DIR", str(tmp_path))
    assert folder in log_folders(host_target())
    for path in (folder / VERDICT_FILE, folder, tmp_path):
        path.chmod(0o777 if path.is_dir() else 0o666)
        with pytest.warns(build.TuningWarning, match="writable by other users"):
            assert folder not in log_folders(host_target())
        path.chmod(0o755 if path.is_dir() else 0o644)
        verdicts._distrusted.clear()
        assert folder in log_folders(host_target())
