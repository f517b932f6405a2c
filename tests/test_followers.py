"""Followers: TRL GRPO/RLOO adapters (warm-started chunks, resume, errors) and FunctionFollower."""

from __future__ import annotations

import copy
import json
import math

import pytest
import torch

pytest.importorskip("trl")
datasets = pytest.importorskip("datasets")

from align_cbrl.followers import (  # noqa: E402
    ExactFollower,
    FunctionFollower,
    GRPOFollower,
    RewardFunctionError,
    RLOOFollower,
    TRLFollowerConfig,
)
from align_cbrl.models import (  # noqa: E402
    build_tiny_lm,
    completion_logprobs,
    enumerate_completions,
    load_tiny_lm,
)

WORDS = ["a", "b", "c", "d"]
L = 2
PROMPTS = ["a", "b", "c", "d"]
TARGET = {"a": "b", "b": "c", "c": "d", "d": "a"}


def target_reward(prompts, completions, **kwargs):
    """Fraction of completion words equal to the prompt's target word."""
    out = []
    for p, c in zip(prompts, completions):
        ws = c.split()
        out.append(sum(w == TARGET[p] for w in ws) / L if ws else 0.0)
    return out


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return build_tiny_lm("word", cache_dir=tmp_path_factory.mktemp("tiny"), words=WORDS)


@pytest.fixture(scope="module")
def dataset():
    return datasets.Dataset.from_dict({"prompt": PROMPTS, "category": ["x", "y", "z", "w"]})


@pytest.fixture(scope="module")
def enumerated(model_dir):
    _, tok = load_tiny_lm(model_dir)
    seqs, toks = enumerate_completions(len(WORDS), L, tok.eos_token_id)
    texts = [" ".join(WORDS[i] for i in s) for s in seqs]
    rewards = torch.tensor(
        [target_reward([p] * len(texts), texts) for p in PROMPTS], dtype=torch.float64
    )
    return tok, toks, texts, rewards


OURS = {"beta", "kl_mode", "prompts_per_step", "seed", "lora"}


def cfg(**kw):
    """Our fields as keywords, any other keyword (and ``trl``) a GRPOConfig/RLOOConfig field."""
    ours = dict(beta=0.5, prompts_per_step=2, seed=0)
    ours.update({k: v for k, v in kw.items() if k in OURS})
    trl = dict(learning_rate=1e-2, num_generations=4, max_completion_length=L)
    trl.update({k: v for k, v in kw.items() if k not in OURS and k != "trl"})
    trl.update(kw.get("trl", {}))
    return TRLFollowerConfig(**ours, trl=trl)


def flat_params(follower):
    return torch.cat([p.detach().flatten() for p in follower.model.parameters()])


FOLLOWERS = [GRPOFollower, RLOOFollower]
# (class, kl_mode): GRPO in both KL modes, RLOO (always KL in the reward)
FOLLOWER_MODES = [(GRPOFollower, "reward"), (GRPOFollower, "loss"), (RLOOFollower, "reward")]
FOLLOWER_MODE_IDS = ["grpo-reward", "grpo-loss", "rloo"]


@pytest.mark.parametrize("cls", FOLLOWERS, ids=["grpo", "rloo"])
def test_trains_towards_reward_and_sees_columns(cls, model_dir, dataset, enumerated):
    tok, toks, _, rewards = enumerated
    seen = []

    def reward(prompts, completions, category, trainer_state, **kw):
        seen.append((list(prompts), list(category), trainer_state.global_step))
        return target_reward(prompts, completions)

    f = cls(model_dir, dataset, reward, cfg())
    beta = f.beta
    lp_ref = completion_logprobs(f.model, tok, PROMPTS, toks)
    lp_star = torch.log_softmax(lp_ref + rewards / beta, -1)
    metrics = f.train(30)
    lp = completion_logprobs(f.model, tok, PROMPTS, toks)

    def expected_reward(logp):
        return (logp.exp() * rewards).sum(-1).mean().item()

    gain = expected_reward(lp) - expected_reward(lp_ref)
    # the policy moves at least a quarter of the way from pi_ref to pi* in expected reward
    assert gain > 0.25 * (expected_reward(lp_star) - expected_reward(lp_ref))
    assert metrics["global_step"] == 30 and len(metrics["logs"]) == 30
    assert math.isfinite(metrics["reward"]) and "kl" in metrics
    # the reward function got the dataset's context column, aligned with the prompts
    cat_of = dict(zip(PROMPTS, ["x", "y", "z", "w"]))
    assert len(seen) == 30
    for prompts, cats, _ in seen:
        assert len(prompts) == 8 and cats == [cat_of[p] for p in prompts]
    assert [s for *_, s in seen] == list(range(30))


