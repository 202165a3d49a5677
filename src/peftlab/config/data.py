"""The data group's schema: where a task's examples come from and how they become batches
(``conf/data/``; the record formats: ``peftlab.data.formats``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, List, Optional

from omegaconf import MISSING

from peftlab.config.checks import check as _check
from peftlab.config.checks import one_of as _one_of
from peftlab.config.plugins import task_types


@dataclass
class DataSchema:
    """A task: where its examples come from (path: a json/jsonl/csv/parquet file, a folder of train/val/test
    files, ``builtin:<name>`` shipped with peftlab, or ``hf://<hub id>``) and how they become batches."""

    name: str = MISSING
    path: str = MISSING
    task_type: str = "causal_lm"  # a registered task type (peftlab.tasks): causal_lm, seq_cls, ...
    format: str = "prompt_response"  # how a record reads (peftlab.data.formats): messages, sharegpt, alpaca, ...
    loss_turns: str = "all"  # conversations: the loss on every assistant turn (all), or on the last only (last)
    columns: Any = None  # a mapping that renames any source's columns before reading: {question: prompt}
    prompt_field: str = "prompt"
    response_field: str = "response"
    chosen_field: str = "chosen"  # preference pairs: the preferred answer
    rejected_field: str = "rejected"  # preference pairs: the answer to move away from
    margin_field: Optional[str] = None  # reward models: a per-pair margin the chosen score must clear (Llama 2)
    label_field: str = "label"  # unpaired answers (KTO): true for a desirable answer, false for an undesirable one
    labels: Optional[List[str]] = None  # seq_cls: the label names in id order (null: sorted from train)
    system_prompt: Optional[str] = None
    prompt_format: str = "auto"  # auto: the chat template when the tokenizer has one, else plain
    hub_config: Optional[str] = None
    # a hub data set (hf://<id>) from the local cache only, never the network: set for a run folder's data
    local_files_only: bool = False
    train_split: str = "train"
    val_split: str = "val"
    test_split: str = "test"
    val_fraction: float = 0.1  # used when the data has a single split
    test_fraction: float = 0.1
    split_seed: int = 0
    max_length: int = 256
    batch_size: int = 8
    eval_batch_size: int = 32
    max_new_tokens: int = 16
    max_train_examples: Optional[int] = None
    max_eval_examples: Optional[int] = None
    # examples that train or test nothing (blank prompts, empty answers, ...): up to this share left out, else an error
    max_unusable: float = 0.05
    num_workers: int = 0
    # batches of similar lengths: the seeded order sorted within windows of group_window batches; false: torch's order
    group_by_length: bool = True
    group_window: int = 64
    # checks data.format, loss_turns and columns against the registered formats (set by peftlab.data.formats)
    check_format = staticmethod(lambda data: None)

    def __post_init__(self) -> None:
        _one_of("data.task_type", self.task_type, task_types())
        _one_of("data.prompt_format", self.prompt_format, ("auto", "chat", "plain"))
        for key in ("max_length", "batch_size", "eval_batch_size", "max_new_tokens"):
            _check(getattr(self, key) > 0, f"data.{key}", "must be > 0", getattr(self, key))
        for key in ("val_fraction", "test_fraction"):
            _check(0.0 <= getattr(self, key) < 1.0, f"data.{key}", "must be in [0, 1)", getattr(self, key))
        _check(self.val_fraction + self.test_fraction < 1.0, "data.val_fraction + data.test_fraction",
               "must be < 1", self.val_fraction + self.test_fraction)
        for key in ("max_train_examples", "max_eval_examples"):
            v = getattr(self, key)
            _check(v is None or v > 0, f"data.{key}", "must be > 0 or null", v)
        _check(self.num_workers >= 0, "data.num_workers", "must be >= 0", self.num_workers)
        _check(self.group_window > 0, "data.group_window", "must be > 0", self.group_window)
        _check(0.0 <= self.max_unusable <= 1.0, "data.max_unusable", "must be in [0, 1]", self.max_unusable)
        self.check_format(self)
