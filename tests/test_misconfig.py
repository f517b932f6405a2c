"""Settings that used to let a run finish with a wrong leader (issue #28) are refused before any
model is built, with one line that says what to fix; the checks are shared by orchestrated runs
and plugin mode (``align_cbrl.trainer.validation``)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

pytest.importorskip("trl")
datasets = pytest.importorskip("datasets")

from trl import GRPOTrainer  # noqa: E402

from align_cbrl.cli import main  # noqa: E402
from align_cbrl.models import build_tiny_lm  # noqa: E402
from align_cbrl.trainer import HPGDArguments, HPGDCallback, HPGDReward  # noqa: E402
from align_cbrl.trainer.builders import resolve_task  # noqa: E402
from tests.helpers import grpo_args, write_exact_run_config  # noqa: E402

# a general (task-free) run on the embedded quickstart prompts: contexts quick/polite/careful;
# its model directory does not exist, so an error about anything else came before any model
RUN = {
    "output_dir": "run",
    "iterations": 1,
    "follower_steps": 0,
    "num_samples": 2,
    "eval_samples": 0,
    "tensorboard": False,
    "plots": False,
    "progress": False,
    "rewards": {
        "components": [
            {"type": "length", "name": "n_words", "unit": "words"},
            {"type": "keyword", "name": "says_please", "keywords": ["please"]},
        ],
        "follower": {"weights": {"n_words": 0.5}},
        "leader": {"by_context": {"quick": {"n_words": -1.0}, "polite": {"says_please": 1.0}}},
    },
    "leader": {"spec": {"type": "weights"}},
    "followers": [{"name": "f", "model": "/no/such/model", "dataset": "quickstart"}],
}


def cli_error(tmp_path, capsys, monkeypatch, *overrides, data=None):
    """Run ``align-cbrl train`` on :data:`RUN` (or ``data``) from ``tmp_path``; the one error
    line (exit status 2, no traceback, nothing written)."""
    monkeypatch.chdir(tmp_path)
    Path("c.yaml").write_text(yaml.safe_dump(data or RUN))
    assert main(["train", "--config", "c.yaml", *overrides]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    assert not (tmp_path / "run").exists()
    return err.strip()


# --------------------------------------------------------------------------- item 1
@pytest.mark.parametrize(
    ("override", "where"),
    [
        (["--rewards.leader", "{by_context: {qiuck: {n_words: -1.0}}}"], "rewards.leader"),
        (["--rewards.follower", "{by_context: {qiuck: {n_words: 1.0}}}"], "rewards.follower"),
        (["--leader.spec", "{type: weights, contexts: [qiuck, polite]}"], "leader.spec.contexts"),
    ],
)
def test_context_typo_is_refused_with_did_you_mean(tmp_path, capsys, monkeypatch, override, where):
    err = cli_error(tmp_path, capsys, monkeypatch, *override)
    assert err.startswith(
        f"error: {where}{'.by_context' if where.startswith('rewards') else ''}: context 'qiuck' "
        "is the 'category' of no dataset row (did you mean 'quick'?); the rows have ['quick', "
        "'polite', 'careful']. A context no row has is never used"
    ), err


def make_plugin_trainer(tmp_path, *, rows=None, upper=None, reward_funcs=None, **kw):
    """A GRPOTrainer on the tiny task with the plugin's two objects (``upper`` replaces the
    leader's mix); ``(trainer, callback, scored batches)``."""
    task = resolve_task("tiny_language")
    leader = task.make_leader(init_weights=0.2, cost_coef=0.25, cost_kind="l2")
    bilevel = task.bilevel(leader)
    if upper is not None:
        from align_cbrl.objective import BilevelRewards

        bilevel = BilevelRewards(leader, task.config.follower, upper)
    reward = HPGDReward(bilevel, task.components)
    settings = {"leader_update_every": 2, "leader_output_dir": str(tmp_path / "out")}
    cb = HPGDCallback(reward, HPGDArguments(**settings, **kw.pop("cb", {})))
    calls: list = []
    reward.subscribe(calls.append)
    rows = rows if rows is not None else [dict(r) for r in task.dataset_rows()]
    trainer = GRPOTrainer(
        model=str(build_tiny_lm("word", words=task.vocab)),
        reward_funcs=reward_funcs(reward) if reward_funcs else [reward],
        args=grpo_args(tmp_path, **kw),
        train_dataset=datasets.Dataset.from_list(rows)
        if rows
        else datasets.Dataset.from_dict({"prompt": [], "category": []}),
        callbacks=[cb],
    )
    return trainer, cb, calls


