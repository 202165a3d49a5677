"""Dynamic padding: each batch is padded to its own longest example."""

from __future__ import annotations

from typing import Any

import torch
from torch.nn.utils.rnn import pad_sequence

from peftlab.data.tokenize import IGNORE_INDEX


def counted(examples: list[dict[str, Any]]) -> torch.Tensor:
    """Which examples evaluation counts: not the copies that even out shards across processes."""
    return torch.tensor([not e.get("pad", False) for e in examples], dtype=torch.bool)


def pad(seqs: list[list[int]] | list[torch.Tensor], value: int, left: bool = False) -> torch.Tensor:
    """One tensor of rows padded with ``value`` to the longest (on the left for generation)."""
    rows = [s if isinstance(s, torch.Tensor) else torch.tensor(s, dtype=torch.long) for s in seqs]
    return pad_sequence(rows, batch_first=True, padding_value=value, padding_side="left" if left else "right")


class CausalLMCollator:
    """Right-padded ``input_ids``/``labels``/``attention_mask`` for the loss; with ``generation``,
    also left-padded prompts (``gen_input_ids``/``gen_attention_mask``) and the ``references``."""

    def __init__(self, pad_token_id: int, generation: bool = False):
        self.pad_token_id = pad_token_id
        self.generation = generation

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, Any]:
        ids = [e["input_ids"] for e in examples]
        batch: dict[str, Any] = {
            "input_ids": pad(ids, self.pad_token_id),
            "attention_mask": pad([[1] * len(s) for s in ids], 0),
            # a shard's padding copies carry no label: they add nothing to the loss
            "labels": pad([[IGNORE_INDEX] * len(e["labels"]) if e.get("pad") else e["labels"] for e in examples],
                          IGNORE_INDEX),
        }
        if self.generation:
            batch["counted"] = counted(examples)
            prompts = [e["prompt_ids"] for e in examples]
            batch["gen_input_ids"] = pad(prompts, self.pad_token_id, left=True)
            batch["gen_attention_mask"] = pad([[1] * len(s) for s in prompts], 0, left=True)
            batch["references"] = [e["reference"] for e in examples]
        return batch


class ClassificationCollator:
    """Right-padded ``input_ids``/``attention_mask`` and a ``labels`` vector of class ids."""

    def __init__(self, pad_token_id: int):
        self.pad_token_id = pad_token_id

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, Any]:
        ids = [e["input_ids"] for e in examples]
        return {"input_ids": pad(ids, self.pad_token_id), "attention_mask": pad([[1] * len(s) for s in ids], 0),
                "labels": torch.tensor([e["label"] for e in examples], dtype=torch.long),
                "counted": counted(examples)}
