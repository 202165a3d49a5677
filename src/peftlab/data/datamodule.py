"""The LightningDataModule of a task: loads the splits, tokenises them once, serves batches.

The task decides how a record becomes an example and examples a batch; this module only reads,
encodes, warns about truncation and batches."""

from __future__ import annotations

import logging
from typing import Any, Optional

import lightning as L
import torch
from torch.utils.data import DataLoader

from peftlab.data.sources import load_splits

log = logging.getLogger(__name__)


class TaskDataModule(L.LightningDataModule):
    def __init__(self, task: Any, tokenizer: Any, seed: int = 0, test_split: str = "test"):
        super().__init__()
        self.task = task  # a peftlab.tasks.Task
        self.cfg = task.data
        self.test_split = test_split  # what trainer.test() evaluates: "test", or "val"
        self.tokenizer = tokenizer
        self.seed = seed
        self.splits: Optional[dict[str, list[dict[str, Any]]]] = None

    def setup(self, stage: Optional[str] = None) -> None:
        if self.splits is not None:
            return
        raw = load_splits(self.cfg)
        encode = self.task.encoder(self.tokenizer)
        self.splits = {}
        for split, rows in raw.items():
            encoded = [encode(r, f"{self.cfg.path} ({split} example {i + 1})") for i, r in enumerate(rows)]
            cut = sum(e["truncated"] for e in encoded)
            if cut:
                log.warning("%d of %d %s examples were longer than data.max_length=%d and were truncated",
                            cut, len(encoded), split, self.cfg.max_length)
            self.splits[split] = encoded

    def sizes(self) -> dict[str, int]:
        self.setup()
        return {k: len(v) for k, v in self.splits.items()}

    def _loader(self, split: str, train: bool) -> DataLoader:
        self.setup()
        generator = torch.Generator().manual_seed(self.seed) if train else None
        return DataLoader(
            self.splits[split],
            batch_size=self.cfg.batch_size if train else self.cfg.eval_batch_size,
            shuffle=train,
            generator=generator,
            num_workers=self.cfg.num_workers,
            collate_fn=self.task.collator(self.tokenizer, evaluation=not train),
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", train=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", train=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.test_split, train=False)
