"""Tuning logs: meta-schedule databases in TVM's own JSON format, safe to share.

A folder holds TVM's two files, so `tvm.s_tir.meta_schedule.database.JSONDatabase`
reads it as is:

    database_workload.json       one line per workload: [structural hash, module]
    database_tuning_record.json  one line per measured candidate: [workload line, record]

plus `verdicts.json`, tvmsep's own: one line per finished tuning job, saying
whether the best record beat the hand-written schedule side by side (the
`verdicts` module reads it for compiling).

Every line is appended (`files.JsonLines`) under an exclusive lock on `.lock`,
so jobs sharing a folder never interleave lines, and a job killed at any
moment leaves at most a partial last line, which the next writer trims (it was
never a whole record). Lines other jobs append are picked
up before each read and write, so workload line numbers stay consistent.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import warnings
from pathlib import Path
from typing import Iterator

import tvm
import tvm_ffi
from tvm.ir.utils import derived_object
from tvm.s_tir.meta_schedule.database import PyDatabase, TuningRecord
from tvm.s_tir.meta_schedule.database import Workload as TVMWorkload

from .files import JsonLines
from .verdicts import VERDICT_FILE, Verdict, module_hash, plain_json

__all__ = ["TuningLog", "record_seconds", "WORKLOAD_FILE", "RECORD_FILE", "FAILED_SECONDS"]

WORKLOAD_FILE = "database_workload.json"
RECORD_FILE = "database_tuning_record.json"
# A failed candidate (build error, crash, timeout) is stored with this time, as TVM does.
FAILED_SECONDS = 1e10


@derived_object
class TuningLog(PyDatabase):
    """A meta-schedule database over one folder, shared safely between processes.

    `writable=False` opens a shipped, read-only folder (no lock, no repair).
    """

    def __init__(self, folder: str | os.PathLike, writable: bool = True) -> None:
        super().__init__()
        self.folder = Path(folder)
        self.writable = writable
        self._workload_file = JsonLines(self.folder / WORKLOAD_FILE)
        self._record_file = JsonLines(self.folder / RECORD_FILE)
        self._verdict_file = JsonLines(self.folder / VERDICT_FILE)
        self._workloads: list[TVMWorkload | None] = []
        self._by_hash: dict[str, list[int]] = {}
        self._records: dict[int, list[TuningRecord]] = {}
        if writable:
            self.folder.mkdir(parents=True, exist_ok=True)
        with self._locked():
            if writable:
                for lines in (self._workload_file, self._record_file, self._verdict_file):
                    lines.trim_partial_tail()
            self._sync()

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        if not self.writable:
            yield
            return
        with open(self.folder / ".lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def _sync(self) -> None:
        """Take in what other jobs appended (call under the lock)."""
        for row in self._workload_file.read_new():
            index = len(self._workloads)
            workload = None if row is None else TVMWorkload.from_json(row)
            self._workloads.append(workload)
            if workload is not None:
                self._by_hash.setdefault(row[0], []).append(index)
        for row in self._record_file.read_new():
            if row is None:
                continue
            index, record = row
            workload = self._workloads[index] if 0 <= index < len(self._workloads) else None
            if workload is None:
                warnings.warn(f"{self._record_file.path}: a record names workload line {index}, "
                              "which is missing or unreadable; skipped", stacklevel=2)
                continue
            self._records.setdefault(index, []).append(TuningRecord.from_json(record, workload))

    def _find(self, mod: tvm.IRModule) -> int | None:
        for index in self._by_hash.get(module_hash(mod), []):
            if tvm_ffi.structural_equal(self._workloads[index].mod, mod):
                return index
        return None

    def _index_of(self, workload: TVMWorkload) -> int | None:
        return self._find(workload.mod)

    # -- PyDatabase ---------------------------------------------------------

    def has_workload(self, mod: tvm.IRModule) -> bool:
        with self._locked():
            self._sync()
            return self._find(mod) is not None

    def commit_workload(self, mod: tvm.IRModule) -> TVMWorkload:
        with self._locked():
            self._sync()
            index = self._find(mod)
            if index is not None:
                return self._workloads[index]
            if not self.writable:
                raise PermissionError(f"{self.folder} is opened read-only")
            workload = TVMWorkload(mod)
            self._workload_file.append(plain_json(workload.as_json()))
            self._sync()
            return self._workloads[self._find(mod)]

    def commit_tuning_record(self, record: TuningRecord) -> None:
        if not self.writable:
            raise PermissionError(f"{self.folder} is opened read-only")
        with self._locked():
            self._sync()
            index = self._index_of(record.workload)
            self._record_file.append([index, plain_json(record.as_json())])
            self._sync()

    def get_top_k(self, workload: TVMWorkload, top_k: int) -> list[TuningRecord]:
        with self._locked():
            self._sync()
        measured = [r for r in self.records(workload) if record_seconds(r) < FAILED_SECONDS]
        return sorted(measured, key=record_seconds)[:top_k]

    def get_all_tuning_records(self) -> list[TuningRecord]:
        return [r for records in self._records.values() for r in records]

    def __len__(self) -> int:
        return sum(len(records) for records in self._records.values())

    # -- tvmsep's additions -------------------------------------------------

    def records(self, workload: TVMWorkload) -> list[TuningRecord]:
        """Every record of `workload`, failed ones included, in the order measured."""
        index = self._index_of(workload)
        return list(self._records.get(index, [])) if index is not None else []

    def commit_verdict(self, verdict: Verdict) -> None:
        """Append a finished job's choice for one workload (`verdicts.read_verdicts` reads it)."""
        with self._locked():
            self._verdict_file.append(verdict.to_json())


def record_seconds(record: TuningRecord) -> float:
    """Mean measured time of a record (FAILED_SECONDS when it never ran)."""
    if not record.run_secs:
        return FAILED_SECONDS
    return sum(float(s) for s in record.run_secs) / len(record.run_secs)
