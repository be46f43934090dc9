"""Running the command-line job in several processes (``torchrun --nproc_per_node=K main.py ...``):
the process group, which images each process takes (image i to rank i mod K), and the few
synchronisation points (agreeing on a setup error, waiting for every rank before the merge).

Processes only exchange small Python objects (error messages) and barriers, over a gloo group on
the CPU; images and metrics go through the shared output folder. A single process (no
``WORLD_SIZE`` in the environment, or ``WORLD_SIZE=1``) uses :data:`SINGLE`, whose methods do
nothing.
"""
from __future__ import annotations

import datetime
import logging
import os
from dataclasses import dataclass, field
from typing import Any, Sequence

log = logging.getLogger(__name__)

#: Seconds a process waits in a start-up collective (agreeing on errors, the barrier before
#: sampling) before it gives up; ``main.py --dist_timeout`` sets it.
DEFAULT_TIMEOUT_S = 1800.0
#: How long rank 0 waits for the other ranks to finish their images before it merges the
#: metrics. Ranks may legitimately finish hours apart (a resumed run whose remaining images are
#: unevenly spread), so this is long; a rank that dies closes its connections and the wait then
#: fails at once (and ``torchrun`` stops the other processes anyway).
FINISH_TIMEOUT = datetime.timedelta(days=30)


class DistributedError(RuntimeError):
    """Another process failed or could not be reached (the message says which)."""


class PeerFailed(DistributedError):
    """Raised on the other ranks when one rank failed at a synchronisation point; the failing
    rank reports the reason itself."""


def env_ranks(environ: dict | None = None) -> tuple[int, int, int]:
    """(rank, world_size, local_rank) from the variables ``torchrun`` sets (RANK, WORLD_SIZE,
    LOCAL_RANK); (0, 1, 0) when WORLD_SIZE is absent.

    Raises ValueError when they are not integers or inconsistent (rank outside [0, world_size))."""
    env = os.environ if environ is None else environ
    if "WORLD_SIZE" not in env:
        return 0, 1, 0
    try:
        world = int(env["WORLD_SIZE"])
        rank = int(env.get("RANK", "0"))
        local = int(env.get("LOCAL_RANK", str(rank)))
    except ValueError:
        raise ValueError("RANK / WORLD_SIZE / LOCAL_RANK in the environment must be integers (set by torchrun), "
                         f"got RANK={env.get('RANK')!r} WORLD_SIZE={env.get('WORLD_SIZE')!r} "
                         f"LOCAL_RANK={env.get('LOCAL_RANK')!r}") from None
    if world < 1 or not 0 <= rank < world or local < 0:
        raise ValueError(f"inconsistent process ranks: RANK={rank}, WORLD_SIZE={world}, LOCAL_RANK={local}")
    return rank, world, local


def shard(indices: Sequence[int], rank: int, world_size: int) -> list[int]:
    """The images of process ``rank`` among ``world_size``: those whose dataset index i has
    i mod world_size == rank (so the split does not depend on which images are already done).

    Example:
        >>> shard([0, 1, 2, 3, 4], 1, 2)
        [1, 3]
    """
    return [i for i in indices if i % world_size == rank]