def test_plugin_context_typo_is_refused_before_generation(tmp_path):
    upper = {"by_context": {"concise": {"n_words": -1.0}, "b_topik": {"count_b": 1.0}}}
    trainer, _, calls = make_plugin_trainer(tmp_path, upper=upper)
    with pytest.raises(ValueError) as info:
        trainer.train()
    assert str(info.value).startswith(
        "the leader's mix (BilevelRewards upper=) by_context: context 'b_topik' is the "
        "'category' of no dataset row (did you mean 'b_topic'?)"
    )
    assert calls == [] and not (tmp_path / "out").exists()


# --------------------------------------------------------------------------- item 2
@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ("{scale_rewards: group}", "scale_rewards='group' divides each group's rewards"),
        (
            "{multi_objective_aggregation: normalize_then_sum}",
            "multi_objective_aggregation='normalize_then_sum' standardises",
        ),
    ],
)
def test_orchestrated_followers_refuse_what_plugin_mode_refuses(
    tmp_path, capsys, monkeypatch, setting, message
):
    err = cli_error(tmp_path, capsys, monkeypatch, "--followers.0.trl", setting)
    assert err.startswith(f"error: followers.0 ('f').trl: {message}")
    assert err.endswith("(or set followers.0.allow_reward_scaling: true to accept the bias)")
    # the explicit opt-in passes this check (and stops at the missing model instead)
    err = cli_error(
        tmp_path,
        capsys,
        monkeypatch,
        "--followers.0.trl",
        setting,
        "--followers.0.allow_reward_scaling",
        "true",
    )
    assert "no model directory" in err


def test_rloo_normalize_advantages_is_refused_in_orchestrated_runs(tmp_path, capsys, monkeypatch):
    data = {**RUN, "followers": [{**RUN["followers"][0], "trainer": "rloo"}]}
    err = cli_error(
        tmp_path,
        capsys,
        monkeypatch,
        "--followers.0.trl",
        "{normalize_advantages: true}",
        data=data,
    )
    assert "set normalize_advantages=False (or set followers.0.allow_reward_scaling" in err


# --------------------------------------------------------------------------- item 3
def n_a(prompts, completions, **kw):
    return [float(c.split().count("a")) for c in completions]


def test_reward_index_must_point_at_the_hpgd_reward(tmp_path):
    trainer, cb, _ = make_plugin_trainer(
        tmp_path,
        reward_funcs=lambda r: [r, n_a],
        reward_weights=[2.0, 0.5],
        cb={"leader_reward_index": 1},
    )
    with pytest.raises(ValueError) as info:
        trainer.train()
    assert str(info.value) == (
        "HPGDCallback: leader_reward_index=1 points at reward_funcs[1] ('n_a'), not at the "
        "HPGDReward 'hpgd_reward', which is reward_funcs[0]; set "
        "HPGDArguments(leader_reward_index=0) (the hypergradient would use another reward's "
        "weight)"
    )
    assert trainer.state.global_step == 0 and cb.history == []


# --------------------------------------------------------------------------- item 5
def test_plugin_with_an_empty_dataset_fails_before_training_and_writes_nothing(tmp_path):
    trainer, _, calls = make_plugin_trainer(tmp_path, rows=[])
    with pytest.raises(ValueError, match=r"^HPGDCallback: the training dataset is empty; "):
        trainer.train()
    assert calls == [] and not (tmp_path / "out").exists()


