"""Tuning verdicts: what a finished tuning job chose, and where compiling finds it.

A log folder's `verdicts.json` holds one line per finished job: a `Verdict`
naming its workload by structural hash, and whether the best record beat the
hand-written schedule side by side. Compiling reads only this file, through
`log_folders` and `read_verdicts`; the meta-schedule database beside it
(`tuning_log`) is for tuning jobs.
"""

from __future__ import annotations

import dataclasses
import os
import stat
import warnings
from pathlib import Path
from typing import Any

import tvm
import tvm_ffi

from .backends import backend_for
from .files import JsonLines

__all__ = ["Verdict", "TuningWarning", "module_hash", "plain_json", "read_verdicts", "target_folder_name",
           "log_folders", "shipped_log_folder", "VERDICT_FILE", "USE_TUNED", "USE_HAND"]

VERDICT_FILE = "verdicts.json"
# A verdict's `use`: the schedule its job found faster, side by side.
USE_TUNED = "tuned"  # the verdict's `trace`
USE_HAND = "hand"  # the hand-written schedule


def module_hash(mod: tvm.IRModule) -> str:
    """A workload's key in the logs: its structural hash, as TVM writes it in its
    database and as verdicts name their workload."""
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


@dataclasses.dataclass(frozen=True)
class Verdict:
    """One finished tuning job's choice for one workload.

    Found by `workload`, the structural hash of the unscheduled module, alone:
    `describe` is there for people reading the file, so rewording it changes
    nothing. Every field but `workload` may be missing from a damaged or
    hand-made line; such a verdict may name no schedule (`names_a_schedule`)."""

    workload: str
    describe: str | None = None
    use: str | None = None
    hand_ms: float | None = None  # the two times measured side by side at the job's end
    tuned_ms: float | None = None
    trials: int | None = None  # records logged for the workload when the job ended
    trace: Any = None  # the tuned schedule, a JSON trace; None when no candidate was measured
    date: str | None = None

    @property
    def names_a_schedule(self) -> bool:
        return self.use == USE_HAND or (self.use == USE_TUNED and self.trace is not None)

    def to_json(self) -> dict[str, Any]:
        return {field.name: getattr(self, field.name) for field in dataclasses.fields(self)}

    @classmethod
    def from_json(cls, row: Any) -> Verdict | None:
        """The verdict on a line, or None where the line names no workload (unreadable)."""
        if not isinstance(row, dict) or not isinstance(row.get("workload"), str):
            return None
        names = {field.name for field in dataclasses.fields(cls)}
        return cls(**{key: value for key, value in row.items() if key in names})


def read_verdicts(folder: Path) -> dict[str, Verdict]:
    """The latest verdict per workload (structural hash) in `folder`.

    Reads only `verdicts.json`: compiling needs nothing else, and parsing the
    whole log takes seconds."""
    verdicts: dict[str, Verdict] = {}
    for row in JsonLines(folder / VERDICT_FILE).read_new():
        verdict = Verdict.from_json(row)
        if verdict is not None:
            verdicts[verdict.workload] = verdict
    return verdicts


def target_folder_name(target: tvm.target.Target) -> str:
    """Log folder of a target: its kind and CPU/GPU name, e.g. `llvm-znver5`."""
    return backend_for(target).log_folder(target)


def log_folders(target: tvm.target.Target) -> list[Path]:
    """Where compiled workloads look for tuning verdicts: `$TVMSEP_TUNING_DIR/<target>` if
    the variable is set, in place of the logs shipped in the package, else those. In place,
    not before them: a folder without a verdict for a workload (an empty one, or one that
    is not trusted) leaves it the hand-written schedule, so that the hand-written schedules
    can be run and measured alone."""
    if os.environ.get("TVMSEP_TUNING_DIR"):
        folder = Path(os.environ["TVMSEP_TUNING_DIR"]) / target_folder_name(target)
        return [folder] if _trusted(folder) else []
    return [shipped_log_folder(target)]


def shipped_log_folder(target: tvm.target.Target) -> Path:
    """The tuning logs for `target` shipped in the package (it may not exist)."""
    from importlib import resources
    return Path(str(resources.files("tvmsep.tuning_logs"))) / target_folder_name(target)


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
