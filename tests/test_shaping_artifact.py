"""The learned shaping as a product: save_pretrained / load_leader, FrozenShapedReward (equal to
the live HPGDReward, picklable, in GRPO and RLOO runs), the model card, push_to_hub (mocked
upload), align-cbrl export, and the README plugin example."""

from __future__ import annotations

import json
import multiprocessing
import pickle
import re
from pathlib import Path

import pytest
import torch

from align_cbrl import FrozenShapedReward, HPGDReward, build_components, load_leader
from align_cbrl.rewards.callable import InMemoryCallableError
from align_cbrl.trainer.builders import resolve_task
from tests.helpers import ROOT, grpo_args, write_exact_run_config


def n_a(prompts, completions, **kw):
    """A module-level TRL reward function: its reference is 'tests.test_shaping_artifact:n_a'."""
    return [float(c.split().count("a")) for c in completions]


@pytest.fixture(scope="module")
def task():
    return resolve_task("tiny_language")


def trained_reward(task) -> HPGDReward:
    """A live reward whose leader is not at its initial weights (random raw parameters)."""
    spec = dict(parametrization="sigmoid", lo=-2.0, hi=2.0, init_std=0.7, seed=3, cost_coef=0.25)
    return HPGDReward(task.bilevel(task.make_leader(**spec, cost_kind="l2")), task.components)


def every_pair(task):
    """All prompt x completion pairs of the enumerable task, with their categories."""
    Y = len(task.texts)
    prompts = [p for p in task.prompts for _ in range(Y)]
    return (
        prompts,
        list(task.texts) * len(task.prompts),
        [c for c in task.contexts for _ in range(Y)],
    )


def test_round_trip_gives_identical_rewards_and_parameters(tmp_path, task):
    live = trained_reward(task)
    prompts, completions, ctx = every_pair(task)
    out = live.save_pretrained(tmp_path / "leader", training={"estimator": "hpgd"})
    assert sorted(p.name for p in out.iterdir()) == [
        "README.md",
        "config.json",
        "model.safetensors",
    ]
    frozen = FrozenShapedReward.from_pretrained(out)  # rebuilt from the folder alone
    assert frozen(prompts, completions, category=ctx) == live(prompts, completions, category=ctx)
    assert torch.equal(load_leader(out).flat_parameters(), live.leader.flat_parameters())
    # a second round trip writes the same bytes
    frozen.save_pretrained(tmp_path / "again", training={"estimator": "hpgd"})
    for name in ("config.json", "model.safetensors", "README.md"):
        assert (tmp_path / "again" / name).read_bytes() == (out / name).read_bytes()


def test_frozen_reward_equals_the_live_reward_and_stays_frozen(task):
    live = trained_reward(task)
    spec = live.reward_spec()
    frozen = FrozenShapedReward(live.leader, live.components, spec["follower"], spec["leader"])
    prompts, completions, ctx = every_pair(task)
    logged: dict[str, float] = {}
    r = frozen(prompts, completions, category=ctx, log_metric=logged.__setitem__)
    assert r == live(prompts, completions, category=ctx)
    assert r != [float(v) for v in task.rewards(task.bilevel(task.make_leader()))[0].reshape(-1)]
    # each component's mean and the incentive are logged through TRL's log_metric
    scores = task.scores.reshape(-1, task.scores.shape[-1])
    for k, name in enumerate(task.component_names):
        assert logged[f"frozen_shaped_reward/{name}"] == float(scores[:, k].mean())
    assert "frozen_shaped_reward/incentive" in logged
    with torch.no_grad():
        live.leader.theta.add_(1.0)  # the live leader moves on; the frozen copy does not
    assert frozen(prompts, completions, category=ctx) == r
    assert live(prompts, completions, category=ctx) != r


def _score_in_child(blob: bytes, args: tuple) -> list[float]:
    reward = pickle.loads(blob)
    prompts, completions, ctx = args
    # the keyword arguments TRL's async rollout worker passes (no log_metric, no trainer_state)
    return reward(prompts=prompts, completions=completions, completion_ids=None, category=ctx)


