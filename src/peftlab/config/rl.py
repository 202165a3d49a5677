"""Online reinforcement learning settings (``rl=grpo``, ``rl=rloo``; data of task type ``rl``).

Each step samples ``num_generations`` completions of every prompt from the current policy, scores
them with the weighted rewards, and moves the policy towards the completions that scored above
their group: GRPO (Shao et al., 2024) normalises each group's rewards by its mean and standard
deviation, RLOO (Ahmadian et al., 2024) subtracts the mean of the other completions (a leave-one-out
baseline). The policy is held near its reference by the k3 estimator of the KL divergence per
token, weighted by ``beta`` (0: no reference is computed).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Optional

from omegaconf import MISSING

from peftlab.config.checks import check, one_of

LEARNED = "reward_model"  # the reward name of a trained reward model (rl.reward_model)


@dataclass
class RLSchema:
    name: str = MISSING
    algorithm: str = "grpo"  # grpo (group mean and std), rloo (leave-one-out baseline)
    num_generations: int = 4  # completions sampled per prompt (a group)
    temperature: float = 1.0
    top_p: float = 1.0
    max_new_tokens: Optional[int] = None  # null: data.max_new_tokens
    beta: float = 0.04  # the KL penalty's weight; 0: no reference at all
    epsilon: float = 0.2  # the ratio's clip range
    scale_rewards: bool = True  # grpo: divide by the group's standard deviation
    # adapter_off: the base (a fresh adapter); frozen_adapter: the adapter the run starts from
    # (init_adapter), frozen beside the policy's; separate: a second full copy (the way without PEFT);
    # none: with beta=0
    reference: str = "adapter_off"
    # the rewards by registered name (tasks/rewards.py) and their weights, e.g. {date_exact: 1.0,
    # length_penalty: 0.1}; reward_model: rl.reward_model's score. null: {date_exact: 1.0} (left null in
    # the files so that rl.rewards={...} on the command line replaces it, where a mapping would be merged)
    rewards: Any = None
    # a trained reward model's adapter (<run_dir>/adapter of a data.task_type=reward run), loaded as a
    # second adapter on the policy's base (its score head beside it); reward_separate: a model of its own
    reward_model: Optional[str] = None
    reward_separate: bool = False
    # write the sampled completions of one prompt with their rewards every this many steps (0: never)
    completions_every: int = 10

    def __post_init__(self) -> None:
        from peftlab.config.plugins import REWARDS

        one_of("rl.algorithm", self.algorithm, ("grpo", "rloo"))
        check(self.num_generations >= 2, "rl.num_generations",
              f"must be >= 2: {self.algorithm} compares the completions of one prompt with each other",
              self.num_generations)
        check(0 < self.temperature and math.isfinite(self.temperature), "rl.temperature", "must be a finite number > 0",
              self.temperature)
        check(0 < self.top_p <= 1, "rl.top_p", "must be in (0, 1]", self.top_p)
        check(self.max_new_tokens is None or self.max_new_tokens > 0, "rl.max_new_tokens", "must be > 0 or null",
              self.max_new_tokens)
        check(self.beta >= 0 and math.isfinite(self.beta), "rl.beta", "must be a finite number >= 0", self.beta)
        check(0 < self.epsilon < 1, "rl.epsilon", "must be in (0, 1)", self.epsilon)
        check(self.completions_every >= 0, "rl.completions_every", "must be >= 0", self.completions_every)
        one_of("rl.reference", self.reference, ("adapter_off", "frozen_adapter", "separate", "none"))
        check((self.reference == "none") == (self.beta == 0), "rl.reference",
              "must be none exactly when rl.beta=0 (a reference is only read for the KL penalty)", self.reference)
        check(self.rewards is None or isinstance(self.rewards, Mapping), "rl.rewards",
              "must map reward names to weights, e.g. rl.rewards={date_exact: 1.0}", self.rewards)
        self.rewards = dict(self.rewards) if self.rewards is not None else {"date_exact": 1.0}
        check(bool(self.rewards), "rl.rewards", "must map at least one reward name to its weight, e.g. "
              "rl.rewards={date_exact: 1.0}", self.rewards)
        known = (*REWARDS, LEARNED)
        for name, weight in self.rewards.items():
            if REWARDS:  # registered with the task plug-ins; a bare config check has none
                one_of("rl.rewards", name, known)
            check(isinstance(weight, (int, float)) and not isinstance(weight, bool) and math.isfinite(weight),
                  f"rl.rewards.{name}",
                  "must be a finite number (the reward's weight)", weight)
        check((LEARNED in self.rewards) == (self.reward_model is not None), "rl.reward_model",
              f"and rl.rewards.{LEARNED} go together: the weight of a trained reward model's score, and its adapter",
              self.reward_model)
        check(not self.reward_separate or self.reward_model is not None, "rl.reward_separate",
              "needs rl.reward_model", self.reward_separate)
