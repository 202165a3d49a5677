"""One sampled batch of online RL (a rollout): the completions, which of their tokens are real,
their rewards and advantages, and the reference's and the sampling policy's log-probabilities,
kept for the ``rl.num_iterations`` updates that train on it (objectives/online_rl.py), and saved in a
checkpoint taken between them so that a resumed run trains on what the uninterrupted one did."""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, Optional

import torch

from peftlab.errors import Diverged


@dataclass
class Rollout:
    step: int  # the step that sampled it
    prompts: torch.Tensor  # (completions, prompt tokens), left-padded; each prompt G times
    prompt_mask: torch.Tensor
    completion: torch.Tensor  # (completions, new tokens)
    done: torch.Tensor  # bool: the real positions, up to and with the first end token
    finished: torch.Tensor  # bool per completion: it ended (an end token) within rl.max_new_tokens
    rewards: torch.Tensor  # the weighted total per completion
    per_reward: dict[str, torch.Tensor]  # each reward's own values (NaN: the function gave None)
    advantages: torch.Tensor
    reference: Optional[torch.Tensor] = None  # (completions, new tokens) log-probabilities; None with beta=0
    old: Optional[torch.Tensor] = None  # the sampling policy's, set by the step that sampled
    texts: Optional[list[str]] = None  # the decoded completions (completions.jsonl); not checkpointed
    cut: Optional[list[bool]] = None  # the texts the reward model saw cut

    def tokens(self, values: torch.Tensor) -> torch.Tensor:
        """Values of the real completion tokens in row-major order -> (completions, new tokens)."""
        grid = values.new_zeros(self.done.shape)
        grid[self.done] = values
        return grid

    def joint(self) -> dict[str, torch.Tensor]:
        """The prompts and their completions as one batch, labelled on the completions' real tokens."""
        from peftlab.data.tokenize import IGNORE_INDEX

        ids = torch.cat([self.prompts, self.completion], 1)
        mask = torch.cat([self.prompt_mask, self.done.long()], 1)
        labels = torch.cat([torch.full_like(self.prompts, IGNORE_INDEX),
                            self.completion.masked_fill(~self.done, IGNORE_INDEX)], 1)
        return {"input_ids": ids, "attention_mask": mask, "labels": labels, "prompt_width": self.prompts.shape[1]}

    def loss_mask(self, mask_truncated: bool) -> torch.Tensor:
        return self.done & self.finished[:, None] if mask_truncated else self.done

    def state(self) -> dict[str, Any]:
        """Tensors and plain values only: checkpoints are read with ``weights_only=True``."""
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name != "texts"}

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> "Rollout":
        return cls(**{f.name: state[f.name] for f in fields(cls) if f.name in state})

    def to(self, device: Any) -> "Rollout":
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, torch.Tensor):
                setattr(self, f.name, value.to(device))
        self.per_reward = {k: v.to(device) for k, v in self.per_reward.items()}
        return self