def test_frozen_reward_scores_in_a_spawned_process(tmp_path, task):
    """The out-of-process path of TRL's AsyncGRPOTrainer: its rollout worker pickles the reward
    functions into a spawned child and calls them there (the live HPGDReward refuses this)."""
    live = trained_reward(task)
    live.save_pretrained(tmp_path / "leader")
    frozen = FrozenShapedReward.from_pretrained(tmp_path / "leader")
    pairs = every_pair(task)
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        child = pool.apply(_score_in_child, (pickle.dumps(frozen), pairs))
    assert child == live(*pairs[:2], category=pairs[2])


def test_in_memory_functions_are_refused_with_the_fix(tmp_path, task):
    leader = task.make_leader()
    names = task.component_names

    def nested(prompts, completions, **kw):
        return [0.0] * len(completions)

    specs = [{"type": "callable", "name": n, "target": nested} for n in names]
    reward = HPGDReward(task.bilevel(leader), build_components(specs))
    with pytest.raises(InMemoryCallableError, match=r"define it in a module.*'my_module:nested'"):
        reward.save_pretrained(tmp_path / "x")
    assert not (tmp_path / "x").exists()  # refused before anything was written
    # a module-level function is stored as its reference and imported back
    specs = [{"type": "callable", "name": n, "target": n_a} for n in names]
    reward = HPGDReward(task.bilevel(leader), build_components(specs))
    reward.save_pretrained(tmp_path / "ok")
    saved = json.loads((tmp_path / "ok" / "config.json").read_text())["rewards"]["components"]
    assert saved[0]["target"] == "tests.test_shaping_artifact:n_a"
    prompts, completions, ctx = every_pair(task)
    frozen = FrozenShapedReward.from_pretrained(tmp_path / "ok")
    assert frozen(prompts, completions, category=ctx) == reward(prompts, completions, category=ctx)


def test_a_placeholder_component_must_be_supplied_again(tmp_path, task):
    """The final leader of a run with an in-memory component keeps a placeholder; loading it
    asks for the components, and with them gives the saved reward back."""
    from align_cbrl.trainer.final_leader import save_final_leader

    reward = trained_reward(task)
    name = task.component_names[1]
    zero = {
        "type": "callable",
        "name": name,
        "target": lambda prompts, completions, **kw: [0.0] * len(completions),
    }
    reward.components[1] = build_components([zero])[0]
    save_final_leader(reward, tmp_path / "leader", {"estimator": "hpgd"})
    with pytest.raises(ValueError, match=r"in-memory function .*pass the components again"):
        FrozenShapedReward.from_pretrained(tmp_path / "leader")
    given = FrozenShapedReward.from_pretrained(tmp_path / "leader", components=reward.components)
    prompts, completions, ctx = every_pair(task)
    assert given(prompts, completions, category=ctx) == reward(prompts, completions, category=ctx)
    with pytest.raises(ValueError, match="must be the saved components"):
        FrozenShapedReward.from_pretrained(tmp_path / "leader", components=task.components[:2])


def test_callback_warns_early_about_an_in_memory_component(tmp_path, task):
    pytest.importorskip("trl")
    from transformers import TrainerControl, TrainerState

    from align_cbrl import HPGDCallback

    reward = trained_reward(task)
    name = task.component_names[0]
    spec = {"type": "callable", "name": name, "target": lambda prompts, completions, **kw: [0]}
    reward.components[0] = build_components([spec])[0]
    callback = HPGDCallback(reward)
    with pytest.warns(UserWarning, match="saved without its reward spec.*define it in a module"):
        callback.on_train_begin(grpo_args(tmp_path), TrainerState(), TrainerControl())


def test_model_card_shows_weights_cost_and_training_summary(tmp_path, task):
    reward = trained_reward(task)
    leader = reward.leader
    by_context = {"concise": {"incentive": -0.1234, "cost": 0.0567, "completions": 8}}
    training = {
        "estimator": "hpgd",
        "iterations": 20,
        "objective_estimate": 0.5,
        "objective_exact": 0.4321,
        "by_context": by_context,
        "by_context_source": "on the held-out evaluation completions",
    }
    card = (reward.save_pretrained(tmp_path / "l", training=training) / "README.md").read_text()
    w = leader.weight_table().detach()
    for row, ctx in enumerate(leader.context_index.values):
        line = next(x for x in card.splitlines() if x.startswith(f"| {ctx} |"))
        cells = [c.strip() for c in line.strip("|").split("|")]
        assert cells[1 : 1 + w.shape[1]] == [f"{float(v):+.4f}" for v in w[row]]
        assert cells[-2:] == (["-0.1234", "0.0567"] if ctx == "concise" else ["-", "-"])
    assert (
        "| leader estimator | hpgd |" in card
        and "| leader updates (outer iterations) | 20 |" in card
    )
    assert "| leader objective F(x), exact | 0.4321 |" in card
    assert "pays `0.25 * i^2` per completion" in card
    assert '* `count_b`: `keyword` `{"keywords": ["b"]}`' in card


