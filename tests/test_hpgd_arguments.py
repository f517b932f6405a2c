"""HPGDArguments: the plugin's leader settings, parsed by TRL's TrlParser next to GRPOConfig /
RLOOConfig from one YAML, and the LeaderConfig fields they share with orchestrated runs."""

from __future__ import annotations

import dataclasses

import pytest
import yaml

pytest.importorskip("trl")

from trl import GRPOConfig, RLOOConfig, TrlParser

from align_cbrl import HPGDArguments, HPGDCallback, HPGDReward
from align_cbrl.trainer.builders import resolve_task
from align_cbrl.trainer.config import LeaderConfig


def test_leader_fields_are_leaderconfigs_with_a_prefix():
    ours = {f.name: f for f in dataclasses.fields(HPGDArguments)}
    for f in dataclasses.fields(LeaderConfig):
        if f.name in ("zero_order_u", "zero_order_decay", "follower_schedule"):
            assert f"leader_{f.name}" not in ours  # orchestrated-only settings
            continue
        mine = ours[f"leader_{f.name}"]
        assert mine.metadata["help"].startswith(f.metadata["help"])
        default = f.default_factory() if f.default is dataclasses.MISSING else f.default
        assert getattr(HPGDArguments(), mine.name) == default
    assert all(f.metadata.get("help") for f in ours.values())
    assert HPGDArguments(leader_lr=0.3, leader_estimator="naive").leader_config() == LeaderConfig(
        lr=0.3, estimator="naive"
    )


@pytest.mark.parametrize("config_class", [GRPOConfig, RLOOConfig])
def test_trl_parser_reads_trl_and_leader_keys_from_one_yaml(tmp_path, config_class):
    path = tmp_path / "run.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "output_dir": str(tmp_path / "out"),
                "learning_rate": 0.01,
                "beta": 0.5,
                "max_grad_norm": 0.5,  # TRL's; the leader's is leader_max_grad_norm
                "use_cpu": True,
                "bf16": False,
                "leader_update_every": 3,
                "leader_lr": 0.2,
                "leader_max_grad_norm": 2.0,
                "leader_spec": {"type": "weights", "parametrization": "sigmoid", "lo": -2.0},
            }
        )
    )
    parser = TrlParser((config_class, HPGDArguments))
    trl_args, hpgd = parser.parse_args_and_config(
        [
            "--config",
            str(path),
            "--leader_estimator",
            "naive",
            "--leader_spec",
            '{"type": "weights"}',
        ]
    )
    assert (trl_args.learning_rate, trl_args.beta, trl_args.max_grad_norm) == (0.01, 0.5, 0.5)
    assert (hpgd.leader_update_every, hpgd.leader_lr, hpgd.leader_max_grad_norm) == (3, 0.2, 2.0)
    assert hpgd.leader_estimator == "naive" and hpgd.leader_spec == {"type": "weights"}
    # the callback is built from it
    task = resolve_task("tiny_language")
    cb = HPGDCallback(HPGDReward(task.bilevel(task.make_leader()), task.components), hpgd)
    assert cb.update_every == 3 and cb.estimator.name == "naive"
    assert cb.optimizer.param_groups[0]["lr"] == 0.2


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"leader_update_every": 0}, "leader_update_every must be an int >= 1"),
        ({"leader_lr": 0.0}, "lr must be > 0"),
        ({"leader_estimator": "zero_order"}, "zero_order needs the orchestrated trainer"),
        ({"leader_spec": "{not json"}, "leader_spec must be a mapping"),
        ({"leader_reward_index": -1}, "leader_reward_index must be an int >= 0"),
    ],
)
def test_bad_settings_are_one_line_errors(kw, match):
    with pytest.raises(ValueError, match=match):
        HPGDArguments(**kw)