@pytest.mark.parametrize(("cls", "kl_mode"), FOLLOWER_MODES, ids=FOLLOWER_MODE_IDS)
def test_chunks_equal_one_run_bit_identically(cls, kl_mode, model_dir, dataset):
    # 4 prompts / 2 per step = 2 steps per epoch: chunks of 3 stop mid-epoch
    a = cls(model_dir, dataset, target_reward, cfg(kl_mode=kl_mode))
    a.train(3)
    opt_state = a.trainer.optimizer.state_dict()["state"]
    assert opt_state and all(int(s["step"]) == 3 for s in opt_state.values())
    a.sample(["a", "b"], 3)  # sampling in between must not change training
    a.train(3)
    opt_state = a.trainer.optimizer.state_dict()["state"]
    assert all(int(s["step"]) == 6 for s in opt_state.values())  # optimizer state persisted
    b = cls(model_dir, dataset, target_reward, cfg(kl_mode=kl_mode))
    torch.rand(5)  # unrelated RNG use between construction and training changes nothing
    b.train(6)
    assert a.global_step == b.global_step == 6
    assert torch.equal(flat_params(a), flat_params(b))
    c = cls(model_dir, dataset, target_reward, cfg(kl_mode=kl_mode))
    c.train(2)
    c.train(4)  # chunk boundary on an epoch boundary
    assert torch.equal(flat_params(b), flat_params(c))
    # and the run really moved (the comparison is not trivially true)
    fresh = cls(model_dir, dataset, target_reward, cfg(kl_mode=kl_mode))
    assert not torch.equal(flat_params(fresh), flat_params(b))


def test_save_load_continues_identically(model_dir, dataset, tmp_path):
    a = GRPOFollower(
        model_dir, dataset, target_reward, cfg(lr_scheduler_type="linear", max_steps=20)
    )
    a.train(3)
    a.save(tmp_path / "ckpt")
    a.save(tmp_path / "ckpt")  # overwriting an existing checkpoint is atomic too
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]
    a.train(4)
    b = GRPOFollower(
        model_dir, dataset, target_reward, cfg(lr_scheduler_type="linear", max_steps=20)
    )
    b.load(tmp_path / "ckpt")
    assert b.global_step == 3
    b.train(4)
    assert b.global_step == 7
    assert torch.equal(flat_params(a), flat_params(b))
    lr_a = a.trainer.optimizer.param_groups[0]["lr"]
    assert lr_a == b.trainer.optimizer.param_groups[0]["lr"] and lr_a < 1e-2
    assert a.sample(["c"], 4) == b.sample(["c"], 4)
    other = GRPOFollower(model_dir, dataset, target_reward, cfg(beta=0.25))
    with pytest.raises(ValueError, match="beta"):
        other.load(tmp_path / "ckpt")


def test_sample_shapes_and_vocabulary(model_dir, dataset, enumerated):
    _, _, texts, _ = enumerated
    f = GRPOFollower(model_dir, dataset, target_reward, cfg())
    out = f.sample(["a", "d", "b"], 5)
    assert len(out) == 3 and all(len(g) == 5 for g in out)
    assert all(c in texts for g in out for c in g)
    texts_ids = f.sample_with_ids(["a"], 2)
    assert len(texts_ids[1][0]) == 2
    g = GRPOFollower(model_dir, dataset, target_reward, cfg())
    assert g.sample(["a", "d", "b"], 5) == out  # reproducible from the seed
    with pytest.raises(TypeError, match="list"):
        f.sample("a", 2)
    with pytest.raises(ValueError, match="generation"):
        f.sample(["a"], 2, not_a_setting=1)


