"""How many transcriptions run at once on this machine, and how many CPU threads each gets.

Measured on the 2-core development machine (bench/bench_throughput.py): one CPU thread per
transcription costs 10-15% less CPU time per request than two threads sharing one, so by
default every usable core runs its own transcription with one thread. The thread count does
not change the decoded content (README, "Reproducibility"), so neither does this plan.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from offline_asr.errors import OfflineAsrError


def usable_cores() -> int:
    """The cores this process may run on (its CPU affinity, e.g. a container's cpuset)."""
    return len(os.sched_getaffinity(0)) or 1


@dataclass(frozen=True)
class WorkerPlan:
    """`workers` transcriptions at a time, each with `threads` CPU threads."""

    workers: int
    threads: int

    @classmethod
    def for_machine(cls, workers: int = 0, threads: int = 0) -> WorkerPlan:
        """0 workers: one per usable core; 0 threads: the cores shared out among the workers."""
        if workers < 0 or threads < 0:
            raise OfflineAsrError(
                f"workers ({workers}) and threads ({threads}) must be 0 (automatic) or more"
            )
        cores = usable_cores()
        workers = workers or cores
        return cls(workers, threads or max(1, cores // workers))
