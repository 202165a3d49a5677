"""Generation: greedy for evaluation (batched, left-padded prompts, the KV cache, every end token),
and greedy or sampled answers to a user's prompts (peftlab-generate)."""

from __future__ import annotations

import inspect
from typing import Any

import torch
from transformers import GenerationConfig

from peftlab.data.collators import pad


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
             max_new_tokens: int, cache: Any = None) -> list[str]:
    """Batched greedy decoding of left-padded prompts with the KV cache (``cache``: one that already
    holds the prompts but their last token); the continuations, stripped."""
    from peftlab.data.loaders import rank_and_world

    config = GenerationConfig(max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tokenizer.pad_token_id,
                              eos_token_id=end_tokens(model, tokenizer))
    # with several processes every one decodes until all have ended: a sharded model's forward is collective
    synced = rank_and_world()[1] > 1
    out = model.generate(input_ids=input_ids, attention_mask=attention_mask, generation_config=config,
                         synced_gpus=synced, **({"past_key_values": cache} if cache is not None else {}))
    return [t.strip() for t in tokenizer.batch_decode(out[:, input_ids.shape[1]:], skip_special_tokens=True)]


def _full_attention_cache(cache: Any) -> bool:
    """A cache every layer of which keeps every position (what cropping back to the prompt needs):
    not sliding-window, linear-attention or quantized layers."""
    from transformers.cache_utils import DynamicCache, DynamicLayer

    return type(cache) is DynamicCache and all(type(layer) is DynamicLayer for layer in cache.layers)


@torch.no_grad()
def score_and_generate(model: torch.nn.Module, tokenizer: Any, batch: dict[str, Any],
                       max_new_tokens: int) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """The answer logits of a teacher-forced forward (for the loss) and greedy generations, with the
    prompts run once: one forward over each left-padded prompt followed by its reference answer
    (positions counted from each example's first real token, as in the right-padded layout) gives
    the logits and the prompts' KV cache, and decoding continues from that cache cut back to the
    prompts. Models whose cache cannot be cut (sliding-window layers), whose forward takes no
    ``position_ids`` or that put virtual tokens before the input (prompt learning) run the prompts
    again. Returns (logits, targets, texts)."""
    from peftlab.data.tokenize import IGNORE_INDEX
    from peftlab.tasks.heads import answer_logits

    prompts, prompt_mask = batch["gen_input_ids"], batch["gen_attention_mask"]
    config = getattr(model, "active_peft_config", None)
    backbone = model.get_base_model() if hasattr(model, "get_base_model") else model
    takes_positions = "position_ids" in inspect.signature(backbone.forward).parameters
    if getattr(config, "is_prompt_learning", False) or not takes_positions:
        logits, targets = answer_logits(model, batch)
        return logits, targets, generate(model, tokenizer, prompts, prompt_mask, max_new_tokens)
    width = prompts.shape[1]
    starts, ends = prompt_mask.sum(1).tolist(), batch["attention_mask"].sum(1).tolist()
    answers = [batch["input_ids"][i, s:e] for i, (s, e) in enumerate(zip(starts, ends, strict=True))]
    answer_labels = [batch["labels"][i, s:e] for i, (s, e) in enumerate(zip(starts, ends, strict=True))]
    # a conversation's earlier answers are in its prompt, and their labels with them
    prompt_labels = pad([batch["labels"][i, :s] for i, s in enumerate(starts)], IGNORE_INDEX, left=True)
    input_ids = torch.cat([prompts, pad(answers, tokenizer.pad_token_id)], 1)
    mask = torch.cat([prompt_mask, pad([torch.ones_like(a) for a in answers], 0)], 1)
    labels = torch.cat([prompt_labels, pad(answer_labels, IGNORE_INDEX)], 1)
    joint = {"input_ids": input_ids, "attention_mask": mask, "labels": labels}
    logits, targets, cache = answer_logits(model, joint, position_ids=(mask.cumsum(-1) - 1).clamp(min=0),
                                           keep_cache=True)
    if not _full_attention_cache(cache):
        return logits, targets, generate(model, tokenizer, prompts, prompt_mask, max_new_tokens)
    cache.crop(-(input_ids.shape[1] - (width - 1)))  # the prompts but their last token, which decoding feeds
    return logits, targets, generate(model, tokenizer, prompts, prompt_mask, max_new_tokens, cache=cache)


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
        input_ids = pad(ids, tokenizer.pad_token_id, left=True).to(device)
        mask = pad([[1] * len(i) for i in ids], 0, left=True).to(device)
        width = input_ids.shape[1]
        out = model.generate(input_ids=input_ids, attention_mask=mask, generation_config=config, streamer=streamer)
        answers += [t.strip() for t in tokenizer.batch_decode(out[:, width:], skip_special_tokens=True)]
    return answers
