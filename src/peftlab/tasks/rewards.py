"""Reward functions for online RL, each registered by name: ``rl.rewards.<name>=<weight>``.

A reward function takes the sampled completions (text, stripped), the references of their prompts
(the data's ``response_field``) and the completions' lengths in tokens, and returns one float per
completion. A run's reward is the weighted sum of its rewards; each is recorded on its own.
A new reward is one function here with ``@reward("name")``.
"""

from __future__ import annotations

import re
from typing import Callable

from peftlab.config.plugins import register_reward

RewardFn = Callable[[list[str], list[str], list[int], object], list[float]]
REWARD_FUNCTIONS: dict[str, RewardFn] = {}
ISO_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")


def reward(name: str) -> Callable[[RewardFn], RewardFn]:
    def register(fn: RewardFn) -> RewardFn:
        if name in REWARD_FUNCTIONS:
            raise ValueError(f"reward {name!r} is registered twice")
        REWARD_FUNCTIONS[name] = fn
        register_reward(name)
        return fn

    return register


@reward("date_exact")
def date_exact(completions: list[str], references: list[str], lengths: list[int], settings: object) -> list[float]:
    """1 for exactly the reference's ISO date; 0.25 for a different answer of the YYYY-MM-DD shape
    (the format learnt, the date not); 0 otherwise."""
    return [1.0 if c == r.strip() else 0.25 if ISO_DATE.fullmatch(c) else 0.0
            for c, r in zip(completions, references, strict=True)]


@reward("length_penalty")
def length_penalty(completions: list[str], references: list[str], lengths: list[int], settings: object) -> list[float]:
    """Minus the share of the generation budget (rl.max_new_tokens) a completion used: from 0 for an
    empty answer to -1 for one cut at the budget. Weighted small, it prefers the shorter of two
    equally good answers."""
    budget = max(1, int(getattr(settings, "max_new_tokens", None) or max(lengths, default=1)))
    return [-min(n, budget) / budget for n in lengths]