# --------------------------------------------------------------------------- item 7
@pytest.mark.parametrize(
    ("rows", "message"),
    [
        (
            [{"prompt": "a b", "topic": "concise"}],
            "HPGDCallback: the training dataset has no 'category' column (its columns: "
            "['prompt', 'topic']); add it, or name the column",
        ),
        (
            [{"prompt": "a b", "category": "concise"}, {"prompt": "b c", "category": "b_topik"}],
            "HPGDCallback: the dataset's 'category' values ['b_topik'] have no row in the leader "
            "(its contexts: ['concise', 'b_topic', 'no_d']) (did you mean 'b_topic'?)",
        ),
    ],
)
def test_plugin_missing_context_column_and_unknown_category_fail_at_setup(tmp_path, rows, message):
    trainer, _, calls = make_plugin_trainer(tmp_path, rows=rows)
    with pytest.raises(ValueError) as info:
        trainer.train()
    assert str(info.value).startswith(message)
    assert calls == []  # before the first generation


def test_read_only_output_dir_is_one_line_before_any_work(tmp_path, capsys, monkeypatch):
    if not Path("/sys").is_dir():
        pytest.skip("needs /sys, a directory nobody (not even root) can create files in")
    err = cli_error(tmp_path, capsys, monkeypatch, "--output_dir", "/sys/align_cbrl_run")
    assert err == (
        "error: output_dir '/sys/align_cbrl_run' is not writable (/sys is where it would be "
        "created): Operation not permitted; choose a directory you can write to"
    )


def test_missing_callable_target_is_one_line(tmp_path, capsys, monkeypatch):
    (tmp_path / "my_reward_mod.py").write_text("def chars(prompts, completions, **kw):\n    ...\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    rewards = {
        "components": [{"type": "callable", "name": "c", "target": "my_reward_mod:charz"}],
        "leader": {"weights": {"c": 1.0}},
    }
    err = cli_error(tmp_path, capsys, monkeypatch, data={**RUN, "rewards": rewards})
    assert err == (
        "error: rewards: components[0]: callable target 'my_reward_mod:charz': 'my_reward_mod' "
        "has no "
        "attribute path 'charz' (did you mean 'chars'?)"
    )
    rewards["components"][0]["target"] = "no_such_reward_mod:chars"
    err = cli_error(tmp_path, capsys, monkeypatch, data={**RUN, "rewards": rewards})
    assert err.startswith(
        "error: rewards: components[0]: cannot import module 'no_such_reward_mod' of callable "
        "target "
        "'no_such_reward_mod:chars': No module named 'no_such_reward_mod'"
    )


def test_ctrl_c_is_one_line_that_says_resume_continues(tmp_path, capsys, monkeypatch):

    from align_cbrl.trainer import HPGDTrainer

    def interrupted(self):
        raise KeyboardInterrupt

    monkeypatch.setattr(HPGDTrainer, "train", interrupted)
    cfg = write_exact_run_config(tmp_path / "c.yaml", tmp_path / "run", iterations=2)
    assert main(["train", "--config", str(cfg), "--overwrite", "--leader.lr", "0.1"]) == 130
    captured = capsys.readouterr()
    assert captured.err == (
        f"interrupted (Ctrl-C); `align-cbrl train --config {cfg} --leader.lr 0.1 --resume` "
        "continues the run from its last checkpoint\n"
    )


# --------------------------------------------------------------------------- item 8
def test_no_progress_prints_one_line_per_iteration_and_names_the_arm(tmp_path, capsys):

    cfg = write_exact_run_config(tmp_path / "c.yaml", tmp_path / "run", iterations=2)
    assert main(["train", "--config", str(cfg), "--no-plots", "--leader.estimator", "fixed"]) == 0
    lines = [x for x in capsys.readouterr().out.splitlines() if " iteration " in x]
    assert [x.split(":")[0] for x in lines] == [
        "fixed leader (no updates) iteration 1/2",
        "fixed leader (no updates) iteration 2/2",
    ]
    assert ", |g| 0.00, F " in lines[0] and lines[0].endswith(" s)")


