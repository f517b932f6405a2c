"""The enumerable tiny-language reference (``docs/theory.md`` §3): completion set, exact
pi*, F, dF/dx, bilevel optimisation, sampler, and compatibility with a real tiny causal LM."""

from __future__ import annotations

import math

import pytest
import torch

from align_cbrl.reference.tiny_language import (
    TinyLanguageConfig,
    TinyLanguageTask,
    enumerate_completions,
    exact_gradient,
    exact_objective,
    exact_policy,
    optimize_exact,
    sample_completions,
)
from tests.helpers import ROOT


def _generation_paths(V: int, L: int, min_words: int) -> list[tuple[int, ...]]:
    """Every token path of sampling with max_new_tokens=L, min_new_tokens=min_words."""
    eos, out = V, []

    def rec(prefix: tuple[int, ...]) -> None:
        if len(prefix) == L:
            out.append(prefix)
            return
        for t in range(V + 1):
            if t == eos:
                if len(prefix) >= min_words:
                    out.append((*prefix, eos))
            else:
                rec((*prefix, t))

    rec(())
    return out


@pytest.mark.parametrize("V,L,m", [(4, 3, 1), (3, 4, 1), (2, 2, 0), (1, 1, 1)])
def test_completion_set_is_the_generation_support(V: int, L: int, m: int) -> None:
    toks = enumerate_completions(V, L, m)
    assert sorted(toks) == sorted(_generation_paths(V, L, m))
    assert len(toks) == len(set(toks)) == sum(V**k for k in range(m, L + 1))
    lens = [len([t for t in x if t != V]) for x in toks]
    assert lens == sorted(lens)  # enumerated by length


def test_texts_and_lookups(task: TinyLanguageTask) -> None:
    assert task.num_completions == 84 and task.eos_id == 4
    assert len(set(task.texts)) == 84
    i = task.index_of_text("b a")
    assert task.tokens[i] == (1, 0, 4) and task.texts[i] == "b a"
    assert task.index_of_tokens([2, 2, 3]) == task.index_of_text("c c d")
    assert task.index_of_tokens([1, 4, 4, 4]) == task.index_of_text("b")  # padding after EOS
    with pytest.raises(KeyError, match="not in the completion set"):
        task.index_of_tokens([1, 2])  # 2 words without EOS: not generated with L=3
    # component scores are those of the texts
    k = task.component_names.index("count_a")
    assert task.scores[0, task.index_of_text("a b a"), k] == 2
    k = task.component_names.index("starts_with_c")
    assert task.scores[2, task.index_of_text("c a"), k] == 1
    assert task.scores[2, task.index_of_text("a c"), k] == 0


def test_exact_policy_matches_a_brute_force_softmax(task: TinyLanguageTask) -> None:
    bl = task.bilevel(task.make_leader(init_std=0.4, seed=1))
    beta = torch.tensor([0.5, 1.0, 2.0, 0.7])
    pi = exact_policy(task, bl, beta)
    r, _ = task.rewards(bl)
    ref = torch.softmax(task.log_ref, -1)
    for p in (0, 3):
        w = [
            float(ref[p, y]) * math.exp(float(r[p, y].detach()) / float(beta[p])) for y in range(84)
        ]
        Z = sum(w)
        assert torch.allclose(
            pi[p].detach(), torch.tensor([v / Z for v in w], dtype=torch.float64), atol=1e-14
        )


def test_exact_gradient_matches_finite_differences_and_closed_form(task: TinyLanguageTask) -> None:
    bl = task.bilevel(task.make_leader(init_std=0.5, seed=2, cost_coef=0.3, cost_kind="l2"))
    beta = 0.8
    g = exact_gradient(task, bl, beta)
    x0 = bl.leader.flat_parameters()
    h = 1e-6
    fd = torch.empty_like(x0)
    for j in range(x0.numel()):
        e = torch.zeros_like(x0)
        e[j] = h
        fp = exact_objective(task, bl, beta, bl.leader.unflatten(x0 + e, "leader."))
        fm = exact_objective(task, bl, beta, bl.leader.unflatten(x0 - e, "leader."))
        fd[j] = (fp - fm) / (2 * h)
    assert torch.allclose(g, fd, atol=1e-8)
    # closed form of docs/theory.md §3: E_p[ E d rbar + Cov(d r, rbar) / beta ]
    from align_cbrl.reference.tiny_language import reward_jacobians

    _r, rbar, d_r, d_rbar = reward_jacobians(task, bl)
    pi = exact_policy(task, bl, beta).detach()[..., None]
    Edr = (pi * d_r).sum(1, keepdim=True)
    Erb = (pi[..., 0] * rbar).sum(1, keepdim=True)
    per_p = (pi * d_rbar).sum(1) + (pi * (d_r - Edr) * (rbar - Erb)[..., None]).sum(1) / beta
    assert torch.allclose(g, (task.prompt_probs[:, None] * per_p).sum(0), atol=1e-13)