def test_push_to_hub_uploads_exactly_the_saved_folder(tmp_path, task, monkeypatch):
    hub = pytest.importorskip("huggingface_hub")
    reward = trained_reward(task)
    seen: dict[str, object] = {}

    class FakeApi:
        def __init__(self, token=None):
            seen["token"] = token

        def create_repo(self, repo_id, repo_type, private, exist_ok):
            seen["repo"] = (repo_id, repo_type, exist_ok)

        def upload_folder(self, repo_id, folder_path, repo_type, commit_message):
            folder = Path(folder_path)
            seen["files"] = sorted(p.name for p in folder.iterdir())
            seen["params"] = load_leader(folder).flat_parameters()
            seen["rewards"] = json.loads((folder / "config.json").read_text())["rewards"]
            return type("Info", (), {"commit_url": f"https://hub/{repo_id}/commit/1"})()

    monkeypatch.setattr(hub, "HfApi", FakeApi)
    url = reward.leader.push_to_hub("me/leader", rewards=reward, token="t")
    assert url == "https://hub/me/leader/commit/1"
    assert seen["repo"] == ("me/leader", "model", True) and seen["token"] == "t"
    assert seen["files"] == ["README.md", "config.json", "model.safetensors"]
    assert torch.equal(seen["params"], reward.leader.flat_parameters())
    assert seen["rewards"] == reward.reward_spec()


def test_export_writes_the_run_leader_from_the_run_or_its_checkpoint(tmp_path, capsys):

    from align_cbrl.cli import main

    cfg = write_exact_run_config(tmp_path / "c.yaml", tmp_path / "run", iterations=2, plots="false")
    assert main(["train", "--config", str(cfg)]) == 0
    final = load_leader(tmp_path / "run" / "leader")
    doc = json.loads((tmp_path / "run" / "leader" / "config.json").read_text())
    assert doc["training"]["iterations"] == 2 and "objective_exact" in doc["training"]
    assert set(doc["training"]["by_context"]) == {"concise", "b_topic", "no_d"}
    assert main(["export", str(tmp_path / "run"), str(tmp_path / "out")]) == 0
    assert torch.equal(load_leader(tmp_path / "out").flat_parameters(), final.flat_parameters())
    # a run without its final leader: rebuilt from the last checkpoint (iteration 2)
    import shutil

    shutil.rmtree(tmp_path / "run" / "leader")
    assert main(["export", str(tmp_path / "run"), str(tmp_path / "out2")]) == 0
    back = json.loads((tmp_path / "out2" / "config.json").read_text())
    assert torch.equal(load_leader(tmp_path / "out2").flat_parameters(), final.flat_parameters())
    assert back["training"]["checkpoint"] == "iter_000002" and back["rewards"] == doc["rewards"]
    assert main(["export", str(tmp_path / "nothing"), str(tmp_path / "o")]) == 2
    assert "is not a directory" in capsys.readouterr().err


def readme_plugin_example() -> str:
    """The README's plugin-mode code block."""
    text = (ROOT / "README.md").read_text()
    section = text[text.index("## Plugin mode") :]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_readme_plugin_example_uses_only_top_level_names():
    code = readme_plugin_example()
    imports = [line for line in code.splitlines() if "import" in line]
    assert imports and all(
        line.startswith(("from align_cbrl import", "from trl import", "from datasets import"))
        for line in imports
    ), imports


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_readme_plugin_example_runs(tmp_path, monkeypatch):
    """The README block, executed as written (in a temporary working directory)."""
    pytest.importorskip("trl")
    monkeypatch.chdir(tmp_path)
    namespace: dict[str, object] = {"__name__": "readme_example"}
    exec(compile(readme_plugin_example(), "README.md", "exec"), namespace)
    assert (tmp_path / "runs" / "plugin_example" / "leader" / "config.json").is_file()
    assert len(namespace["callback"].history) >= 1
