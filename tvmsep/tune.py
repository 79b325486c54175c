"""Auto-tuning jobs: meta-schedule search seeded by the hand-written schedules.

For each workload, one job:

1. measures the hand-written schedule (it is a record like any other, the
   first) and each structural alternative at the hand-written sizes;
2. searches two spaces with meta-schedule's evolutionary search and XGBoost
   cost model: the hand-written schedule's own knobs (`ScheduleFn` over
   `schedules.<kind>.design_spaces`: the hand-written schedule, whose default
   decisions are the hand-written choices, and its structural alternatives
   such as other compute-at points) and TVM's generic rules
   (`PostOrderApply`), sharing one budget;
3. measures the fastest few records and the last job's choice again side by
   side (taking turns, several rounds, medians), because this kind of machine
   drifts by 2x between minutes, then the best of them against the hand-written schedule
   the same way, and writes a verdict: the tuned schedule is used only if it
   won.

Records go to a `TuningLog` folder per target; a job continues from the
records already there, so a stopped job loses nothing and a rerun finishes it.
Measurement is local, or on devices behind a TVM RPC tracker.
"""

from __future__ import annotations

import dataclasses
import datetime
import functools
import json
import math
import os
import shutil
import statistics
import tempfile
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import tvm
from tvm.ir.utils import derived_object
from tvm.s_tir import meta_schedule as ms
from tvm.s_tir import Schedule
from tvm.s_tir.meta_schedule.arg_info import ArgInfo
from tvm.s_tir.meta_schedule.runner.local_runner import default_alloc_argument
from tvm.s_tir.meta_schedule.runner.utils import alloc_argument_common
from tvm.target import Target

from . import runtime
from .backends import backend_for
from .build import compile_scheduled, hand_schedule, scheduled_module, schedules_for, workload_module
from .spec import Workload
from .target import resolve_target
from .tuning_log import FAILED_SECONDS, TuningLog, record_seconds
from .verdicts import USE_HAND, USE_TUNED, Verdict, module_hash, plain_json, read_verdicts, target_folder_name

__all__ = ["TuneOutcome", "TuningError", "tune", "format_table", "build_candidate", "export_candidate",
           "fill_on_host", "place_on_host", "make_builder", "make_runner"]

# Candidates per search round; small, so progress shows and a kill loses little.
TRIALS_PER_ROUND = 8
# Side-by-side rounds at the end of a job, to pick among the fastest logged
# records and then to check the pick against hand-written.
VERIFY_ROUNDS = 5
# Fastest logged records measured again at the end of a job (with the last job's choice).
FINALISTS = 3


class TuningError(RuntimeError):
    """A tuning job could not measure what it must compare; it wrote no verdict."""


@dataclasses.dataclass(frozen=True)
class TuneOutcome:
    workload: Workload
    hand_ms: float  # side by side with tuned_ms, at the end of the job
    tuned_ms: float  # best record found (== hand_ms when nothing else ran)
    trials: int  # records of this workload in the log, failed ones included
    use: str  # USE_TUNED or USE_HAND

    @property
    def speedup(self) -> float:
        """What users get: the chosen schedule against the hand-written one."""
        return self.hand_ms / self.tuned_ms if self.use == USE_TUNED else 1.0


def build_candidate(mod: tvm.IRModule, target: Target, _params) -> tvm.runtime.Module:
    """Meta-schedule builder function: tvmsep's own compile path.

    TVM's default one imports `tvm.s_tir.tensor_intrin` in every fresh build
    worker, which takes tens of seconds and times builds out."""
    return compile_scheduled(mod, target).mod


def export_candidate(target: str, compiler: str | None, mod: tvm.runtime.Module) -> str:
    """Meta-schedule export function: the candidate linked here into a shared library, by its
    backend (with the cross compiler for another architecture), so the machine that measures
    it needs TVM's runtime alone. TVM's default ships a tar of object files for the measuring
    machine to link, which a board without a compiler cannot."""
    target = Target(target)
    path = os.path.join(tempfile.mkdtemp(prefix="tvmsep-candidate-"), "candidate.so")
    backend_for(target).export(mod, path, target, compiler)
    return path


