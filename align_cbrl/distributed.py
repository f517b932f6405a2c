"""Keeping one leader consistent across processes (``accelerate launch``, DeepSpeed, FSDP, torchrun).

Every rank trains its own share of the followers' data and estimates the leader's hypergradient
from the completion groups it generated. The leader is small, so it is replicated, not sharded:

1. at start-up the leader's parameters are broadcast from rank 0 (:meth:`LeaderSync.broadcast`);
2. after each local estimate, gradients are combined with a group-count-weighted all-reduce
   ``g = sum_r n_r g_r / sum_r n_r`` (:meth:`LeaderSync.all_reduce_gradients`), which equals the
   estimate one process would compute from all ranks' groups;
3. every rank takes the same optimiser step on the same bits; :meth:`LeaderSync.broadcast` again (or
   :meth:`LeaderSync.assert_identical`, a checksum all-gather) guards against drift;
4. only the main process writes checkpoints and logs (:attr:`LeaderSync.is_main_process`).

It works with any initialised ``torch.distributed`` process group (accelerate initialises one for
multi-process launches) and degrades to a no-op in a single process.

Failures (docs/reliability.md): :func:`init_process_group` joins the launcher's group with a
finite collective timeout (``collective_timeout`` seconds), so a rank whose peer died or hangs
raises instead of waiting forever; :func:`peer_gone` recognises that error (gloo's "Connection
closed by peer" when the peer's process is gone, "Timed out waiting" when it stopped
answering) and words it as one line (:class:`PeerGoneError`).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

__all__ = [
    "DEFAULT_COLLECTIVE_TIMEOUT_S",
    "LeaderSync",
    "PeerGoneError",
    "init_process_group",
    "parameter_checksum",
    "peer_gone",
]

DEFAULT_COLLECTIVE_TIMEOUT_S = 600.0
"""Seconds a collective waits for the other ranks before it raises (``collective_timeout``).
Finite, unlike waiting forever, and short next to torch's own defaults (30 min gloo, 10 min
NCCL through accelerate); long enough for rank 0 to write a large checkpoint while the
others wait at the next collective."""

# What gloo / NCCL / the TCP store say when a peer's process is gone or stopped answering.
_PEER_LOST = (
    "Connection closed by peer",
    "Connection reset by peer",
    "Broken pipe",
    "Timed out waiting",
    "Socket Timeout",
    "timed out",
    "Watchdog caught collective operation timeout",
    "NCCL communicator was aborted",
)


class PeerGoneError(RuntimeError):
    """Another rank of a multi-process run died or stopped answering during a collective."""


def init_process_group(timeout_s: float = DEFAULT_COLLECTIVE_TIMEOUT_S) -> Any:
    """Join the process group that ``accelerate launch`` / ``torchrun`` set up (their
    ``WORLD_SIZE`` / ``RANK`` / ``MASTER_*`` variables), with every collective limited to
    ``timeout_s`` seconds; returns accelerate's ``PartialState`` (a no-op state in a single
    process).

    Call it before anything else builds a ``TrainingArguments``: the first initialisation of
    the process group sets its timeout (TRL's trainers would otherwise initialise it with
    ``ddp_timeout``, 1800 s by default), and later ones reuse the group. A group that already
    exists keeps its timeout."""
    from accelerate import PartialState

    if not (timeout_s > 0):
        raise ValueError(f"collective_timeout must be > 0 seconds, got {timeout_s!r}")
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        return PartialState(timeout=timedelta(seconds=float(timeout_s)))
    return PartialState()


def _chain(err: BaseException) -> Iterable[BaseException]:
    seen: set[int] = set()
    cur: BaseException | None = err
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        yield cur
        cur = cur.__cause__ or cur.__context__


def peer_gone(err: BaseException, timeout_s: float | None = None) -> PeerGoneError | None:
    """:class:`PeerGoneError` (one line: which rank, what the backend said, what to do) when
    ``err`` (or an exception it was raised from) is a collective failing because another rank
    died or stopped answering; ``None`` for any other error, and always outside a
    multi-process run."""
    if isinstance(err, PeerGoneError):
        return err
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() < 2:
        return None
    for e in _chain(err):
        text = str(e)
        network = isinstance(e, dist.DistNetworkError | dist.DistStoreError)
        if network or (isinstance(e, RuntimeError) and any(s in text for s in _PEER_LOST)):
            said = " ".join(text.split())[:200]
            limit = "" if timeout_s is None else f" (collective_timeout {timeout_s:g} s)"
            return PeerGoneError(
                f"a peer process is gone: rank {dist.get_rank()} of {dist.get_world_size()} lost "
                f"contact with the other ranks in a collective{limit}: {said}; relaunch all "
                "processes with --resume to continue from the last checkpoint"
            )
    return None


def parameter_checksum(params: Iterable[torch.Tensor]) -> str:
    """SHA-256 over the exact bytes of the parameters (order-sensitive)."""
    h = hashlib.sha256()
    for p in params:
        t = p.detach().to("cpu").contiguous()
        h.update(str(t.dtype).encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


class LeaderSync:
    """Replicated-leader synchronisation over ``torch.distributed`` (no-op in one process)."""

    def __init__(self, group: dist.ProcessGroup | None = None) -> None:
        self.group = group
        self.enabled = dist.is_available() and dist.is_initialized()
        self.world_size = dist.get_world_size(group) if self.enabled else 1
        self.rank = dist.get_rank(group) if self.enabled else 0

    @property
    def is_main_process(self) -> bool:
        return self.rank == 0

    def _active(self) -> bool:
        return self.enabled and self.world_size > 1

    def broadcast(self, module: torch.nn.Module) -> None:
        """Overwrite every rank's parameters and buffers with rank 0's."""
        if not self._active():
            return
        with torch.no_grad():
            for t in [*module.parameters(), *module.buffers()]:
                dist.broadcast(t.data, src=0, group=self.group)

    def all_reduce_gradients(self, module: torch.nn.Module, n_groups: int | float) -> float:
        """Replace each ``.grad`` by the group-weighted mean over ranks; return the total weight.

        ``n_groups`` is the number of prompt groups (or episodes) behind this rank's estimate; a rank
        with none contributes zero weight. Parameters without ``.grad`` get zeros so that every rank
        joins every collective in the same order.
        """
        weight = torch.tensor([float(n_groups)], dtype=torch.float64)
        params = [p for p in module.parameters() if p.requires_grad]
        if not self._active():
            return float(weight.item())
        dist.all_reduce(weight, op=dist.ReduceOp.SUM, group=self.group)
        total = float(weight.item())
        if total <= 0:
            raise RuntimeError("no rank produced a hypergradient estimate (total group count is 0)")
        for p in params:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
            buf = p.grad.detach().to(torch.float64) * float(n_groups)
            dist.all_reduce(buf, op=dist.ReduceOp.SUM, group=self.group)
            p.grad.copy_((buf / total).to(p.grad.dtype))
        return total

    def all_reduce_mean(self, value: torch.Tensor) -> torch.Tensor:
        """Mean of a tensor over ranks (for logging metrics)."""
        if not self._active():
            return value
        out = value.detach().clone().to(torch.float64)
        dist.all_reduce(out, op=dist.ReduceOp.SUM, group=self.group)
        return (out / self.world_size).to(value.dtype)

    def assert_identical(self, module: torch.nn.Module) -> str:
        """Raise if any rank's leader parameters differ bit-wise from rank 0's; return the checksum."""
        digest = parameter_checksum(module.parameters())
        if not self._active():
            return digest
        gathered: list[str | None] = [None] * self.world_size
        dist.all_gather_object(gathered, digest, group=self.group)
        if len(set(gathered)) != 1:
            raise RuntimeError(f"leader parameters diverged across ranks: checksums {gathered}")
        return digest

    def all_reduce_max(self, value: int) -> int:
        """The largest of every rank's ``value`` (``value`` itself in one process)."""
        if not self._active():
            return int(value)
        t = torch.tensor([int(value)], dtype=torch.int64)
        dist.all_reduce(t, op=dist.ReduceOp.MAX, group=self.group)
        return int(t.item())

    def barrier(self) -> None:
        if self._active():
            dist.barrier(group=self.group)
