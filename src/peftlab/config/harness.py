"""``HarnessSchema``: everything ``peftlab-harness`` reads (lm-evaluation-harness on runs' adapters)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Optional

from omegaconf import MISSING

from peftlab.config.checks import check as _check
from peftlab.config.checks import one_of as _one_of
from peftlab.config.schema import PathsSchema

# the names peftlab-harness exports as lm-eval task configs over local files: the run's own task
# (generation with the run's prompt format, greedy, exact match) and the general text of forgetting
OWN_TASKS = ("peftlab", "peftlab_text")


@dataclass
class HarnessSchema:
    """Everything ``peftlab-harness`` reads."""

    plugins: List[str] = field(default_factory=list)  # your own modules to load first: docs/guides/plugins.md
    paths: PathsSchema = MISSING
    run_dir: Optional[str] = None  # a finished peftlab-train run folder: its base with its adapter (peft=)
    # many run folders, or sweep folders for every finished run in them (exclusive with run_dir)
    runs: Optional[List[str]] = None
    # a merged model folder (peftlab-merge's) scored instead of the run's base + adapter; run_dir only
    model_dir: Optional[str] = None
    # lm-eval task names (any installed task or group), and peftlab's own: peftlab (the run's task),
    # peftlab_text (the general text the run's forgetting measure reads, as rolling log-likelihood)
    tasks: List[str] = field(default_factory=lambda: ["peftlab"])
    split: str = "test"  # the split of the run's task that the exported task reads
    limit: Optional[int] = None  # at most this many documents a task (null: every one)
    num_fewshot: Optional[int] = None  # null: each task's own default (peftlab's: zero-shot)
    batch_size: int = 8
    trust_remote_code: bool = False  # a run folder's own setting is never obeyed: the user decides here
    seed: int = 42

    def __post_init__(self) -> None:
        _one_of("split", self.split, ("val", "test"))
        _check((self.run_dir is None) != (self.runs is None), "run_dir", "or runs= names what is scored (give one)",
               self.run_dir)
        _check(self.runs is None or len(self.runs) > 0, "runs", "must name at least one folder", self.runs)
        _check(self.model_dir is None or self.run_dir is not None, "model_dir", "needs run_dir= (the run whose "
               "merged model it is: its task and its records)", self.model_dir)
        _check(len(self.tasks) > 0 and all(isinstance(t, str) and t for t in self.tasks), "tasks",
               "must name at least one task", self.tasks)
        _check(len(set(self.tasks)) == len(self.tasks), "tasks", "names a task twice", self.tasks)
        _check(self.limit is None or self.limit > 0, "limit", "must be > 0 or null", self.limit)
        _check(self.num_fewshot is None or self.num_fewshot >= 0, "num_fewshot", "must be >= 0 or null",
               self.num_fewshot)
        _check(self.batch_size > 0, "batch_size", "must be > 0", self.batch_size)