@pytest.mark.parametrize("beta", [0.0, -0.1, float("nan"), "x"])
def test_beta_must_be_positive(beta):
    with pytest.raises(ValueError, match="beta > 0"):
        TRLFollowerConfig(beta=beta)
    with pytest.raises(ValueError, match="beta > 0"):
        FunctionFollower("f", beta, lambda p, n, **k: [["x"] * n for _ in p])


def test_input_errors(model_dir, dataset, tmp_path):
    missing = tmp_path / "no_model_here"
    with pytest.raises(FileNotFoundError, match="build_tiny_lm") as err:
        GRPOFollower(missing, dataset, target_reward, cfg())
    assert str(missing) in str(err.value)
    with pytest.raises(ValueError, match="empty"):
        GRPOFollower(model_dir, dataset.select([]), target_reward, cfg())
    with pytest.raises(ValueError, match="'prompt' column"):
        GRPOFollower(model_dir, dataset.rename_column("prompt", "text"), target_reward, cfg())
    f = GRPOFollower(model_dir, dataset, None, cfg())
    with pytest.raises(RuntimeError, match="set_reward_function"):
        f.train(1)


def test_bad_reward_outputs_are_named(model_dir, dataset):
    def nan_at_3(prompts, completions, **kw):
        out = [0.0] * len(completions)
        out[3] = float("nan")
        return out

    def too_short(prompts, completions, **kw):
        return [0.0] * (len(completions) - 1)

    f = GRPOFollower(model_dir, dataset, nan_at_3, cfg())
    with pytest.raises(RewardFunctionError, match=r"'nan_at_3'.*index 3"):
        f.train(1)
    f.set_reward_function(too_short)
    with pytest.raises(RewardFunctionError, match=r"'too_short' returned 7 rewards for 8"):
        f.train(1)
    f.set_reward_function(target_reward)
    assert f.train(1)["global_step"] == 1  # recovers once the reward is fixed


def test_exact_follower_samples_the_best_response(enumerated, tmp_path):
    _, _, texts, rewards = enumerated
    log_ref = torch.log_softmax(
        torch.randn(len(PROMPTS), len(texts), generator=torch.Generator().manual_seed(0)), -1
    )
    f = ExactFollower(
        PROMPTS, texts, log_ref, beta=0.5, contexts={"category": ["x", "y", "z", "w"]}, seed=1
    )
    f.set_reward_function(target_reward)
    star = torch.log_softmax(log_ref + rewards / 0.5, -1)
    torch.testing.assert_close(f.log_pi_star(), star)
    n = 20000
    samples = f.sample(["b"], n)[0]
    freq = torch.tensor([samples.count(t) for t in texts], dtype=torch.float64) / n
    tv = 0.5 * (freq - star[1].exp()).abs().sum().item()
    assert tv < 0.03  # sampling error of 20k draws over 21 outcomes is ~0.01
    f.save(tmp_path / "fx")
    nxt = f.sample(["a", "c"], 7)
    g = ExactFollower(PROMPTS, texts, log_ref, beta=0.5, seed=99)
    g.set_reward_function(target_reward)
    g.load(tmp_path / "fx")
    assert g.sample(["a", "c"], 7) == nxt
    assert f.train(5) == {"global_step": 5, "steps": 5}

    def bad(prompts, completions, **kw):
        return [float("inf")] * len(completions)

    f.set_reward_function(bad)
    with pytest.raises(RewardFunctionError, match=r"'bad'.*index 0"):
        f.sample(["a"], 1)


