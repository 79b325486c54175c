"""Tuning logs: meta-schedule databases in TVM's own JSON format, safe to share.

A folder holds TVM's two files, so `tvm.s_tir.meta_schedule.database.JSONDatabase`
reads it as is:

    database_workload.json       one line per workload: [structural hash, module]
    database_tuning_record.json  one line per measured candidate: [workload line, record]

plus `verdicts.json`, tvmsep's own: one line per finished tuning job, saying
whether the best record beat the hand-written schedule side by side.

Every line is appended with a single write under an exclusive lock on
`.lock`, then synced, so jobs sharing a folder never interleave lines, and a
job killed at any moment leaves at most a partial last line, which the next
writer trims (it was never a whole record). Lines other jobs append are picked
up before each read and write, so workload line numbers stay consistent.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import stat
import warnings
from pathlib import Path
from typing import Any, Iterator

import tvm
import tvm_ffi
from tvm.ir.utils import derived_object
from tvm.s_tir.meta_schedule.database import PyDatabase, TuningRecord
from tvm.s_tir.meta_schedule.database import Workload as TVMWorkload

__all__ = ["TuningLog", "TuningWarning", "module_hash", "plain_json", "record_seconds", "read_verdicts",
           "target_folder_name", "log_folders", "WORKLOAD_FILE", "RECORD_FILE", "VERDICT_FILE", "USE_TUNED", "USE_HAND"]

WORKLOAD_FILE = "database_workload.json"
RECORD_FILE = "database_tuning_record.json"
VERDICT_FILE = "verdicts.json"
# A verdict's "use": the schedule its job found faster, side by side.
USE_TUNED = "tuned"  # the verdict's "trace"
USE_HAND = "hand"  # the hand-written schedule
# A failed candidate (build error, crash, timeout) is stored with this time, as TVM does.
FAILED_SECONDS = 1e10


def module_hash(mod: tvm.IRModule) -> str:
    """A workload's key in the logs: its structural hash, as TVM writes it in
    database_workload.json and as verdicts name their workload."""
    return str(tvm_ffi.structural_hash(mod))


def plain_json(value: Any) -> Any:
    """TVM's JSON values (Array, Map, boxed scalars) as plain Python for `json`."""
    if isinstance(value, (str, bool, int, float)) or value is None:
        return value
    if hasattr(value, "items"):
        return {str(k): plain_json(v) for k, v in value.items()}
    if hasattr(value, "__iter__"):
        return [plain_json(v) for v in value]
    return value.value


class _Lines:
    """One append-only JSON-lines file: whole lines in, whole lines out."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = 0  # bytes already parsed

    def trim_partial_tail(self) -> None:
        """Drop a last line without its newline: a writer died in the middle of it."""
        if not self.path.exists():
            return
        data = self.path.read_bytes()
        if data and not data.endswith(b"\n"):
            keep = data.rfind(b"\n") + 1
            warnings.warn(f"{self.path}: dropping an unfinished last line ({len(data) - keep} bytes) "
                          "left by an interrupted job", stacklevel=3)
            with open(self.path, "r+b") as f:
                f.truncate(keep)

    def read_new(self) -> list[Any]:
        """Parsed lines appended since the last call; stops before a partial last line."""
        if not self.path.exists():
            return []
        with open(self.path, "rb") as f:
            f.seek(self.offset)
            data = f.read()
        complete = data[:data.rfind(b"\n") + 1]
        self.offset += len(complete)
        rows = []
        for number, line in enumerate(complete.splitlines()):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError:
                    warnings.warn(f"{self.path}: skipping an unreadable line", stacklevel=3)
                    rows.append(None)  # keeps line numbers (workload indices) aligned
        return rows

    def append(self, row: Any) -> None:
        line = (json.dumps(plain_json(row), separators=(",", ":")) + "\n").encode()
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, line)
            os.fsync(fd)
        finally:
            os.close(fd)


@derived_object
class TuningLog(PyDatabase):
    """A meta-schedule database over one folder, shared safely between processes.

    `writable=False` opens a shipped, read-only folder (no lock, no repair).
    """

    def __init__(self, folder: str | os.PathLike, writable: bool = True) -> None:
        super().__init__()
        self.folder = Path(folder)
        self.writable = writable
        self._workload_file = _Lines(self.folder / WORKLOAD_FILE)
        self._record_file = _Lines(self.folder / RECORD_FILE)
        self._verdict_file = _Lines(self.folder / VERDICT_FILE)
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
            self._workload_file.append(workload.as_json())
            self._sync()
            return self._workloads[self._find(mod)]

    def commit_tuning_record(self, record: TuningRecord) -> None:
        if not self.writable:
            raise PermissionError(f"{self.folder} is opened read-only")
        with self._locked():
            self._sync()
            index = self._index_of(record.workload)
            self._record_file.append([index, record.as_json()])
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

    def commit_verdict(self, verdict: dict) -> None:
        """Append a finished job's choice for one workload (see `read_verdicts`)."""
        with self._locked():
            self._verdict_file.append(verdict)