@torch.no_grad()
def sample(model: Any, tokenizer: Any, settings: Any, max_new_tokens: int, prompts: torch.Tensor,
           prompt_mask: torch.Tensor, step: int, group: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """Completions (rows, new tokens) sampled from ``model`` as it is (eval mode), ``group`` of each
    of the (left-padded) ``prompts`` in a row, and which of their positions are real: up to and with
    the first end token. The prompts are read once and their keys and values shared by the group
    (``shared_prompts``), not read ``group`` times."""
    from transformers import GenerationConfig

    from peftlab.data.loaders import rank_and_world
    from peftlab.tasks.generation import end_tokens
    from peftlab.tasks.reference import eval_mode

    ends = end_tokens(model, tokenizer)
    # every sampling setting stated: transformers fills what is left unset from the model's own
    # generation config (a repetition penalty, min_p, ...), which would reshape the distribution
    config = GenerationConfig(max_new_tokens=max_new_tokens, do_sample=True, temperature=settings.temperature,
                              top_p=settings.top_p, top_k=0, min_p=0.0, typical_p=1.0, repetition_penalty=1.0,
                              no_repeat_ngram_size=0, num_beams=1, num_return_sequences=1,
                              pad_token_id=tokenizer.pad_token_id, eos_token_id=ends)
    synced = rank_and_world()[1] > 1  # a sharded forward is collective: every process decodes to the end
    rows, row_mask = prompts.repeat_interleave(group, 0), prompt_mask.repeat_interleave(group, 0)
    with eval_mode(model):
        try:
            out = model.generate(input_ids=rows, attention_mask=row_mask, generation_config=config,
                                 synced_gpus=synced, **shared_prompts(model, prompts, prompt_mask, group))
        except RuntimeError as err:  # torch.multinomial on what overflowed in the last update
            if "probability tensor contains" not in str(err):
                raise
            raise Diverged(step + 1, "sampling met probabilities that are not finite (the policy's logits "
                           "overflowed)") from None
    completion = out[:, prompts.shape[1]:]
    is_end = torch.isin(completion, torch.tensor(ends, device=completion.device))
    after_end = (is_end.long().cumsum(1) - is_end.long()) > 0  # positions after the first end token
    return completion, ~after_end


@torch.no_grad()
def sharing_holds(model: Any, prompts: torch.Tensor, prompt_mask: torch.Tensor, group: int) -> bool:
    """Whether the model goes on from a shared prompt cache as from the prompt read whole: the
    next-token logits after each prompt, both ways (once per run: a tuner that reshapes attention or
    reads the whole sequence may not continue from a cache, and is then read whole)."""
    from peftlab.tasks.reference import eval_mode

    if not _shareable(model, prompts, group):
        return False
    rows, row_mask = prompts.repeat_interleave(group, 0), prompt_mask.repeat_interleave(group, 0)
    positions = (row_mask.long().cumsum(-1) - 1).masked_fill(row_mask == 0, 1)
    k = min(3, prompts.shape[1] - 1)  # the prompts' last k tokens go on from the cache of the rest, as completions do
    with eval_mode(model):
        try:
            whole = model(input_ids=rows, attention_mask=row_mask, position_ids=positions).logits[:, -k:]
            w = prompts.shape[1] - k + 1  # the cache holds all but the last of these
            cache = shared_prompts(model, prompts[:, :w], prompt_mask[:, :w], group)["past_key_values"]
            shared = model(input_ids=rows[:, -k:], attention_mask=row_mask, position_ids=positions[:, -k:],
                           past_key_values=cache).logits
        except (RuntimeError, ValueError, TypeError, IndexError, AttributeError):
            return False
    return bool(torch.allclose(shared.float(), whole.float(), atol=1e-4, rtol=1e-4))


def _shareable(model: Any, prompts: torch.Tensor, group: int) -> bool:
    config = getattr(model, "active_peft_config", None)
    return group > 1 and prompts.shape[1] > 1 and not getattr(config, "is_prompt_learning", False)


def shared_prompts(model: Any, prompts: torch.Tensor, prompt_mask: torch.Tensor, group: int) -> dict[str, Any]:
    """``generate``'s ``past_key_values`` for ``group`` completions of each prompt: every prompt token
    but the last read once, its keys and values repeated for the group (generation goes on from the
    last token, as it would from the prompt read whole). {} where there is nothing to share, or the
    prompt's keys and values are the method's own (prefix and prompt tuning)."""
    from transformers import DynamicCache

    if not _shareable(model, prompts, group):
        return {}
    cache = DynamicCache(config=model.config)
    # the positions generate gives a left-padded prompt: counted from its first real token
    positions = (prompt_mask.long().cumsum(-1) - 1).masked_fill(prompt_mask == 0, 1)
    model(input_ids=prompts[:, :-1], attention_mask=prompt_mask[:, :-1], position_ids=positions[:, :-1],
          past_key_values=cache, use_cache=True)
    cache.batch_repeat_interleave(group)
    return {"past_key_values": cache}


def finished(model: Any, tokenizer: Any, completion: torch.Tensor, done: torch.Tensor) -> torch.Tensor:
    """Per completion: an end token among its real positions (the others were cut off)."""
    from peftlab.tasks.generation import end_tokens

    ends = torch.tensor(end_tokens(model, tokenizer), device=completion.device)
    return (torch.isin(completion, ends) & done).any(1)