# --------------------------------------------------------------------------- kl_mode
def loss_mode_fixed_point(seqs, log_ref, rewards, beta, max_len, scale):
    """``log pi(y_j | p_i)`` at the fixed point of ``kl_mode="loss"`` for a policy that is tabular
    in the prefix: at every prefix ``s``, ``pi(a|s) ∝ pi_ref(a|s) exp(scale * Q_r(s, a) / beta)``,
    where ``Q_r`` is the expected *task* reward after ``(s, a)`` under ``pi`` (the per-token KL
    term credits no later-token KL) and ``scale = (G - 1) / G`` (GRPO's group-mean baseline
    contains the sample itself, which shrinks the reward gradient but not the KL gradient).
    Solved by backward induction over prefixes, ``seqs`` as in ``enumerate_completions``."""
    out = torch.empty(log_ref.shape, dtype=torch.float64)
    for i in range(log_ref.size(0)):

        def mass(prefix, i=i):  # log pi_ref of all completions starting with prefix
            js = [j for j, t in enumerate(seqs) if t[: len(prefix)] == prefix]
            return torch.logsumexp(log_ref[i, js].double(), 0)

        value, cond = {}, {}
        for s in sorted(seqs, key=len, reverse=True):
            j = seqs.index(s)
            if len(s) == max_len:  # truncated, no choice left
                value[s] = float(rewards[i, j])
                continue
            ref_logits = {"eos": float(log_ref[i, j] - mass(s))}
            q = {"eos": float(rewards[i, j])}
            for w in range(len(WORDS)):
                ref_logits[w] = float(mass((*s, w)) - mass(s))
                q[w] = value[(*s, w)]
            scores = torch.tensor([ref_logits[a] + scale * q[a] / beta for a in ref_logits])
            logp = torch.log_softmax(scores.double(), 0)
            cond[s] = dict(zip(ref_logits, logp.tolist()))
            value[s] = sum(math.exp(cond[s][a]) * q[a] for a in ref_logits)
        for j, s in enumerate(seqs):
            lp = sum(cond[s[:k]][s[k]] for k in range(len(s)))
            out[i, j] = lp + (cond[s]["eos"] if len(s) < max_len else 0.0)
    return out


def exact_pair_reward(prompts, completions, **kwargs):
    """1 if the completion is exactly two target words, else 0 (the reward hinges on the
    second token, which the per-token KL of kl_mode="loss" does not credit to the first)."""
    return [float(c.split() == [TARGET[p]] * 2) for p, c in zip(prompts, completions)]


def test_kl_in_reward_converges_to_pi_star_kl_in_loss_does_not(model_dir):
    _, tok = load_tiny_lm(model_dir)
    seqs, toks = enumerate_completions(len(WORDS), 2, tok.eos_token_id)
    texts = [" ".join(WORDS[i] for i in s) for s in seqs]
    prompts, beta, groups = ["a"], 0.25, 8
    rewards = torch.tensor([exact_pair_reward(prompts * len(texts), texts)], dtype=torch.float64)
    ref, _ = load_tiny_lm(model_dir)
    log_ref = completion_logprobs(ref, tok, prompts, toks)
    log_star = torch.log_softmax(log_ref + rewards / beta, -1)
    log_loss_fp = loss_mode_fixed_point(seqs, log_ref, rewards, beta, 2, (groups - 1) / groups)

    def tv(logp, logq):
        return 0.5 * (logp.exp() - logq.exp()).abs().sum(-1).mean().item()

    gap = tv(log_loss_fp, log_star)  # distance between the two modes' fixed points (~0.13)
    assert gap > 0.1
    # sanity of the recursion: with one token it is the closed form pi_ref exp(scale * r / beta)
    seqs1, toks1 = enumerate_completions(len(WORDS), 1, tok.eos_token_id)
    r1 = torch.tensor([[float(s == (WORDS.index("b"),)) for s in seqs1]], dtype=torch.float64)
    log_ref1 = completion_logprobs(ref, tok, prompts, toks1)
    torch.testing.assert_close(
        loss_mode_fixed_point(seqs1, log_ref1, r1, beta, 1, 0.5),
        torch.log_softmax(log_ref1 + 0.5 * r1 / beta, -1),
    )
    ds = datasets.Dataset.from_dict({"prompt": prompts})
    dist = {}
    for mode in ("reward", "loss"):
        f = GRPOFollower(
            model_dir,
            ds,
            exact_pair_reward,
            cfg(
                kl_mode=mode,
                beta=beta,
                num_generations=groups,
                prompts_per_step=1,
                learning_rate=3e-3,
            ),
        )
        f.train(150)
        dist[mode] = tv(completion_logprobs(f.model, tok, prompts, toks), log_star)
    # each mode ends on its own side of the midpoint between pi* and the loss-mode fixed point
    assert dist["reward"] < gap / 2 < dist["loss"], (dist, gap)