def test_contexts_conflict_and_exact_optimisation_resolves_them(task: TinyLanguageTask) -> None:
    bl = task.bilevel(task.make_leader(cost_coef=0.05, cost_kind="l2"))
    beta = 1.0
    g = exact_gradient(task, bl, beta).reshape(len(task.context_values), -1)
    row = {c: i for i, c in enumerate(task.context_values)}
    k = {n: i for i, n in enumerate(task.component_names)}
    # the follower likes long completions; for "concise" the leader wants them short
    assert task.config.follower["weights"]["n_words"] > 0
    assert g[row["concise"], k["n_words"]] < 0
    # ... and for "b_topic" it wants more "b"
    assert g[row["b_topic"], k["count_b"]] > 0
    assert g[row["no_d"], k["count_d"]] < 0
    opt = optimize_exact(task, bl, beta, steps=150, lr=10.0)
    assert opt.history[0] + 0.3 < opt.F
    assert all(b >= a for a, b in zip(opt.history, opt.history[1:]))  # monotone ascent
    w = opt.bilevel.leader.weight_table().detach()
    assert w[row["concise"], k["n_words"]] < 0 < w[row["b_topic"], k["count_b"]]
    # the input is left untouched and x* is the optimised copy's parameters
    assert float(bl.leader.flat_parameters().abs().max()) == 0.0
    assert torch.equal(opt.x, opt.bilevel.leader.flat_parameters())
    assert float(exact_objective(task, opt.bilevel, beta).detach()) == pytest.approx(
        opt.F, abs=1e-12
    )


def test_exact_optimisation_reaches_a_local_maximum() -> None:
    cfg = TinyLanguageConfig(vocab=["a", "b"], max_words=2)
    cfg.components = [c for c in cfg.components if c["name"] in ("n_words", "count_a", "count_b")]
    cfg.leader = {"by_context": {"concise": {"n_words": -1.0}, "b_topic": {"count_b": 1.0}}}
    cfg.prompts = [{"prompt": "a", "category": "concise"}, {"prompt": "b", "category": "b_topic"}]
    task = TinyLanguageTask(cfg)
    bl = task.bilevel(task.make_leader(cost_coef=1.0, cost_kind="l2"))
    opt = optimize_exact(task, bl, 1.0, steps=2000, lr=10.0, tol=1e-6)
    assert opt.grad_norm <= 1e-6 and len(opt.history) < 2001
    gen = torch.Generator().manual_seed(0)
    for _ in range(20):
        d = torch.randn(opt.x.shape, generator=gen, dtype=torch.float64)
        x = opt.x + 1e-3 * d / d.norm()
        assert (
            float(
                exact_objective(task, opt.bilevel, 1.0, bl.leader.unflatten(x, "leader.")).detach()
            )
            < opt.F
        )


def test_sampler_frequencies_follow_pi_star(task: TinyLanguageTask) -> None:
    from scipy.stats import chisquare

    bl = task.bilevel(task.make_leader(init_std=0.5, seed=4))
    beta = 0.6
    gen = torch.Generator().manual_seed(11)
    p_idx, comp = sample_completions(task, bl, beta, 20000, gen, torch.tensor([1, 3]))
    pi = exact_policy(task, bl, beta).detach()
    for g, p in enumerate(p_idx.tolist()):
        counts = torch.bincount(comp[g], minlength=84).double()
        mask = pi[p] * 20000 >= 5  # chi-square validity; pool the rest
        obs = torch.cat([counts[mask], counts[~mask].sum()[None]])
        exp = torch.cat([pi[p][mask], pi[p][~mask].sum()[None]]) * 20000
        assert chisquare(obs.numpy(), exp.numpy()).pvalue > 1e-3


