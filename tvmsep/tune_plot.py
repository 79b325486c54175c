"""Pictures of tuning runs: best time so far against trials, per workload."""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Sequence

from .spec import Workload
from .target import resolve_target
from .build import workload_module
from tvm.s_tir.meta_schedule.database import Workload as TVMWorkload

from .tuning_log import FAILED_SECONDS, TuningLog, record_seconds
from .verdicts import module_hash, read_verdicts, target_folder_name

__all__ = ["plot_search"]


def plot_search(workloads: Sequence[Workload], log_dir: str | os.PathLike, path: str | os.PathLike,
                target=None) -> None:
    """One panel per workload: best time over the log's records in the order
    measured, and the job's closing side-by-side measurement of the
    hand-written and the best schedule as lines. Records measured in different
    minutes drift on a shared machine; the side-by-side pair is what decides."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    target = resolve_target(target)
    folder = Path(log_dir) / target_folder_name(target)
    log, verdicts = TuningLog(folder, writable=False), read_verdicts(folder)
    workloads = list(dict.fromkeys(workloads))
    columns = min(4, len(workloads)) or 1
    rows = math.ceil(len(workloads) / columns) or 1
    fig, axes = plt.subplots(rows, columns, figsize=(4 * columns, 3 * rows), squeeze=False)
    for ax, wl in zip(axes.flat, workloads):
        mod = workload_module(wl, target)
        records = log.records(TVMWorkload(mod))  # none if never tuned: an empty panel
        seconds = [record_seconds(r) for r in records]
        times = [s * 1e3 if s < FAILED_SECONDS else math.inf for s in seconds]
        best, curve = math.inf, []
        for t in times:
            best = min(best, t)
            curve.append(best)
        ax.plot(range(1, len(curve) + 1), curve, label="best so far, as logged")
        verdict = verdicts.get(module_hash(mod))
        if verdict is not None:
            ax.axhline(verdict.hand_ms, linestyle="--", color="gray", label="hand-written, side by side")
            if verdict.tuned_ms * 1e-3 < FAILED_SECONDS:
                ax.axhline(verdict.tuned_ms, linestyle=":", color="green", label=f"best, side by side "
                           f"({verdict.use} used)")
        ax.set_title(wl.describe(), fontsize=7)
        ax.set_xlabel("trials")
        ax.set_ylabel("ms")
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(workloads):]:
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