def read_verdicts(folder: Path) -> dict[str, dict]:
    """The latest verdict per workload (structural hash) in `folder`.

    Reads only `verdicts.json`: compiling needs nothing else, and parsing the
    whole log takes seconds."""
    verdicts: dict[str, dict] = {}
    for verdict in _Lines(folder / VERDICT_FILE).read_new():
        if isinstance(verdict, dict) and isinstance(verdict.get("workload"), str):
            verdicts[verdict["workload"]] = verdict
    return verdicts


def target_folder_name(target: tvm.target.Target) -> str:
    """Log folder of a target: its kind and CPU/GPU name, e.g. `llvm-znver5`."""
    arch = target.attrs.get("mcpu", "") or target.attrs.get("arch", "")
    return f"{target.kind.name}-{arch}" if arch else target.kind.name


def log_folders(target: tvm.target.Target) -> list[Path]:
    """Where compiled workloads look for tuning verdicts, first match wins:
    `$TVMSEP_TUNING_DIR/<target>` if set, then the logs shipped in the package."""
    from importlib import resources
    name = target_folder_name(target)
    folders = []
    if os.environ.get("TVMSEP_TUNING_DIR"):
        folder = Path(os.environ["TVMSEP_TUNING_DIR"]) / name
        if _trusted(folder):
            folders.append(folder)
    return folders + [Path(str(resources.files("tvmsep.tuning_logs"))) / name]


class TuningWarning(UserWarning):
    """A tuning record or folder could not be used; the hand-written schedule runs instead."""


_distrusted: set[Path] = set()  # folders already warned about


def _trusted(folder: Path) -> bool:
    """Whether schedules may be taken from `folder`: it, the folder above it and its verdicts
    are writable only by their owner, who is this user (or root), as the module cache requires
    of its directory. A schedule from a log anyone can write is code anyone can choose: a
    forged trace can compute in another precision, or wrongly."""
    for path in (folder.parent, folder, folder / VERDICT_FILE):
        try:
            info = path.stat()
        except FileNotFoundError:
            continue
        except OSError:
            return False
        if info.st_mode & (stat.S_IWGRP | stat.S_IWOTH) or info.st_uid not in (os.getuid(), 0):
            if folder not in _distrusted:
                _distrusted.add(folder)
                warnings.warn(f"tvmsep: not using the tuning logs in {folder}: {path} is writable by other users "
                              "or not owned by you; the hand-written schedules run instead", TuningWarning,
                              stacklevel=3)
            return False
    return True


def record_seconds(record: TuningRecord) -> float:
    """Mean measured time of a record (FAILED_SECONDS when it never ran)."""
    if not record.run_secs:
        return FAILED_SECONDS
    return sum(float(s) for s in record.run_secs) / len(record.run_secs)
