"""Worker for tests/test_several_followers_distributed.py: one rank of
``accelerate launch --num_processes {1,2} --config_file configs/accelerate/cpu.yaml``.

``combine OUT``: two followers on the tiny task (different ``beta``, reference policy, prompts,
weights 1 : 2 and group counts 4 : 12 per step over all ranks) are sampled exactly from one
shared generator; each rank keeps its slice of every follower's groups (as the orchestrated
trainer does: the same number of groups per follower on every rank) and takes five leader
steps with the library's estimator and :func:`leader_update` (weighted combination,
all-reduce, clipping, SGD). One process with all the groups is the single-process combination.

``trainer OUT``: an orchestrated :class:`HPGDTrainer` run with two exact followers; every rank
checks the leader against the others after each iteration.

Each rank writes ``OUT/<mode>_of_<world>/rank<r>.json`` with the exact bits of its leader (the
recipes' ``--debug_sync`` report, ``recipes/recipe_utils.write_sync_report``; ``recipes/`` is on
the launch's ``PYTHONPATH``).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch
from recipe_utils import write_sync_report

from align_cbrl.distributed import LeaderSync, init_process_group
from align_cbrl.reference import tiny_language as tl
from align_cbrl.reference.several_followers import ExactFollowerSpec
from align_cbrl.trainer import GroupedSamples, build_optimizer
from align_cbrl.trainer.builders import resolve_task
from align_cbrl.trainer.config import LeaderConfig
from align_cbrl.trainer.estimation import leader_update
from align_cbrl.trainer.faults import finish_run, run_and_leave
from align_cbrl.trainer.strategies import build_estimator

LEADER = dict(
    parametrization="sigmoid", lo=-2.0, hi=2.0, init_weights=0.0, cost_coef=0.25, cost_kind="l2"
)
GROUPS = {"short": 4, "long": 12}  # per step, over all ranks
N = 4


def followers(task: tl.TinyLanguageTask) -> list[ExactFollowerSpec]:
    other = 2.0 * torch.randn(
        task.num_prompts,
        task.num_completions,
        generator=torch.Generator().manual_seed(7),
        dtype=torch.float64,
    )
    return [
        ExactFollowerSpec.on(task, "short", 0.5, prompt_index=[0, 1, 2], weight=1.0),
        ExactFollowerSpec.on(task, "long", 1.0, log_ref=other, prompt_index=[2, 3], weight=2.0),
    ]


def my_batch(task, spec, bilevel, gen, rank: int, world: int) -> GroupedSamples:
    """All ranks draw the same groups; this rank keeps its slice."""
    G = GROUPS[spec.name]
    prompts = tl.sample_prompts(spec.task, G, gen)
    p_idx, c_idx = tl.sample_completions(spec.task, bilevel, spec.beta, N, gen, prompts)
    lo, hi = rank * G // world, (rank + 1) * G // world
    p_idx, c_idx = p_idx[lo:hi], c_idx[lo:hi]
    texts = [task.prompts[p] for p in p_idx.tolist() for _ in range(N)]
    ctx = [task.contexts[p] for p in p_idx.tolist() for _ in range(N)]
    scores = task.scores[p_idx[:, None], c_idx].reshape(len(texts), -1)
    completions = [task.texts[c] for c in c_idx.reshape(-1).tolist()]
    return GroupedSamples(
        spec.name,
        float(spec.beta),
        N,
        texts,
        completions,
        {"category": ctx},
        scores,
        objective_weight=spec.weight,
    )


def combine(sync: LeaderSync) -> torch.nn.Module:
    task = resolve_task("tiny_language")
    leader = task.make_leader(**LEADER)
    bilevel = task.bilevel(leader)
    sync.broadcast(leader)
    optimizer = build_optimizer(leader.parameters(), "sgd", 0.5)
    estimator = build_estimator(LeaderConfig(estimator="hpgd"))
    gen = torch.Generator().manual_seed(0)
    specs = followers(task)
    for _ in range(5):
        batches = [my_batch(task, s, bilevel, gen, sync.rank, sync.world_size) for s in specs]
        direction = estimator.estimate(bilevel, batches, "category")
        result = leader_update(leader, optimizer, direction, 1.0, sync)
        assert result.stepped and result.stats.groups == 16 // sync.world_size
        sync.assert_identical(leader)
    return leader


def trainer(sync: LeaderSync, out: Path) -> torch.nn.Module:
    from align_cbrl.config_parser import from_dict
    from align_cbrl.trainer import HPGDConfig, HPGDTrainer

    fols = [
        {"name": "short", "trainer": "exact", "beta": 0.5, "contexts": ["concise", "b_topic"]},
        {"name": "long", "trainer": "exact", "model_seed": 1, "beta": 1.0, "weight": 2.0},
    ]
    config = from_dict(
        HPGDConfig,
        {
            "output_dir": str(out / "run"),
            "task": "tiny_language",
            "iterations": 3,
            "follower_steps": 0,
            "prompts_per_iteration": 2,
            "num_samples": 4,
            "save_every": 0,
            "eval_samples": 0,
            "plots": False,
            "progress": False,
            "tensorboard": False,
            "leader": {"spec": {"type": "weights", **LEADER}, "optimizer": "adam", "lr": 0.2},
            "followers": fols,
        },
    )
    run = HPGDTrainer(config, sync=sync)
    step = run.step

    def checked(t: int):
        record = step(t)
        sync.assert_identical(run.leader)
        return record

    run.step = checked  # type: ignore[method-assign]
    try:
        run.train()
    finally:
        run.close()
    return run.leader


def main(argv: list[str]) -> None:
    mode, out = argv[0], Path(argv[1])
    torch.set_num_threads(1)
    init_process_group()  # the launcher's group, with the library's collective timeout
    sync = LeaderSync()
    leader = combine(sync) if mode == "combine" else trainer(sync, out)
    write_sync_report(out / f"{mode}_of_{sync.world_size}", sync, leader, [])
    finish_run()  # several processes: barrier, then os._exit with the process group still referenced


if __name__ == "__main__":
    run_and_leave(main, sys.argv[1:])  # as the recipes end (docs/reliability.md)
