"""Online reinforcement learning settings (``rl=grpo``, ``rl=rloo``; data of task type ``rl``).

Each step samples ``num_generations`` completions of every prompt from the current policy, scores
them with the weighted rewards, and moves the policy towards the completions that scored above
their group: GRPO (Shao et al., 2024) normalises each group's rewards by its mean and standard
deviation, RLOO (Ahmadian et al., 2024) subtracts the mean of the other completions (a leave-one-out
baseline). The policy is held near its reference by the k3 estimator of the KL divergence per
token, weighted by ``beta`` (0: no reference is computed). A sampled batch is trained on for
``num_iterations`` steps, with the ratio clipped to [1 - epsilon, 1 + epsilon_high] and the loss
averaged as ``loss_type`` says (objectives/rl_loss.py has the formulas: TRL's GRPOTrainer's).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Optional

from omegaconf import MISSING

from peftlab.config.checks import check, one_of

LEARNED = "reward_model"  # the reward name of a trained reward model (rl.reward_model)
# Below this temperature sampling is greedy in effect: a gap of 0.1 nats between the two likeliest
# tokens becomes 10 (about 22000 to 1), so every completion of a group comes out the same, their
# rewards are equal and every advantage is 0 (no gradient); the policy's log-probabilities, computed
# at the same temperature, would also scale every gradient by 1/temperature.
MIN_TEMPERATURE = 1e-2
# Upper bounds on the counts: far beyond any published recipe (GRPO's 64 completions a prompt,
# completions of a few thousand tokens), so a value above them is a typo that would exhaust memory
MAX_GENERATIONS = 1024
MAX_NEW_TOKENS = 32768
MAX_COMPLETIONS_EVERY = 1_000_000  # steps
# rl.reward_format: how the reward model's texts are formatted where its run's data.prompt_format or
# data.system_prompt differ from the policy's
REWARD_FORMATS = ("match", "reward_run", "policy")
# the policy loss's normalisation (objectives/rl_loss.py): grpo, each completion's token mean, averaged;
# dr_grpo, the token sum over completions x rl.max_new_tokens; dapo, the token mean over the step's
# completions on every process; bnpo, over each process's own
LOSS_TYPES = ("dapo", "grpo", "dr_grpo", "bnpo")
SCALES = ("group", "batch", "none")  # grpo's advantages: divided by the group's std, the batch's, or not
IMPORTANCE_LEVELS = ("token", "sequence")  # sequence: GSPO's one ratio per completion
MAX_ITERATIONS = 64  # updates per sampled batch: far beyond any published recipe (TRL's examples: 1-4)


@dataclass
class RLSchema:
    name: str = MISSING
    algorithm: str = "grpo"  # grpo (group mean and std), rloo (leave-one-out baseline)
    num_generations: int = 4  # completions sampled per prompt (a group)
    temperature: float = 1.0
    top_p: float = 1.0
    max_new_tokens: Optional[int] = None  # null: data.max_new_tokens
    beta: float = 0.04  # the KL penalty's weight; 0: no reference at all
    epsilon: float = 0.2  # the ratio's clip range below 1 (and above, unless epsilon_high)
    epsilon_high: Optional[float] = None  # the clip range above 1 (DAPO's clip-higher, e.g. 0.28); null: epsilon
    # updates per sampled batch (mu): the completions, rewards and reference are kept for this many steps,
    # and each step's ratio is taken against the log-probabilities at sampling time (so the clip binds)
    num_iterations: int = 1
    loss_type: str = "dapo"  # dapo, grpo, dr_grpo, bnpo: how the per-token loss is averaged (LOSS_TYPES)
    # grpo: divide each group's centred rewards by the group's std (group), the whole batch's (batch), or
    # not (none: Dr. GRPO's advice); true/false, as older runs wrote it, read as group/none
    scale_rewards: Any = "group"
    mask_truncated: bool = False  # completions cut off at max_new_tokens take no part in the loss (DAPO)
    importance_level: str = "token"  # token, or sequence (GSPO: the mean log-ratio of each completion)
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
    # the prompt format and system prompt the reward model scores in. match: its run's data.prompt_format
    # and data.system_prompt must be the policy's (refused before training otherwise); reward_run: its
    # run's own, whatever the policy's; policy: the policy's, a difference accepted (recorded in metrics.json)
    reward_format: str = "match"
    # write the sampled completions of one prompt with their rewards every this many steps (0: never)
    completions_every: int = 10

    def __post_init__(self) -> None:
        from peftlab.config.plugins import REWARDS

        one_of("rl.algorithm", self.algorithm, ("grpo", "rloo"))
        check(self.num_generations >= 2, "rl.num_generations",
              f"must be >= 2: {self.algorithm} compares the completions of one prompt with each other",
              self.num_generations)
        check(self.num_generations <= MAX_GENERATIONS, "rl.num_generations",
              f"must be <= {MAX_GENERATIONS} (completions sampled per prompt, all held at once)", self.num_generations)
        check(math.isfinite(self.temperature) and self.temperature >= MIN_TEMPERATURE, "rl.temperature",
              f"must be a finite number >= {MIN_TEMPERATURE:g}: below it sampling is greedy in effect, every "
              "completion of a group the same and every advantage 0 (no gradient)", self.temperature)
        check(0 < self.top_p <= 1, "rl.top_p", "must be in (0, 1]", self.top_p)
        check(self.max_new_tokens is None or 0 < self.max_new_tokens <= MAX_NEW_TOKENS, "rl.max_new_tokens",
              f"must be in [1, {MAX_NEW_TOKENS}] or null", self.max_new_tokens)
        check(self.beta >= 0 and math.isfinite(self.beta), "rl.beta", "must be a finite number >= 0", self.beta)
        check(0 < self.epsilon < 1, "rl.epsilon", "must be in (0, 1)", self.epsilon)
        high = self.epsilon_high
        check(high is None or (isinstance(high, (int, float)) and math.isfinite(high) and high >= self.epsilon),
              "rl.epsilon_high", f"must be a finite number >= rl.epsilon={self.epsilon} (clip-higher widens the range "
              "above 1) or null", high)
        check(isinstance(self.num_iterations, int) and 1 <= self.num_iterations <= MAX_ITERATIONS,
              "rl.num_iterations", f"must be in [1, {MAX_ITERATIONS}] (updates per sampled batch)", self.num_iterations)
        one_of("rl.loss_type", self.loss_type, LOSS_TYPES)
        self.scale_rewards = {True: "group", False: "none"}.get(self.scale_rewards, self.scale_rewards) \
            if isinstance(self.scale_rewards, bool) else self.scale_rewards
        one_of("rl.scale_rewards", self.scale_rewards, SCALES)
        one_of("rl.importance_level", self.importance_level, IMPORTANCE_LEVELS)
        check(0 <= self.completions_every <= MAX_COMPLETIONS_EVERY, "rl.completions_every",
              f"must be in [0, {MAX_COMPLETIONS_EVERY}] (steps; 0: never)", self.completions_every)
        one_of("rl.reward_format", self.reward_format, REWARD_FORMATS)
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
        check(any(w != 0 for w in self.rewards.values()), "rl.rewards",
              "must give at least one reward a weight other than 0 (with every weight 0 every completion's reward is "
              "0, every advantage 0: no gradient)", self.rewards)
        check((LEARNED in self.rewards) == (self.reward_model is not None), "rl.reward_model",
              f"and rl.rewards.{LEARNED} go together: the weight of a trained reward model's score, and its adapter",
              self.reward_model)
        check(not self.reward_separate or self.reward_model is not None, "rl.reward_separate",
              "needs rl.reward_model", self.reward_separate)
        check(self.reward_format == "match" or self.reward_model is not None, "rl.reward_format",
              "needs rl.reward_model (it says how the reward model's texts are formatted)", self.reward_format)