def test_weight_leader_prints_its_labelled_weight_table():
    from align_cbrl.leaders import WeightLeader

    leader = WeightLeader(
        ["n_words", "says_please"],
        contexts=["quick", "polite"],
        parametrization="sigmoid",
        lo=-2.0,
        hi=2.0,
        init_weights={"says_please": 1.25},
        cost_coef=0.25,
        cost_kind="l2",
    )
    assert leader.weight_table(labelled=True) == {
        "quick": {"n_words": 0.0, "says_please": pytest.approx(1.25)},
        "polite": {"n_words": 0.0, "says_please": pytest.approx(1.25)},
    }
    assert repr(leader) == (
        "WeightLeader(\n"
        "  components=['n_words', 'says_please'], parametrization=sigmoid in [-2, 2], "
        "cost=0.25 * l2\n"
        "  weights:\n"
        "  category    n_words  says_please\n"
        "  quick        0.0000       1.2500\n"
        "  polite       0.0000       1.2500\n"
        ")"
    )


def test_plugin_logs_the_incentive_table(tmp_path):
    trainer, cb, _ = make_plugin_trainer(tmp_path, max_steps=2)
    trainer.train()
    (record,) = cb.history
    table = cb.leader.weight_table(labelled=True)
    logged = {k: v for k, v in record.items() if k.startswith("leader/w/")}
    assert logged == {f"leader/w/{c}/{n}": w for c, row in table.items() for n, w in row.items()}
    assert len(logged) == 3 * 4  # contexts x components


def test_long_plot_titles_are_wrapped_inside_the_figure():
    from align_cbrl.trainer.plots import run_figure

    title = "two_followers: leader estimator hpgd, 20 outer iterations x 10 follower steps; " + (
        "followers concise_writer (grpo, beta 0.5), topic_writer (grpo, beta 1)"
    )
    fig = run_figure([{"step": 0, "objective_estimate": 0.0}], title)
    fig.canvas.draw()
    box = fig._suptitle.get_window_extent()
    assert box.x0 >= 0 and box.x1 <= fig.bbox.x1 and box.y1 <= fig.bbox.y1
    assert fig._suptitle.get_text().count("\n") == 1


def test_four_rooms_refuses_to_mix_into_an_existing_out(tmp_path, capsys):
    from tabular_reference.cli import main as tabular_main

    out = tmp_path / "old"
    out.mkdir()
    (out / "metrics_of_another_run.csv").write_text("x\n")
    args = ["four-rooms", "--seeds", "1", "--iters", "2", "--steps-per-iter", "500"]
    args += ["--eval-last", "1", "--goal", "1,9", "--no-progress", "--out", str(out)]
    assert tabular_main(args) == 2
    assert capsys.readouterr().err == (
        f"error: --out {out} already holds files (an earlier run?); the new results would mix "
        "with them: pass --overwrite to replace the directory, or choose another --out\n"
    )
    assert tabular_main([*args, "--overwrite"]) == 0
    assert not (out / "metrics_of_another_run.csv").exists() and (out / "metrics.csv").is_file()


def test_table1_quick_says_it_is_a_smoke_run(tmp_path):
    from tabular_reference.common.results import ResultsDir
    from tabular_reference.four_rooms.table1 import write_table

    for quick in (True, False):
        rd = ResultsDir(tmp_path / str(quick))
        write_table(rd, [], {}, 0.0, quick=quick, verbose=False)
        text = (tmp_path / str(quick) / "table1.md").read_text()
        assert text.count("SMOKE RUN (--quick)") == (2 if quick else 0)


def test_tax_design_report_says_never_instead_of_none():
    from tabular_reference.tax_design.cli import acceptance_line

    entry = {
        "lam": 0.1,
        "hpgd": "hpgd",
        "reference": "zero_order_sampled",
        "n_seeds_reaching": 0,
        "reach_fraction": None,
        "naive": "naive",
        "hpgd_minus_naive": 0.0123,
        "hpgd_minus_naive_in_se": None,
    }
    assert acceptance_line(entry) == (
        "lam=0.1: hpgd never reaches zero_order_sampled's final welfare; minus naive: 0.0123 "
        "= n/a s.e."
    )
    entry.update(reach_fraction=0.25, n_seeds_reaching=3, hpgd_minus_naive_in_se=2.5)
    assert acceptance_line(entry) == (
        "lam=0.1: hpgd reach fraction 0.250 (3 seeds); minus naive: 0.0123 = 2.50 s.e."
    )