def fill_on_host(session, device, args_info, alloc_repeat: int) -> list[list[tvm.runtime.Tensor]]:
    """Meta-schedule argument allocator: random inputs drawn here and copied to the device.
    TVM's default asks the device for `random_fill_for_measure`, which the runtime-only
    TVM a board carries does not have."""
    rng = np.random.default_rng()

    def fill(tensor: tvm.runtime.Tensor) -> None:
        tensor.copyfrom(rng.uniform(-1.0, 1.0, tuple(tensor.shape)).astype(str(tensor.dtype)))

    return alloc_argument_common(fill, device, args_info, alloc_repeat)


def place_on_host(device, args_info, alloc_repeat: int) -> list[list[tvm.runtime.Tensor]]:
    """Meta-schedule argument allocator for measuring on this machine's CPU: random inputs, each
    on a cache line, and the result placed against the first input as tvmsep's calls place their
    results (`runtime.placed_empty`). TVM's allocator puts arrays made one after another a line
    or two apart in their pages, where a depthwise kernel's stores hold up its loads (4K
    aliasing): every candidate would be timed in the case tvmsep's calls avoid, and the search
    would favour the schedules that suffer least from it. Another device keeps TVM's default."""
    if device.dlpack_device_type() != tvm.cpu().dlpack_device_type():
        return default_alloc_argument(device, args_info, alloc_repeat)
    rng = np.random.default_rng()
    repeated = []
    for _ in range(alloc_repeat):
        arrays: list[np.ndarray] = []
        for kind, dtype, shape in args_info:
            if kind != "TENSOR":
                raise NotImplementedError(f"argument {kind} {dtype} {shape}")
            if 0 < len(arrays) == len(args_info) - 1:  # the result: the PrimFunc's last parameter
                array = runtime.placed_empty(shape, dtype, arrays[0])
            else:
                memory = np.empty(math.prod(shape) * np.dtype(dtype).itemsize + runtime.CACHE_LINE_BYTES, np.uint8)
                array = np.ndarray(tuple(shape), dtype, memory, -memory.ctypes.data % runtime.CACHE_LINE_BYTES)
            array[...] = rng.uniform(-1.0, 1.0, array.shape)
            arrays.append(array)
        repeated.append([tvm.runtime.from_dlpack(a) for a in arrays])  # each holds its array
    return repeated


def _evaluator() -> ms.runner.EvaluatorConfig:
    return ms.runner.EvaluatorConfig(number=5, repeat=5, min_repeat_ms=30, enable_cpu_cache_flush=False)


def make_builder(target: Target, compiler: str | None = None, timeout_sec: float = 60.0) -> ms.builder.Builder:
    """Builds candidates for `target` here, linked with `compiler` (default: see `export_candidate`)."""
    return ms.builder.LocalBuilder(f_build=build_candidate, f_export=functools.partial(
                                       export_candidate, str(target), compiler),
                                   timeout_sec=timeout_sec, max_workers=max(1, min(4, os.cpu_count() or 1)))


def make_runner(rpc: str | None = None, rpc_key: str | None = None, timeout_sec: float | None = None,
                rpc_workers: int = 1) -> ms.runner.Runner:
    """Measure here, or on devices registered under `rpc_key` with the tracker at `rpc` (HOST:PORT).
    A session over RPC is given longer (default 120 s against 30 s here): a board is slower, and
    the candidate travels to it."""
    if rpc is None:
        return ms.runner.LocalRunner(timeout_sec=timeout_sec or 30.0, evaluator_config=_evaluator(),
                                     f_alloc_argument=place_on_host)
    host, _, port = rpc.rpartition(":")
    if not host or not port.isdigit() or not rpc_key:
        raise ValueError(f"--rpc must be HOST:PORT with --rpc-key, got {rpc!r} and key {rpc_key!r}")
    config = ms.runner.RPCConfig(tracker_host=host, tracker_port=int(port), tracker_key=rpc_key,
                                 session_timeout_sec=int(timeout_sec or 120.0))
    return ms.runner.RPCRunner(config, _evaluator(), f_alloc_argument=fill_on_host, max_workers=rpc_workers)


@derived_object
class _Progress(ms.measure_callback.PyMeasureCallback):
    """Prints trials done and the best time so far after every round."""

    def __init__(self, report: Callable[[str], None], label: str, done: int, total: int, best: float) -> None:
        super().__init__()
        self.report, self.label, self.done, self.total, self.best = report, label, done, total, best

    def apply(self, task_scheduler, task_id, measure_candidates, builder_results, runner_results) -> None:
        failed = 0
        for result in runner_results:
            secs = [float(s) for s in (result.run_secs or [])]
            if result.error_msg or not secs:
                failed += 1
            else:
                self.best = min(self.best, statistics.fmean(secs))
        self.done += len(runner_results)
        best = f"best {self.best * 1e3:.4f} ms" if self.best < FAILED_SECONDS else "no candidate measured yet"
        self.report(f"  {self.label}: {self.done}/{self.total} trials, {best}"
                    + (f" ({failed} failed this round)" if failed else ""))