@dataclass
class DistContext:
    """This process's place in a run: ``rank`` of ``world_size`` processes, ``local_rank`` on
    its node. With ``world_size`` 1 every method returns at once.

    ``group``: the gloo process group used for start-up collectives (timeout
    ``timeout_s``); ``finish_group``: the gloo group of :meth:`wait_for_all` (timeout
    :data:`FINISH_TIMEOUT`). Both are None for a single process."""
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str | None = None
    timeout_s: float = DEFAULT_TIMEOUT_S
    group: Any = field(default=None, repr=False)
    finish_group: Any = field(default=None, repr=False)

    @property
    def enabled(self) -> bool:
        """True when there is more than one process."""
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """True on rank 0 (the process that validates, merges and prints the results)."""
        return self.rank == 0

    def tag(self) -> str:
        """``"rank r/K"`` for several processes, else ``""`` (for log lines)."""
        return f"rank {self.rank}/{self.world_size}" if self.enabled else ""

    def agree(self, error: str | None) -> list[tuple[int, str]]:
        """Collective: every rank passes its error message (None if it is fine) and gets the
        [(rank, message)] of all failing ranks, the same list everywhere ([] when all are fine).

        Raises DistributedError when another rank cannot be reached within ``timeout_s`` seconds
        (it died, or never got here)."""
        if not self.enabled:
            return [] if error is None else [(self.rank, error)]
        import torch.distributed as dist
        gathered: list = [None] * self.world_size
        try:
            dist.all_gather_object(gathered, error, group=self.group)
        except RuntimeError as exc:
            raise DistributedError(f"lost contact with the other processes ({' '.join(str(exc).split())[:200]})") \
                from exc
        return [(r, msg) for r, msg in enumerate(gathered) if msg is not None]

    def barrier(self) -> None:
        """Collective: wait until every rank is here (at most ``timeout_s`` seconds).
        Raises DistributedError when another rank failed or timed out."""
        if not self.enabled:
            return
        import torch.distributed as dist
        try:
            dist.barrier(group=self.group)
        except RuntimeError as exc:
            raise DistributedError(f"another process failed or did not reach the barrier within {self.timeout_s:g} s "
                                   f"({' '.join(str(exc).split())[:200]})") from exc

    def wait_for_all(self) -> None:
        """Collective: wait (up to :data:`FINISH_TIMEOUT`) until every rank has finished its
        images. Raises DistributedError when another rank died (its connection closed)."""
        if not self.enabled:
            return
        import torch.distributed as dist
        try:
            dist.barrier(group=self.finish_group)
        except RuntimeError as exc:
            raise DistributedError("another process failed before finishing its images; the finished images are "
                                   "saved, run the same command again to resume "
                                   f"({' '.join(str(exc).split())[:200]})") from exc

    def gather(self, obj: Any) -> list | None:
        """Collective after :meth:`wait_for_all`: rank 0 gets [the object of rank 0, of rank 1,
        ...] (small picklable objects: feature arrays of a few thousand rows), the other ranks
        None; a single process gets [obj]. Raises DistributedError when another rank died."""
        if not self.enabled:
            return [obj]
        import torch.distributed as dist
        gathered: list = [None] * self.world_size
        try:
            dist.all_gather_object(gathered, obj, group=self.finish_group)
        except RuntimeError as exc:
            raise DistributedError(f"lost contact with the other processes while gathering results "
                                   f"({' '.join(str(exc).split())[:200]})") from exc
        return gathered if self.is_main else None

    def close(self) -> None:
        """Leave the process group (no-op for a single process); never raises."""
        if not self.enabled:
            return
        import torch.distributed as dist
        if dist.is_initialized():
            try:
                dist.destroy_process_group()
            except (RuntimeError, ValueError) as exc:
                log.debug("destroy_process_group: %s", exc)


#: The context of a single-process run.
SINGLE = DistContext()


def init(use_cuda: bool, timeout_s: float = DEFAULT_TIMEOUT_S, environ: dict | None = None) -> DistContext:
    """Join the process group that ``torchrun`` describes in the environment (``env://``
    rendezvous: MASTER_ADDR, MASTER_PORT, RANK, WORLD_SIZE, LOCAL_RANK), or return
    :data:`SINGLE` when WORLD_SIZE is absent or 1.

    Args:
        use_cuda: the run uses GPUs: the default group gets the nccl backend (when available)
            and this process the GPU ``cuda:LOCAL_RANK``; otherwise gloo. Our own collectives
            always use separate gloo groups on the CPU (they exchange only small objects).
        timeout_s: seconds a start-up collective may wait (> 0).

    Raises:
        ValueError: bad rank variables or timeout.
        DistributedError: the rendezvous failed (no other process within ``timeout_s``,
            address in use, ...).
    """
    rank, world, local = env_ranks(environ)
    if world == 1:
        return SINGLE
    if not timeout_s > 0:
        raise ValueError(f"--dist_timeout must be > 0 seconds, got {timeout_s}")
    import torch
    import torch.distributed as dist
    if not dist.is_available():
        raise DistributedError("this torch build has no torch.distributed; run a single process")
    backend = "gloo"
    if use_cuda and torch.cuda.is_available():
        if local < torch.cuda.device_count():   # else main.resolve_device reports it (exit 2 on every rank)
            torch.cuda.set_device(local)
        if dist.is_nccl_available():
            backend = "nccl"
    timeout = datetime.timedelta(seconds=timeout_s)
    try:
        if not dist.is_initialized():
            dist.init_process_group(backend=backend, timeout=timeout)
        group = dist.new_group(backend="gloo", timeout=timeout) if backend != "gloo" else dist.group.WORLD
        finish = dist.new_group(backend="gloo", timeout=FINISH_TIMEOUT)
    except (RuntimeError, ValueError) as exc:
        raise DistributedError(f"could not join the process group of {world} processes "
                               f"({' '.join(str(exc).split())[:300]})") from exc
    log.debug("rank %d/%d (local %d) joined the %s process group", rank, world, local, backend)
    return DistContext(rank=rank, world_size=world, local_rank=local, backend=backend, timeout_s=timeout_s,
                       group=group, finish_group=finish)
