"""The LightningDataModule of a task: loads the splits, tokenises them once, serves batches.

The task decides how a record becomes an example and examples a batch, and which examples would
train nothing; this module reads, encodes, refuses or drops unusable examples, warns about
truncation and batches."""

from __future__ import annotations

import logging
from collections import Counter
from typing import Any, Optional

import lightning as L
import torch
from torch.utils.data import DataLoader

from peftlab.data.loaders import InSplitOrder, ResumableLoader, eval_shard
from peftlab.data.sources import WHERE, load_splits
from peftlab.errors import DataError

log = logging.getLogger(__name__)


class TaskDataModule(L.LightningDataModule):
    def __init__(self, task: Any, tokenizer: Any, seed: int = 0, test_split: str = "test",
                 limits: Optional[dict[str, Any]] = None):
        super().__init__()
        # Lightning's limit_val_batches / limit_test_batches ("val", "test"): a split evaluated in
        # part keeps its own order (sorted by length, its first batches would be its longest examples)
        self.limits = limits or {}
        self.task = task  # a peftlab.tasks.Task
        self.cfg = task.data
        self.test_split = test_split  # what trainer.test() evaluates: "test", or "val"
        self.tokenizer = tokenizer
        self.seed = seed
        self.splits: Optional[dict[str, list[dict[str, Any]]]] = None
        self._train: Optional[ResumableLoader] = None

    def setup(self, stage: Optional[str] = None) -> None:
        if self.splits is not None:
            return
        raw = load_splits(self.cfg, self.task.fields())
        encode = self.task.encoder(self.tokenizer)
        self.splits = {}
        for split, rows in raw.items():
            encoded = [encode(r, r.get(WHERE, f"{self.cfg.path} ({split} example {i + 1})"))
                       for i, r in enumerate(rows)]
            self.splits[split] = self._usable(split, rows, encoded)
            cut = sum(e["truncated"] for e in self.splits[split])
            if cut:
                log.warning("%d of %d %s examples were longer than data.max_length=%d and were truncated",
                            cut, len(encoded), split, self.cfg.max_length)

    def _usable(self, split: str, rows: list[dict[str, Any]], encoded: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """The examples that can train or be evaluated; refuses a split where too many cannot."""
        reasons = [self.task.unusable(row, example) for row, example in zip(rows, encoded, strict=True)]
        bad = [i for i, reason in enumerate(reasons) if reason]
        if not bad:
            return encoded
        counts = ", ".join(f"{reason}: {n}" for reason, n in Counter(r for r in reasons if r).items())
        first = rows[bad[0]].get(WHERE, f"{split} example {bad[0] + 1}")
        summary = (f"{len(bad)} of {len(rows)} {split} examples would train or test nothing ({counts}); "
                   f"the first: {first} ({reasons[bad[0]]})")
        limit = self.cfg.max_unusable
        if len(bad) > limit * len(rows) or len(bad) == len(rows):
            raise DataError(f"{summary}, above data.max_unusable={limit}")
        log.warning("%s: left out (data.max_unusable=%s)", summary, limit)
        return [e for e, reason in zip(encoded, reasons, strict=True) if not reason]

    def sizes(self) -> dict[str, int]:
        self.setup()
        return {k: len(v) for k, v in self.splits.items()}

    def train_dataloader(self) -> ResumableLoader:
        self.setup()
        if self._train is None:  # one loader for the run: its position is the run's place in the data
            rows = self.splits["train"]
            lengths = [self.task.length(e) for e in rows] if self.cfg.group_by_length else None
            collate = self.task.collator(self.tokenizer, evaluation=False)
            self._train = ResumableLoader(rows, self.cfg.batch_size, collate, self.seed, self.cfg.num_workers,
                                          lengths, self.cfg.group_window)
        return self._train

    def sample_batches(self, n: int) -> list[dict[str, Any]]:
        """``n`` training batches drawn with a generator of their own (seeded by the run's seed), so the
        training order is untouched and every process draws the same: what initialisations that look
        at data see (LoRA's init=eva)."""
        self.setup()
        rows = self.splits["train"]
        order = torch.randperm(len(rows), generator=torch.Generator().manual_seed(self.seed)).tolist()
        collate = self.task.collator(self.tokenizer, evaluation=False)
        size = self.cfg.batch_size
        return [collate([rows[i] for i in order[start:start + size]])
                for start in range(0, min(n * size, len(rows)), size)]

    def _eval_loader(self, split: str, role: str) -> DataLoader:
        """This process's share of ``split``, longest first: batches of similar lengths (the
        metrics do not depend on the order; ``batch["position"]`` puts predictions back in it),
        unless only some of its batches are evaluated (``limits[role]``)."""
        self.setup()
        rows = eval_shard(self.splits[split])
        limit = self.limits.get(role)
        if isinstance(limit, float):  # a share of the batches
            whole = limit >= 1.0
        else:  # a number of batches
            whole = limit is None or limit * self.cfg.eval_batch_size >= len(rows)
        ordered = InSplitOrder(rows, self.task.length, self.task.collator(self.tokenizer, True), sort=whole)
        return DataLoader(ordered.rows, batch_size=self.cfg.eval_batch_size, shuffle=False,
                          num_workers=self.cfg.num_workers, collate_fn=ordered,
                          generator=torch.Generator().manual_seed(self.seed))  # never the global generator

    def val_dataloader(self) -> DataLoader:
        return self._eval_loader("val", "val")

    def test_dataloader(self) -> DataLoader:
        return self._eval_loader(self.test_split, "test")