def test_reward_mode_passes_r_minus_beta_log_ratio_to_trl(model_dir, dataset, enumerated):
    tok, toks, _, rewards = enumerated
    f = GRPOFollower(model_dir, dataset, target_reward, cfg())  # kl_mode="reward" is the default
    assert f.config.kl_mode == "reward" and f.beta == 0.5
    assert f.trainer.beta == 0.0 and f.trainer.ref_model is None  # no KL in TRL's loss
    assert f.trainer.reward_func_names == ["target_reward", "kl_penalty"]
    f.train(3)  # move the policy away from pi_ref so the penalty is not trivially zero
    seen = {}
    calculate, score = f.trainer._calculate_rewards, f.trainer._generate_and_score_completions

    def spy_calculate(inputs, prompts, completions, completion_ids_list):
        seen["policy"] = copy.deepcopy(f.model.state_dict())  # the policy that sampled the batch
        out = calculate(inputs, prompts, completions, completion_ids_list)
        seen.update(prompts=list(prompts), ids=[list(c) for c in completion_ids_list], cols=out)
        return out

    def spy_score(inputs):
        out = score(inputs)
        seen["advantages"] = out["advantages"].clone()
        return out

    f.trainer._calculate_rewards = spy_calculate
    f.trainer._generate_and_score_completions = spy_score
    metrics = f.train(1)
    # independent computation: exact enumerated log-probs of the sampled completions
    policy, _ = load_tiny_lm(model_dir)
    policy.load_state_dict(seen["policy"])
    ref, _ = load_tiny_lm(model_dir)
    rows = [PROMPTS.index(p) for p in seen["prompts"]]
    cols = [toks.index(ids) for ids in seen["ids"]]
    logp = completion_logprobs(policy, tok, PROMPTS, toks)[rows, cols]
    logp_ref = completion_logprobs(ref, tok, PROMPTS, toks)[rows, cols]
    r = rewards[rows, cols]
    assert (logp - logp_ref).abs().max() > 0.1
    expected = r - 0.5 * (logp - logp_ref)  # r' = r - beta * (log pi - log pi_ref)
    reward_cols = seen["cols"].double()
    assert torch.equal(reward_cols[:, 0], r)  # the task reward column is untouched
    # float32 log-probs in TRL vs float64 sums here
    torch.testing.assert_close(reward_cols.sum(1), expected, atol=1e-5, rtol=0)
    grouped = expected.view(-1, 4)  # num_generations = 4, scale_rewards="none"
    torch.testing.assert_close(
        seen["advantages"].double(),
        (grouped - grouped.mean(1, keepdim=True)).view(-1),
        atol=1e-5,
        rtol=0,
    )
    # logs: the task reward as before, the KL term under its own name, RLOO's per-token "kl"
    tokens = sum(len(ids) for ids in seen["ids"])
    assert metrics["reward"] == pytest.approx(r.mean().item(), abs=1e-6)
    assert metrics["rewards/target_reward/mean"] == pytest.approx(r.mean().item(), abs=1e-6)
    assert metrics["rewards/kl_penalty/mean"] == pytest.approx(
        (-0.5 * (logp - logp_ref)).mean().item(), abs=1e-5
    )
    assert metrics["kl"] == pytest.approx((logp - logp_ref).sum().item() / tokens, abs=1e-5)


