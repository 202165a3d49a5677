"""What a training run measures beyond its loss, each a block of ``peftlab-train``'s config: the
validation split (what it measures while training, and which weights the test scores), forgetting
on general text, the divergence from the base on the task's prompts, and the equivalence margins
stated before the run."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Optional

from peftlab.config.checks import check as _check
from peftlab.config.checks import one_of as _one_of
from peftlab.errors import ConfigError


@dataclass
class ForgettingSchema:
    """The change in mean token loss on general text with training (peftlab/engine/forgetting.py);
    language model tasks only. The text is looked for when the run starts, before any work."""

    text: str = "builtin:botchan"  # builtin:<name> (data/files/prose/) or a local UTF-8 text file
    tokens: int = 4096  # the text's opening tokens that are read
    window: int = 256  # tokens per row (at most the model's context)

    def __post_init__(self) -> None:
        _check(self.tokens > 1, "forgetting.tokens", "must be > 1", self.tokens)
        _check(self.window > 1, "forgetting.window", "must be > 1", self.window)


@dataclass
class KLToBaseSchema:
    """How far training moved the model from the base on the task's own prompts
    (peftlab/engine/kl_to_base.py): KL(base || trained), the measure of RL's Razor; language model
    tasks only. Answers are sampled from the base before training, so the measure never reads what
    training produced."""

    split: str = "val"  # whose prompts: val (never the test split: a search job reads it too) or train
    prompts: int = 32  # how many of them (the split's first; fewer if the split is smaller)
    max_new_tokens: Optional[int] = None  # each sampled answer's length; null: data.max_new_tokens
    seed: int = 0  # the sampling's own seed: every run of a comparison samples the same answers

    def __post_init__(self) -> None:
        _one_of("kl_to_base.split", self.split, ("val", "train"))
        _check(self.prompts > 0, "kl_to_base.prompts", "must be > 0", self.prompts)
        _check(self.max_new_tokens is None or self.max_new_tokens > 0, "kl_to_base.max_new_tokens",
               "must be > 0 or null", self.max_new_tokens)


@dataclass
class ValidationSchema:
    """What the validation split measures while a run trains, and which weights the test split
    scores (engine/job.py). Selection and sweeps read the validation split; the test split is
    scored once, on the weights chosen."""

    # end: the task's metrics (generation included: exact match, accuracy, pair accuracy...) once, on
    # the final weights, and the loss alone at every check (trainer.val_check_interval); every: the
    # task's metrics at every check
    metrics: str = "end"
    # last: test the final weights; best: the weights of the check with the best val.<primary metric>
    # (measured at every check, whatever validation.metrics says)
    select: str = "last"

    def __post_init__(self) -> None:
        _one_of("validation.metrics", self.metrics, ("end", "every"))
        _one_of("validation.select", self.select, ("last", "best"))

    @property
    def at_every_check(self) -> bool:
        """Whether every check measures the task's metrics (not only the loss)."""
        return self.metrics == "every" or self.select == "best"


def check_margins(key: str, value: Any) -> None:
    """Null, or a mapping of dotted metrics.json keys to finite margins > 0."""
    if value is None:
        return
    if not isinstance(value, Mapping) or not all(isinstance(k, str) and "." in k for k in value):
        raise ConfigError(f"{key} must be {{<dotted metrics.json key>: <margin>, ...}} (such as "
                          f"{{test.exact_match: 0.03}}) or null, got {value!r}")
    for name, margin in value.items():
        number = isinstance(margin, (int, float)) and not isinstance(margin, bool)
        _check(number and margin > 0 and math.isfinite(margin), f"{key}.{name}", "must be a finite number > 0", margin)
