"""How many transcriptions run at once on this machine, and how many CPU threads each gets.

Measured on the 2-core development machine (bench/bench_throughput.py, quiet machine): a
server whose two workers get both cores each answers a lone 4.5 s clip as fast as one worker
with both cores (1.16 req/s), a 5-minute file as fast as raw faster-whisper's batched pipeline
(16.2 s against 16.0 s), and two clients at once 1.36x faster than one worker; two workers of
one thread each do 1.28-1.36 req/s under load but answer a lone request 1.7x slower. So a
server gives each worker every core (the kernel shares them when all workers run), and bulk
work (`batch`), where only throughput counts, shares the cores out. The thread count does not
change the decoded content (README, "Reproducibility"), so neither does the plan.
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
    def for_machine(
        cls, workers: int = 0, threads: int = 0, *, share_cores: bool = True
    ) -> WorkerPlan:
        """0 workers: one per usable core. 0 threads: the cores shared out among the workers
        (bulk work), or with `share_cores=False` every core for each (a server's lone request
        runs at full speed)."""
        if workers < 0 or threads < 0:
            raise OfflineAsrError(
                f"workers ({workers}) and threads ({threads}) must be 0 (automatic) or more"
            )
        cores = usable_cores()
        workers = workers or cores
        return cls(workers, threads or (max(1, cores // workers) if share_cores else cores))