def test_bad_inputs_are_refused(task: TinyLanguageTask) -> None:
    with pytest.raises(ValueError, match=r"log_ref must be \[P, Y\] = \[4, 84\]"):
        task.with_log_ref(torch.zeros(4, 83))
    bad = torch.zeros(4, 84)
    bad[2, 5] = float("nan")
    with pytest.raises(ValueError, match="prompt 2, completion 5"):
        task.with_log_ref(bad)
    with pytest.raises(ValueError, match="too many"):
        enumerate_completions(20, 5)
    with pytest.raises(ValueError, match="without spaces"):
        TinyLanguageTask(TinyLanguageConfig(vocab=["a b", "c"]))
    with pytest.raises(ValueError, match="'prompt' and 'category'"):
        TinyLanguageTask(TinyLanguageConfig(prompts=[{"prompt": "a"}]))
    with pytest.raises(ValueError, match="summing to 1"):
        TinyLanguageTask(TinyLanguageConfig(prompt_probs=[0.5, 0.5, 0.5, 0.5]))
    with pytest.raises(ValueError, match="beta must be > 0"):
        exact_policy(task, task.bilevel(), 0.0)
    # an unnormalised table is renormalised; the policy is unchanged by row constants
    t2 = task.with_log_ref(task.log_ref + torch.arange(4.0)[:, None])
    assert torch.allclose(t2.log_ref, task.log_ref, atol=1e-14)


def _word_level_lm(vocab: list[str], seed: int):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    ids = {w: i for i, w in enumerate([*vocab, "<eos>"])}
    tk = Tokenizer(models.WordLevel(ids, unk_token="<eos>"))
    tk.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, eos_token="<eos>", pad_token="<eos>")
    torch.manual_seed(seed)
    cfg = GPT2Config(
        vocab_size=len(ids),
        n_positions=16,
        n_embd=16,
        n_layer=1,
        n_head=2,
        bos_token_id=len(vocab),
        eos_token_id=len(vocab),
        pad_token_id=len(vocab),
    )
    return tok, GPT2LMHeadModel(cfg).double().eval()


def test_a_real_word_level_lm_generates_exactly_this_set(task: TinyLanguageTask) -> None:
    """A tiny GPT-2 over vocab + EOS: its exact sequence log-probs (max_new_tokens=L,
    min_new_tokens=1) over the enumerated set sum to 1 per prompt, and its samples all lie in
    the set; the table plugs in as pi_ref."""
    tok, lm = _word_level_lm(task.vocab, seed=0)
    L, eos = task.config.max_words, task.eos_id
    table = torch.empty(task.num_prompts, task.num_completions, dtype=torch.float64)
    with torch.no_grad():
        for p, prompt in enumerate(task.prompts):
            pid = tok(prompt)["input_ids"]
            seqs = torch.tensor([pid + list(t) + [eos] * (L - len(t)) for t in task.tokens])
            # min_new_tokens=1: EOS is impossible at the first generated position
            logits = lm(seqs).logits[:, len(pid) - 1 : len(pid) - 1 + L].clone()
            logits[:, 0, eos] = -math.inf
            logp = torch.log_softmax(logits, -1)
            for y, t in enumerate(task.tokens):
                table[p, y] = sum(logp[y, i, t[i]] for i in range(len(t)))
            ids = lm.generate(
                torch.tensor([pid]),
                do_sample=True,
                max_new_tokens=L,
                min_new_tokens=1,
                num_return_sequences=30,
                pad_token_id=eos,
                eos_token_id=eos,
            )
            for row in ids[:, len(pid) :].tolist():
                task.index_of_tokens(row)  # raises if outside the set
    assert torch.allclose(
        torch.logsumexp(table, -1), torch.zeros(4, dtype=torch.float64), atol=1e-12
    )
    t2 = task.with_log_ref(table)
    assert torch.allclose(t2.log_ref, table, atol=1e-12)
    assert torch.allclose(
        exact_policy(t2, t2.bilevel(), 1.0).detach(),
        torch.softmax(table + task.rewards(task.bilevel())[0].detach(), -1),
        atol=1e-12,
    )


def test_config_from_yaml_matches_shipped_reward_config(tmp_path) -> None:

    path = ROOT / "configs" / "rewards" / "tiny_language.yaml"
    cfg = TinyLanguageConfig.from_yaml(path)
    assert (cfg.components, cfg.follower, cfg.leader) == (
        TinyLanguageConfig().components,
        TinyLanguageConfig().follower,
        TinyLanguageConfig().leader,
    )
    (tmp_path / "t.yaml").write_text("max_words: 2\nvocab: [x, y]\n")
    t = TinyLanguageTask(TinyLanguageConfig.from_yaml(tmp_path / "t.yaml"))
    assert t.num_completions == 6 and t.texts[:2] == ["x", "y"]
    (tmp_path / "u.yaml").write_text("max_word: 2\n")
    with pytest.raises(ValueError, match=r"unknown field\(s\) \['max_word'\]"):
        TinyLanguageConfig.from_yaml(tmp_path / "u.yaml")
