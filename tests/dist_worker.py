"""Worker for tests/test_distributed.py: one rank of a 2-process gloo job on loopback.

Each rank owns a different shard of prompt groups, computes a grouped covariance-form estimate
for a small leader, all-reduces it with group-count weights, steps SGD, and reports its parameters.

``python dist_worker.py OUT [hang]``: with ``hang``, rank 1 stops answering before the
all-reduce (it sleeps) and rank 0 must fail within ``COLLECTIVE_TIMEOUT`` seconds (environment)
with the library's one-line "a peer process is gone" error (exit status 1). Each rank ends like
the recipes (:func:`align_cbrl.trainer.faults.run_and_leave` / ``finish_run``), the path that keeps a
finished multi-process run from hanging at exit (docs/reliability.md).
"""

from __future__ import annotations

import datetime
import json
import os
import sys
import time

import torch
import torch.distributed as dist

from align_cbrl.distributed import DEFAULT_COLLECTIVE_TIMEOUT_S, LeaderSync
from align_cbrl.trainer.faults import fault_context, finish_run, run_and_leave


def shard_data(rank: int, world: int, n_groups_total: int, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    feats = torch.randn(n_groups_total, 6, 3, generator=gen, dtype=torch.float64)
    rbar = torch.randn(n_groups_total, 6, generator=gen, dtype=torch.float64)
    # Uneven shards: rank 0 gets more groups than rank 1, so the weighting matters.
    cut = (2 * n_groups_total) // 3
    bounds = [(0, cut), (cut, n_groups_total)] if world == 2 else [(0, n_groups_total)]
    lo, hi = bounds[rank]
    return feats[lo:hi], rbar[lo:hi]


def local_step(leader: torch.nn.Linear, feats: torch.Tensor, rbar: torch.Tensor, beta: float):
    """Grouped covariance surrogate (docs/theory.md §3): (1/beta) 1/(N-1) sum_i (rbar_i - mean) r_x."""
    leader.zero_grad()
    incentive = leader(feats).squeeze(-1)  # [G, N]
    centred = rbar - rbar.mean(dim=1, keepdim=True)
    n = rbar.shape[1]
    surrogate = (centred * incentive).sum(dim=1) / ((n - 1) * beta)
    (-surrogate.mean()).backward()  # minimise the negative: ascent on F


def run(rank: int, world: int, out_dir: str, steps: int = 5) -> dict:
    torch.manual_seed(1234)  # identical init on purpose NOT assumed: broadcast fixes it below
    leader = torch.nn.Linear(3, 1, dtype=torch.float64)
    if rank == 1:
        with torch.no_grad():
            leader.weight.add_(1.0)  # a divergent start that broadcast must repair
    sync = LeaderSync()
    sync.broadcast(leader)
    opt = torch.optim.SGD(leader.parameters(), lr=0.3)
    feats, rbar = shard_data(rank, world, n_groups_total=12)
    for _ in range(steps):
        local_step(leader, feats, rbar, beta=0.5)
        sync.all_reduce_gradients(leader, n_groups=feats.shape[0])
        opt.step()
    digest = sync.assert_identical(leader)
    params = [p.detach().flatten().tolist() for p in leader.parameters()]
    if sync.is_main_process:
        with open(os.path.join(out_dir, "rank0_only.json"), "w") as fh:
            json.dump({"digest": digest}, fh)
    return {
        "rank": rank,
        "digest": digest,
        "params": params,
        "hex": [float(v).hex() for p in params for v in p],
    }


def main(argv: list[str]) -> None:
    out_dir, hang = argv[0], argv[1:] == ["hang"]
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    timeout = float(os.environ.get("COLLECTIVE_TIMEOUT", DEFAULT_COLLECTIVE_TIMEOUT_S))
    torch.set_num_threads(1)
    if world > 1:
        limit = datetime.timedelta(seconds=timeout)
        dist.init_process_group("gloo", rank=rank, world_size=world, timeout=limit)
    if hang and rank == 1:
        dist.barrier()  # both ranks are up; from here rank 1 is alive but silent
        print(f"rank 1 silent at {time.time()}", flush=True)
        time.sleep(10 * timeout)  # rank 0's next collective must time out
    elif hang:
        dist.barrier()
    with fault_context(lambda: None, timeout):
        result = run(rank, world, out_dir)
    with open(os.path.join(out_dir, f"result_{rank}_of_{world}.json"), "w") as fh:
        json.dump(result, fh)
    finish_run()  # several processes: barrier, then os._exit with the process group still referenced


if __name__ == "__main__":
    run_and_leave(main, sys.argv[1:])
