"""The LightningDataModule of a task: loads the splits, tokenises them once, serves batches."""

from __future__ import annotations

import logging
from typing import Any, Optional

import lightning as L
import torch
from torch.utils.data import DataLoader

from peftlab.config.schema import DataSchema
from peftlab.data.collators import CausalLMCollator, ClassificationCollator
from peftlab.data.sources import load_splits, resolve_labels
from peftlab.data.tokenize import PromptFormat, encode, encode_classification

log = logging.getLogger(__name__)


class TaskDataModule(L.LightningDataModule):
    def __init__(self, cfg: DataSchema, tokenizer, seed: int = 0, test_split: str = "test",
                 labels: Optional[list[str]] = None):
        super().__init__()
        self.cfg = cfg
        self.test_split = test_split  # what trainer.test() evaluates: "test", or "val"
        self.tokenizer = tokenizer
        self.seed = seed
        self.classification = cfg.task_type == "seq_cls"
        # class names in id order; callers that sized the model's head pass the same list
        self.labels = (labels or resolve_labels(cfg)) if self.classification else None
        self.format = None if self.classification else PromptFormat.for_tokenizer(tokenizer, cfg.prompt_format,
                                                                                   cfg.system_prompt)
        self.splits: Optional[dict[str, list[dict[str, Any]]]] = None

    def setup(self, stage: Optional[str] = None) -> None:
        if self.splits is not None:
            return
        raw = load_splits(self.cfg)
        self.splits = {}
        for split, rows in raw.items():
            encoded = [self._encode(r, f"{self.cfg.path} ({split} example {i + 1})") for i, r in enumerate(rows)]
            cut = sum(e["truncated"] for e in encoded)
            if cut:
                log.warning("%d of %d %s examples were longer than data.max_length=%d and were truncated",
                            cut, len(encoded), split, self.cfg.max_length)
            self.splits[split] = encoded

    def _encode(self, row: dict[str, Any], where: str) -> dict[str, Any]:
        prompt, response = str(row[self.cfg.prompt_field]), str(row[self.cfg.response_field])
        if self.classification:
            label_ids = {name: i for i, name in enumerate(self.labels)}
            return encode_classification(self.tokenizer, prompt, response, label_ids, self.cfg.max_length, where)
        return encode(self.tokenizer, self.format, prompt, response, self.cfg.max_length)

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
            collate_fn=(ClassificationCollator(self.tokenizer.pad_token_id) if self.classification
                        else CausalLMCollator(self.tokenizer.pad_token_id, generation=not train)),
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", train=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", train=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.test_split, train=False)