def _build_and_run(schedules: Sequence[tvm.IRModule], target: Target, builder,
                   runner) -> tuple[list[float], str | None]:
    """(mean seconds of each module, measured one after another, FAILED_SECONDS where it
    failed; the first failure's message, or None)."""
    built = builder.build([ms.builder.BuilderInput(mod, target) for mod in schedules])
    inputs, where, errors = [], [], []
    for i, (mod, result) in enumerate(zip(schedules, built)):
        if result.error_msg is None:
            inputs.append(ms.runner.RunnerInput(result.artifact_path, backend_for(target).device_type,
                                                ArgInfo.from_prim_func(mod["main"])))
            where.append(i)
        else:
            errors.append(f"build: {result.error_msg}")
    seconds = [FAILED_SECONDS] * len(schedules)
    try:
        for i, future in zip(where, runner.run(inputs)):
            result = future.result()
            if result.error_msg is None and result.run_secs:
                seconds[i] = statistics.fmean(float(s) for s in result.run_secs)
            else:
                errors.append(f"run: {result.error_msg or 'no time measured'}")
    finally:  # as meta-schedule's own search does with its candidates
        for result in built:
            if result.artifact_path is not None:
                shutil.rmtree(os.path.dirname(result.artifact_path), ignore_errors=True)
    return seconds, (errors[0] if errors else None)


def _finalists(log: TuningLog, workload, hand_key: str) -> list[Any]:
    """Traces (JSON) to measure again at the end of a job: the fastest logged
    records of schedules other than the hand-written one (which is the first
    record, and again a later one if the hand-written schedule changed after
    the log was started), and the schedule the last job chose, so that a rerun
    does not drop it over logged times taken minutes apart."""
    measured = sorted((r for r in log.records(workload)[1:] if record_seconds(r) < FAILED_SECONDS),
                      key=record_seconds)
    finalists: dict[str, Any] = {}
    for record in measured:
        if len(finalists) == FINALISTS:
            break
        if _trace_key(record.trace) != hand_key:
            trace = plain_json(record.trace.as_json(remove_postproc=False))
            finalists.setdefault(json.dumps(trace), trace)
    chosen = read_verdicts(log.folder).get(module_hash(workload.mod))
    if chosen is not None and chosen.use == USE_TUNED and chosen.trace is not None:
        finalists.setdefault(json.dumps(chosen.trace), chosen.trace)
    return list(finalists.values())


def _spaces(wl: Workload, target: Target) -> list[tuple[str, ms.space_generator.SpaceGenerator]]:
    hand = ms.space_generator.ScheduleFn(lambda sch: schedules_for(target).design_spaces(sch, wl, target))
    return [("knobs", hand), ("generic", ms.space_generator.PostOrderApply())]


class _Budget:
    """Trials left to one job's search, shared by the searches of its spaces."""

    def __init__(self, trials: int) -> None:
        self.left = trials


@derived_object
class _BudgetedSearch(ms.search_strategy.PySearchStrategy):
    """An evolutionary search whose last round stops at the job's budget.

    meta-schedule checks its global trial budget only between rounds, so with
    two spaces taking turns the job overshot it by up to a round (64 trials
    asked, 71 logged); this cuts the round that would cross it instead."""

    def __init__(self, budget: _Budget, inner: ms.search_strategy.SearchStrategy | None = None) -> None:
        super().__init__()
        self.budget = budget
        self.inner = inner or ms.search_strategy.EvolutionarySearch(population_size=128, init_min_unmeasured=32)

    def _initialize_with_tune_context(self, context) -> None:
        self.inner._initialize_with_tune_context(context)

    def pre_tuning(self, max_trials, num_trials_per_iter, design_spaces, database=None, cost_model=None) -> None:
        self.inner.pre_tuning(max_trials, num_trials_per_iter, design_spaces, database, cost_model)

    def post_tuning(self) -> None:
        self.inner.post_tuning()

    def generate_measure_candidates(self):
        candidates = self.inner.generate_measure_candidates() if self.budget.left > 0 else None
        if candidates is None:
            return None
        candidates = list(candidates)[:self.budget.left]
        self.budget.left -= len(candidates)
        return candidates

    def notify_runner_results(self, measure_candidates, results) -> None:
        self.inner.notify_runner_results(measure_candidates, results)

    def clone(self) -> "_BudgetedSearch":
        return _BudgetedSearch(self.budget, self.inner.clone())


