"""Rule-based reward components (``docs/theory.md §3``: swappable parts of ``r_x`` and
``rbar``): completion length, keyword / regex counts, and a format check.

All three score the completion text only and are exact, cheap and deterministic, which makes
them the default components of the enumerable tiny-language task
(:mod:`align_cbrl.reference.tiny_language`).
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import torch
from torch import Tensor

from align_cbrl.rewards.base import Contexts, RewardComponent

__all__ = ["FormatReward", "KeywordReward", "LengthReward"]


class LengthReward(RewardComponent):
    """Length of the completion, in whitespace-separated ``words`` or in ``chars``.

    ``score = scale * len`` when ``target`` is ``None``, else ``score = -scale * |len - target|``
    (a penalty for missing the target length)."""

    kind = "length"

    def __init__(
        self,
        name: str = "length",
        unit: str = "words",
        target: int | None = None,
        scale: float = 1.0,
        none_value: float | None = None,
    ) -> None:
        super().__init__(name, none_value)
        if unit not in ("words", "chars"):
            raise ValueError(
                f"length component {name!r}: unit must be 'words' or 'chars', got {unit!r}"
            )
        if target is not None and (not isinstance(target, int) or target < 0):
            raise ValueError(
                f"length component {name!r}: target must be an int >= 0, got {target!r}"
            )
        self.unit, self.target, self.scale = unit, target, float(scale)

    def length(self, text: str) -> int:
        return len(text.split()) if self.unit == "words" else len(text)

    def score(self, prompts: list[str], completions: list[str], contexts: Contexts) -> Tensor:
        n = torch.tensor([self.length(c) for c in completions], dtype=torch.float64)
        if self.target is None:
            return self.scale * n
        return -self.scale * (n - self.target).abs()


class KeywordReward(RewardComponent):
    """Counts keyword (or regex) occurrences in the completion.

    ``keywords`` are literal strings (matched as whole words when ``whole_word``) unless
    ``regex`` is true, in which case they are regular expressions. ``mode="count"`` scores
    ``weight * (number of matches of all keywords)``; ``mode="any"`` scores ``weight`` if any
    keyword occurs and 0 otherwise."""

    kind = "keyword"

    def __init__(
        self,
        name: str,
        keywords: Sequence[str],
        regex: bool = False,
        whole_word: bool = True,
        case_sensitive: bool = False,
        mode: str = "count",
        weight: float = 1.0,
        none_value: float | None = None,
    ) -> None:
        super().__init__(name, none_value)
        if isinstance(keywords, str) or not keywords:
            raise ValueError(f"keyword component {name!r}: 'keywords' must be a non-empty list")
        if mode not in ("count", "any"):
            raise ValueError(
                f"keyword component {name!r}: mode must be 'count' or 'any', got {mode!r}"
            )
        flags = 0 if case_sensitive else re.IGNORECASE
        self.patterns: list[re.Pattern[str]] = []
        for kw in keywords:
            if not isinstance(kw, str) or not kw:
                raise ValueError(
                    f"keyword component {name!r}: keyword {kw!r} must be a non-empty string"
                )
            pat = kw if regex else re.escape(kw)
            if whole_word and not regex:
                pat = rf"(?<!\w){pat}(?!\w)"
            try:
                self.patterns.append(re.compile(pat, flags))
            except re.error as err:
                raise ValueError(
                    f"keyword component {name!r}: invalid regex {kw!r}: {err}"
                ) from err
        self.mode, self.weight = mode, float(weight)

    def count(self, text: str) -> int:
        return sum(len(p.findall(text)) for p in self.patterns)

    def score(self, prompts: list[str], completions: list[str], contexts: Contexts) -> Tensor:
        n = torch.tensor([self.count(c) for c in completions], dtype=torch.float64)
        if self.mode == "any":
            n = (n > 0).to(torch.float64)
        return self.weight * n


class FormatReward(RewardComponent):
    """``on_match`` if the completion matches ``pattern`` (``match="full"`` for
    ``re.fullmatch`` after stripping surrounding whitespace, ``"search"`` for ``re.search``),
    else ``on_mismatch``."""

    kind = "format"

    def __init__(
        self,
        name: str,
        pattern: str,
        match: str = "full",
        on_match: float = 1.0,
        on_mismatch: float = 0.0,
        none_value: float | None = None,
    ) -> None:
        super().__init__(name, none_value)
        if match not in ("full", "search"):
            raise ValueError(
                f"format component {name!r}: match must be 'full' or 'search', got {match!r}"
            )
        try:
            self.pattern = re.compile(pattern, re.DOTALL)
        except (re.error, TypeError) as err:
            raise ValueError(
                f"format component {name!r}: invalid pattern {pattern!r}: {err}"
            ) from err
        self.match, self.on_match, self.on_mismatch = match, float(on_match), float(on_mismatch)

    def matches(self, text: str) -> bool:
        if self.match == "full":
            return self.pattern.fullmatch(text.strip()) is not None
        return self.pattern.search(text) is not None

    def score(self, prompts: list[str], completions: list[str], contexts: Contexts) -> Tensor:
        return torch.tensor(
            [self.on_match if self.matches(c) else self.on_mismatch for c in completions],
            dtype=torch.float64,
        )
