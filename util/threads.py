"""How many CPU threads a run gives torch: one default for the CLI, the benchmarks and the speed
probe, so that none oversubscribes a shared machine (issue 22: a default run took 6.7 s per
MNIST image on a loaded 2-core machine, 1.0 s with one thread)."""
from __future__ import annotations

import os


def available_cores() -> int:
    """CPU cores this process may run on (its affinity mask; ``os.cpu_count()`` where there is none)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def machine_load() -> float:
    """The 1-minute load average (runnable processes), 0.0 where the OS has none."""
    try:
        return float(os.getloadavg()[0])
    except (AttributeError, OSError):
        return 0.0


def default_threads() -> int:
    """The default thread count: ``OMP_NUM_THREADS`` when set (a positive integer), else the
    cores left idle by the machine's load (cores − round(1-minute load)), at least 1 and at most
    the cores. Raises ValueError for an ``OMP_NUM_THREADS`` that is not a positive integer."""
    env = os.environ.get("OMP_NUM_THREADS", "").strip()
    if env:
        if not env.isdigit() or int(env) < 1:
            raise ValueError(f"OMP_NUM_THREADS={env!r} is not a positive integer")
        return int(env)
    cores = available_cores()
    return max(1, min(cores, cores - int(round(machine_load()))))
