"""Generation: greedy for evaluation (batched, left-padded prompts, the KV cache, every end token),
and greedy or sampled answers to a user's prompts (peftlab-generate)."""

from __future__ import annotations

from typing import Any

import torch
from transformers import GenerationConfig


def end_tokens(model: torch.nn.Module, tokenizer: Any) -> list[int]:
    """Every token that ends a generation: the tokenizer's end token and the model's generation
    config's (a list for many chat models, e.g. end-of-turn and end-of-text)."""
    ids = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    ids = [ids] if isinstance(ids, int) else list(ids or [])
    if tokenizer.eos_token_id is not None:
        ids.append(tokenizer.eos_token_id)
    return sorted(set(ids))


@torch.no_grad()
def generate(model: torch.nn.Module, tokenizer: Any, input_ids: torch.Tensor, attention_mask: torch.Tensor,
             max_new_tokens: int) -> list[str]:
    """Batched greedy decoding of left-padded prompts with the KV cache; the continuations, stripped."""
    from peftlab.distributed import rank_and_world

    config = GenerationConfig(max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tokenizer.pad_token_id,
                              eos_token_id=end_tokens(model, tokenizer))
    # with several processes every one decodes until all have ended: a sharded model's forward is collective
    synced = rank_and_world()[1] > 1
    out = model.generate(input_ids=input_ids, attention_mask=attention_mask, generation_config=config,
                         synced_gpus=synced)
    return [t.strip() for t in tokenizer.batch_decode(out[:, input_ids.shape[1]:], skip_special_tokens=True)]


@torch.no_grad()
def answer_prompts(model: torch.nn.Module, tokenizer: Any, fmt: Any, prompts: list[str], options: Any,
                   streamer: Any = None) -> list[str]:
    """The model's answers to ``prompts`` formatted as in training (``fmt``: the run's chat template
    and system prompt); ``options``: max_new_tokens, do_sample, temperature, top_p, batch_size.
    ``streamer``: transformers' streamer, for one prompt at a time."""
    config = GenerationConfig(max_new_tokens=options.max_new_tokens, do_sample=options.do_sample,
                              **({"temperature": options.temperature, "top_p": options.top_p} if options.do_sample
                                 else {}),
                              pad_token_id=tokenizer.pad_token_id, eos_token_id=end_tokens(model, tokenizer))
    device = next(model.parameters()).device
    answers = []
    for start in range(0, len(prompts), options.batch_size):
        ids = [tokenizer(fmt.prompt_text(tokenizer, p), add_special_tokens=not fmt.use_chat).input_ids
               for p in prompts[start:start + options.batch_size]]
        width = max(map(len, ids))
        pad = tokenizer.pad_token_id
        input_ids = torch.tensor([[pad] * (width - len(i)) + i for i in ids], device=device)
        mask = torch.tensor([[0] * (width - len(i)) + [1] * len(i) for i in ids], device=device)
        out = model.generate(input_ids=input_ids, attention_mask=mask, generation_config=config, streamer=streamer)
        answers += [t.strip() for t in tokenizer.batch_decode(out[:, width:], skip_special_tokens=True)]
    return answers
