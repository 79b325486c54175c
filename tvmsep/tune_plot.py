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

from .tuning_log import FAILED_SECONDS, TuningLog, record_seconds, target_folder_name

__all__ = ["plot_search"]


def plot_search(workloads: Sequence[Workload], log_dir: str | os.PathLike, path: str | os.PathLike,
                target=None) -> None:
    """One panel per workload: best time over the log's records in the order measured,
    with the hand-written schedule's time (the first record) as a dashed line."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    log = TuningLog(Path(log_dir) / target_folder_name(resolve_target(target)), writable=False)
    workloads = list(dict.fromkeys(workloads))
    columns = min(4, len(workloads)) or 1
    rows = math.ceil(len(workloads) / columns) or 1
    fig, axes = plt.subplots(rows, columns, figsize=(4 * columns, 3 * rows), squeeze=False)
    for ax, wl in zip(axes.flat, workloads):
        records = log.records(TVMWorkload(workload_module(wl)))  # none if never tuned: an empty panel
        seconds = [record_seconds(r) for r in records]
        times = [s * 1e3 if s < FAILED_SECONDS else math.inf for s in seconds]
        best, curve = math.inf, []
        for t in times:
            best = min(best, t)
            curve.append(best)
        ax.plot(range(1, len(curve) + 1), curve, label="best so far")
        if times and times[0] < math.inf:
            ax.axhline(times[0], linestyle="--", color="gray", label="hand-written")
        ax.set_title(wl.describe(), fontsize=7)
        ax.set_xlabel("trials")
        ax.set_ylabel("ms")
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(workloads):]:
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
