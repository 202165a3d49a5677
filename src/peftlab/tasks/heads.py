"""The output head on the positions that carry a label only.

A causal LM's head maps every position to the whole vocabulary; the loss needs the labelled
positions alone (a few answer tokens per example). A forward pre-hook on the model's output
module selects those positions before the projection, so the model's own forward still applies
whatever it does after its head (Gemma 2's logit soft-capping, Cohere's ``logit_scale``, Granite's
``logits_scaling``, ...): the result is the model's own logits at those positions, for every
family. A model that computes its logits without calling its output module gets its full logits
cut to the same positions afterwards.
"""

from __future__ import annotations

from typing import Any, Optional

import torch

from peftlab.data.tokenize import IGNORE_INDEX


def answer_logits(model: torch.nn.Module, batch: dict[str, Any], position_ids: Optional[torch.Tensor] = None,
                  keep_cache: bool = False, past_key_values: Any = None) -> tuple[torch.Tensor, ...]:
    """fp32 logits at the positions that predict a labelled token, (N, vocab), and those tokens (N,);
    with ``keep_cache``, the forward's KV cache as well (evaluation decodes on from it). With
    ``past_key_values``, the batch goes on from the tokens that cache holds (its attention mask
    covers them too).

    Prompt-learning methods put virtual tokens before the input: they are skipped by offset."""
    labels = batch["labels"]
    targets = labels[:, 1:]
    mask = targets != IGNORE_INDEX

    def select(states: torch.Tensor) -> torch.Tensor:  # (batch, positions, ...) -> (N, ...)
        offset = states.shape[1] - labels.shape[1]
        return states[:, offset:offset + labels.shape[1] - 1][mask]

    def pre_hook(module, args, kwargs):
        return (select(args[0]), *args[1:]), kwargs

    head = model.get_output_embeddings()
    handle = head.register_forward_pre_hook(pre_hook, with_kwargs=True) if head is not None else None
    try:
        out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                    use_cache=keep_cache or past_key_values is not None,  # some tuners read a cache only then
                    **({"position_ids": position_ids} if position_ids is not None else {}),
                    **({"past_key_values": past_key_values} if past_key_values is not None else {}))
    finally:
        if handle is not None:
            handle.remove()
    logits = out.logits
    if logits.dim() == 3:  # the head module was not called: cut the model's full logits instead
        logits = select(logits)
    if keep_cache:
        return logits.float(), targets[mask], out.past_key_values
    return logits.float(), targets[mask]