def test_kl_mode_settings_and_checkpoints(model_dir, dataset, tmp_path):
    assert TRLFollowerConfig().kl_mode == "reward"
    with pytest.raises(ValueError, match="kl_mode"):
        TRLFollowerConfig(kl_mode="token")
    with pytest.raises(ValueError, match="GRPO setting"):
        RLOOFollower(model_dir, dataset, target_reward, cfg(kl_mode="loss"))
    with pytest.raises(ValueError, match="sum_then_normalize"):
        GRPOFollower(
            model_dir,
            dataset,
            target_reward,
            cfg(trl={"multi_objective_aggregation": "normalize_then_sum"}),
        )
    weighted = GRPOFollower(model_dir, dataset, target_reward, cfg(trl={"reward_weights": [2]}))
    assert weighted.trainer.reward_weights.tolist() == [2.0, 1.0]  # weight 1 for the KL term
    loss = GRPOFollower(model_dir, dataset, target_reward, cfg(kl_mode="loss"))
    assert loss.trainer.beta == 0.5 and loss.trainer.ref_model is not None
    assert loss.trainer.reward_func_names == ["target_reward"]
    loss.train(1)
    loss.save(tmp_path / "loss")
    reward = GRPOFollower(model_dir, dataset, target_reward, cfg())
    with pytest.raises(ValueError, match="kl_mode"):
        reward.load(tmp_path / "loss")  # a checkpoint continues only in its own KL mode
    # checkpoints from before kl_mode existed were trained with TRL's KL loss term
    meta_path = tmp_path / "loss" / "follower.json"
    meta = json.loads(meta_path.read_text())
    del meta["config"]["kl_mode"]
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="kl_mode"):
        reward.load(tmp_path / "loss")
    GRPOFollower(model_dir, dataset, target_reward, cfg(kl_mode="loss")).load(tmp_path / "loss")


# --------------------------------------------------------------------------- configuration
def test_trl_settings_are_checked_against_trl_and_mapped_once():
    from align_cbrl.followers.trl_config import trl_config

    with pytest.raises(
        ValueError, match=r"'lerning_rate' is not a GRPOConfig/RLOOConfig field.*'learning_rate'"
    ):
        TRLFollowerConfig(trl={"lerning_rate": 1e-3})
    with pytest.raises(ValueError, match="set beta instead"):
        TRLFollowerConfig(trl={"beta": 0.1})
    with pytest.raises(ValueError, match="not a RLOOConfig field"):
        trl_config("rloo", cfg(scale_rewards="group"))
    with pytest.raises(ValueError, match="set by the follower"):
        trl_config("grpo", cfg(report_to="wandb"), fixed={"report_to": "none"})
    with pytest.raises(ValueError, match="num_generations >= 2"):
        trl_config("grpo", cfg(num_generations=1))
    grpo = trl_config("grpo", cfg(prompts_per_step=3, temperature=0.7))
    assert (grpo.beta, grpo.scale_rewards, grpo.temperature) == (0.0, "none", 0.7)
    assert (grpo.per_device_train_batch_size, grpo.seed, grpo.learning_rate) == (12, 0, 1e-2)
    assert trl_config("grpo", cfg(kl_mode="loss")).beta == 0.5
    rloo = trl_config("rloo", cfg(), defaults={"max_steps": 7, "learning_rate": 1.0})
    assert (rloo.beta, rloo.max_steps, rloo.learning_rate) == (0.5, 7, 1e-2)


def test_trl_version_outside_the_supported_range_fails_clearly():
    from align_cbrl.followers.trl_compat import SUPPORTED_TRL, check_trl_version

    assert check_trl_version() == "1.16.0" and SUPPORTED_TRL == ">=1.16.0,<1.17"
    for version in ("1.15.2", "1.17.0", "2.0.0"):
        with pytest.raises(ImportError, match=rf"trl {version} is installed.*trl==1.16.0"):
            check_trl_version(version)