def _search(wl: Workload, target: Target, log: TuningLog, trials: int, builder, runner, progress: _Progress,
            seed: int | None) -> None:
    mod = workload_module(wl, target)
    budget = _Budget(trials)
    tasks = [ms.TuneContext(mod=mod, target=target, space_generator=space, task_name=name,
                            search_strategy=_BudgetedSearch(budget),
                            num_threads=os.cpu_count() or 1, rand_state=-1 if seed is None else seed + i,
                            logger=None).clone()
             for i, (name, space) in enumerate(_spaces(wl, target))]
    with tempfile.TemporaryDirectory(prefix="tvmsep-tune-") as work_dir:
        # Round-robin over the two spaces; a space that runs out of new
        # candidates (the knob space is small) leaves the budget to the other.
        ms.tune.tune_tasks(tasks=tasks, task_weights=[1.0] * len(tasks), work_dir=work_dir,
                           max_trials_global=trials, max_trials_per_task=trials,
                           num_trials_per_iter=max(1, min(TRIALS_PER_ROUND, trials // len(tasks))),
                           builder=builder, runner=runner,
                           database=log, cost_model=ms.cost_model.XGBModel(num_tuning_cores=os.cpu_count() or 1),
                           measure_callbacks=ms.measure_callback.MeasureCallback.create("default") + [progress],
                           task_scheduler="round-robin")


def _measure_defaults(wl: Workload, target: Target, log: TuningLog, workload, builder, runner,
                      report: Callable[[str], None]) -> None:
    """Log each design space at its default decisions unless it already is:
    the hand-written schedule (always the first record) and its structural
    alternatives with the hand-written sizes, so every alternative is measured
    at least once however the search samples. A log from before a space
    existed gets the new defaults appended."""
    logged = {_trace_key(r.trace) for r in log.records(workload)}
    spaces = schedules_for(target).design_spaces(Schedule(workload.mod), wl, target)
    new = [(i, sch) for i, sch in enumerate(spaces) if _trace_key(sch.trace) not in logged]
    seconds, error = _build_and_run([sch.mod for _, sch in new], target, builder, runner) if new else ([], None)
    for (i, sch), secs in zip(new, seconds):
        log.commit_tuning_record(ms.database.TuningRecord(
            sch.trace, workload, [secs] if secs < FAILED_SECONDS else None, target,
            ArgInfo.from_prim_func(workload.mod["main"])))
        report(("hand-written" if i == 0 else f"design space {i + 1} at the hand-written sizes")
               + (f" {secs * 1e3:.4f} ms" if secs < FAILED_SECONDS else f" failed: {_gist(error)}"))


def _gist(error: str | None) -> str:
    """The last non-empty line of a worker's error message: the exception itself."""
    lines = [line for line in (error or "").splitlines() if line.strip()]
    return lines[-1].strip() if lines else "no message"


def _trace_key(trace) -> str:
    """The trace as schedule code, decisions included (equal for equal schedules)."""
    return str(trace)


def _medians(mods: Sequence[tvm.IRModule], target: Target, builder, runner) -> tuple[list[float], str | None]:
    """(median seconds of each module over the VERIFY_ROUNDS rounds that take them in turn, of
    the rounds it was measured in, FAILED_SECONDS if in none; the first failure's message)."""
    seconds, error = _build_and_run(list(mods) * VERIFY_ROUNDS, target, builder, runner)
    measured = [[s for s in seconds[i::len(mods)] if s < FAILED_SECONDS] for i in range(len(mods))]
    return [statistics.median(m) if m else FAILED_SECONDS for m in measured], error


def _verify(wl: Workload, target: Target, log: TuningLog, workload, builder,
            runner) -> tuple[float, float, Any, str | None]:
    """(hand s, best finalist s, best finalist's trace, the first failure's message), measured
    side by side.

    Each logged time was taken on a machine that drifts, so the finalists are
    measured again side by side to pick the best, and the pick is then
    measured afresh against hand-written: the numbers that picked it favour it."""
    hand_sch = hand_schedule(wl, target, workload.mod)
    finalists = _finalists(log, workload, _trace_key(hand_sch.trace))
    if not finalists:
        (hand_s,), error = _medians([hand_sch.mod], target, builder, runner)
        return hand_s, FAILED_SECONDS, None, error
    mods = [scheduled_module(wl, target, trace) for trace in finalists]
    pick = 0
    if len(mods) > 1:
        seconds, _ = _medians(mods, target, builder, runner)
        pick = seconds.index(min(seconds))
    (hand_s, best_s), error = _medians([hand_sch.mod, mods[pick]], target, builder, runner)
    return hand_s, best_s, finalists[pick], error


def tune(workloads: Sequence[Workload], *, target=None, trials: int = 64,
         log_dir: str | os.PathLike = "tuning_logs", rpc: str | None = None, rpc_key: str | None = None,
         compiler: str | None = None, builder: ms.builder.Builder | None = None,
         runner: ms.runner.Runner | None = None, report: Callable[[str], None] = print,
         seed: int | None = None) -> list[TuneOutcome]:
    """Tune each distinct workload for `target` (None: this CPU) up to `trials` records
    (counting those already logged), measuring here or, for another machine, on it over RPC
    (`rpc`, `rpc_key`), with candidates linked here by `compiler` (see `export_candidate`)."""
    if trials < 1:
        raise ValueError(f"`trials` must be at least 1, got {trials}")
    target = resolve_target(target)
    if rpc is None and runner is None:
        unavailable = backend_for(target).unavailable(target)
        if unavailable:
            raise ValueError(f"`target` {target}: {unavailable}, so it is measured there: give the RPC tracker "
                             "that machine is registered with and its key (--rpc HOST:PORT --rpc-key KEY)")
    log = TuningLog(Path(log_dir) / target_folder_name(target))
    builder = builder or make_builder(target, compiler)
    runner = runner or make_runner(rpc, rpc_key)
    distinct = list(dict.fromkeys(workloads))
    outcomes = []
    for n, wl in enumerate(distinct, 1):
        label = f"[{n}/{len(distinct)}] {wl.describe()}"
        workload = log.commit_workload(workload_module(wl, target))
        _measure_defaults(wl, target, log, workload, builder, runner, lambda line: report(f"{label}: {line}"))
        done = len(log.records(workload))
        if 1 < done < trials:
            report(f"{label}: continuing from {done} logged trials")
        if done < trials:
            best = log.get_top_k(workload, 1)
            progress = _Progress(report, label, done, trials, record_seconds(best[0]) if best else math.inf)
            _search(wl, target, log, trials - done, builder, runner, progress, seed)
        else:
            report(f"{label}: {done} trials already logged")
        hand_s, tuned_s, best, error = _verify(wl, target, log, workload, builder, runner)
        if hand_s >= FAILED_SECONDS:  # nothing to compare a candidate with: no verdict
            raise TuningError(f"{label}: the hand-written schedule could not be measured, so no candidate can be "
                              f"judged; no verdict written ({len(log.records(workload))} records logged). "
                              f"First error: {_gist(error)}")
        use = USE_TUNED if best is not None and tuned_s < hand_s else USE_HAND
        log.commit_verdict(Verdict(
            workload=module_hash(workload.mod), describe=wl.describe(), use=use, hand_ms=hand_s * 1e3,
            tuned_ms=tuned_s * 1e3, trials=len(log.records(workload)), trace=best,
            date=datetime.datetime.now().isoformat(timespec="seconds")))
        outcome = TuneOutcome(wl, hand_s * 1e3, (hand_s if best is None else tuned_s) * 1e3,
                              len(log.records(workload)), use)
        report(f"{label}: hand {outcome.hand_ms:.4f} ms, best {outcome.tuned_ms:.4f} ms side by side -> {use}")
        outcomes.append(outcome)
    return outcomes


def format_table(outcomes: Sequence[TuneOutcome]) -> str:
    lines = [f"{'workload':<58} {'hand ms':>9} {'tuned ms':>9} {'speed-up':>8} {'trials':>6}  use",
             "-" * 100]
    for o in outcomes:
        lines.append(f"{o.workload.describe():<58} {o.hand_ms:9.4f} {o.tuned_ms:9.4f} {o.speedup:7.2f}x "
                     f"{o.trials:6d}  {o.use}")
    if outcomes:
        geomean = statistics.geometric_mean(o.speedup for o in outcomes)
        lines.append(f"geometric-mean speed-up of the chosen schedules over hand-written: {geomean:.2f}x")
    return "\n".join(lines)
