"""Reward functions for online RL, each registered by name: ``rl.rewards.<name>=<weight>``.

A reward function has TRL's calling convention, so that a function written for TRL's GRPOTrainer
works here unchanged, and the user's own code registers its own (``peftlab.plugins.reward``)::

    def brevity(prompts, completions, **kwargs) -> list[float | None]

``prompts`` and ``completions`` (text, stripped) are one entry per completion, and ``kwargs`` holds,
also one entry per completion, every other field of the prompt's data row by its name, and peftlab's
own: ``references`` (the data's ``response_field``), ``completion_lengths`` (tokens) and
``max_new_tokens`` (the budget, one int). A function returns one float per completion, or None where
it does not apply (as in TRL, it then counts nothing towards the weighted sum of that completion).
A run's reward is the weighted sum of its rewards; each is recorded on its own.
"""

from __future__ import annotations

import math
import re
from typing import Any, Callable

from peftlab.config.plugins import register_reward
from peftlab.errors import ConfigError

RewardFn = Callable[..., list]
REWARD_FUNCTIONS: dict[str, RewardFn] = {}
ISO_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")


def reward(name: str) -> Callable[[RewardFn], RewardFn]:
    """Decorator: ``rl.rewards.<name>=<weight>`` then calls the function."""
    def register(fn: RewardFn) -> RewardFn:
        if name in REWARD_FUNCTIONS:
            raise ConfigError(f"rl.rewards: the reward {name!r} is registered twice")
        if not callable(fn):
            raise ConfigError(f"rl.rewards: the reward {name!r} is not callable")
        REWARD_FUNCTIONS[name] = fn
        register_reward(name)
        return fn

    return register


def reward_values(name: str, prompts: list[str], completions: list[str], fields: dict[str, list[Any]],
                  max_new_tokens: int) -> list[float]:
    """The reward ``name`` of every completion (NaN where it returned None), checked: one finite number
    or None per completion, or one line naming the reward."""
    key = f"rl.rewards.{name}"
    try:
        values = REWARD_FUNCTIONS[name](prompts=prompts, completions=completions, max_new_tokens=max_new_tokens,
                                        **fields)
    except (ConfigError, KeyboardInterrupt):
        raise
    except Exception as err:  # noqa: BLE001  (the user's function failing, whatever the error)
        first = str(err).splitlines()[0] if str(err) else ""
        raise ConfigError(f"{key}: the reward function {_where(name)} failed: {type(err).__name__}: {first}") from None
    try:
        values = list(values)
        checked = [float("nan") if v is None else float(v) for v in values]
        good = len(checked) == len(completions) and all(v is None or math.isfinite(float(v)) for v in values)
    except (TypeError, ValueError):
        good = False
    if not good:
        shown = repr(values[:8]) + (" ..." if len(values) > 8 else "") if isinstance(values, list) else repr(values)
        raise ConfigError(f"{key}: the reward must give one finite number (or None) per completion; "
                          f"{_where(name)} gave {shown} for {len(completions)} completions")
    return checked


def _where(name: str) -> str:
    fn = REWARD_FUNCTIONS[name]
    return f"{getattr(fn, '__module__', '?')}.{getattr(fn, '__qualname__', name)}"


@reward("date_exact")
def date_exact(prompts: list[str], completions: list[str], references: list[str], **kwargs: Any) -> list[float]:
    """1 for exactly the reference's ISO date; 0.25 for a different answer of the YYYY-MM-DD shape
    (the format learnt, the date not); 0 otherwise."""
    return [1.0 if c == r.strip() else 0.25 if ISO_DATE.fullmatch(c) else 0.0
            for c, r in zip(completions, references, strict=True)]


@reward("length_penalty")
def length_penalty(prompts: list[str], completions: list[str], completion_lengths: list[int], max_new_tokens: int,
                   **kwargs: Any) -> list[float]:
    """Minus the share of the generation budget (rl.max_new_tokens) a completion used: from 0 for an
    empty answer to -1 for one cut at the budget. Weighted small, it prefers the shorter of two
    equally good answers."""
    budget = max(1, int(max_new_tokens or max(completion_lengths, default=1)))
    return [-min(n, budget) / budget for n in completion_lengths]
