"""Evaluate many adapters of one base in one process: the base is loaded once (models/adapters.py),
each task's test split is read and tokenised once, and every adapter (and the base alone) is
scored on it in turn by switching the active adapter, which moves no weights. The scores equal
separate evaluations of each adapter (tests/test_many_adapters.py); peftlab-combine and
``peftlab-eval runs=`` use it, and scripts/benchmark_many_adapters.py measures what it saves."""

from __future__ import annotations

import dataclasses
import logging
from typing import Any, Optional

from peftlab.engine.forgetting import mean_token_loss, read_text, windows
from peftlab.export.verify import Evaluation, score_split
from peftlab.models.adapters import AdapterBank

log = logging.getLogger("peftlab.adapters")

BASE = None  # the name that stands for the base model alone, every adapter off


def test_loader(task: Any, tokenizer: Any, seed: int, max_examples: Optional[int] = None):
    """The task's test split as evaluation batches (its first ``max_examples`` examples)."""
    from peftlab.data.datamodule import TaskDataModule
    from peftlab.tasks import make_task

    if max_examples is not None:
        task = make_task(dataclasses.replace(task.data, max_eval_examples=max_examples))
    data = TaskDataModule(task, tokenizer, seed=seed)
    data.setup("test")
    return task, data.test_dataloader()


def score_adapters(bank: AdapterBank, names: list[Optional[str]], tasks: list[Any], seed: int,
                   max_examples: Optional[int] = None) -> dict[tuple[Optional[str], str], Evaluation]:
    """(adapter name or None, task name) -> the test evaluation, for every adapter on every task."""
    found = {}
    for task in tasks:
        task, loader = test_loader(task, bank.tokenizer, seed, max_examples)
        batches = list(loader)  # tokenised and collated once for every adapter
        for name in names:
            with bank.use(name) as model:
                found[(name, task.data.name)] = score_split(model, task, bank.tokenizer, batches)
            log.info("%s on %s: %s", name or "base", task.data.name, found[(name, task.data.name)].metrics)
    return found


def prose_losses(bank: AdapterBank, names: list[Optional[str]], cfg: Any) -> dict[Optional[str], float]:
    """Each adapter's (and the base's) mean token loss on the forgetting text (engine/forgetting.py)."""
    config = bank.backbone.model.config
    limit = getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None)
    rows = windows(read_text(cfg.text), bank.tokenizer, cfg.tokens, min(cfg.window, limit) if limit else cfg.window)
    losses = {}
    for name in names:
        with bank.use(name) as model:
            losses[name] = round(mean_token_loss(model, rows), 6)
    return losses
