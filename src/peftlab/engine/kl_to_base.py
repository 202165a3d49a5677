"""KL to the base on the task's own prompts: how far training moved the model where it was trained,
the measure *RL's Razor* (Shenfeld et al., 2025) finds forgetting to track.

Before training, the base answers each of the first ``kl_to_base.prompts`` prompts of a split once,
sampled from its full distribution (temperature 1, no top-k or top-p cut) with the measure's own seed,
so that every run of a comparison reads the same answers and training's own random numbers are left
as they were. The base's log-probabilities over the whole vocabulary are kept at every answer
position. After training, the trained model reads the same sequences, and an answer's KL(base ||
trained) is the sum over its positions of the exact KL between the two next-token distributions.
The answers are drawn from the base, so the mean over prompts estimates the sequence-level
KL(pi_0 || pi) on the task's prompts without bias (each position's expectation over the next token
is exact, not sampled). ``reverse`` is KL(trained || base) at the same positions: a description, not
the sequence-level reverse KL, whose answers would come from the trained model.

Memory: the kept log-probabilities take prompts x answer tokens x vocabulary x 4 bytes (32 x 16 x
49,152 for SmolLM2: 96 MiB).
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Any, Callable, ContextManager

if TYPE_CHECKING:  # torch loads with the first model, not with the config checks
    import torch


def sample_answers(model: torch.nn.Module, tokenizer: Any, prompts: list[list[int]], max_new_tokens: int,
                   seed: int, batch_size: int = 8) -> list[list[int]]:
    """One answer per prompt (token ids through the first end token), sampled from ``model``'s full
    distribution with ``seed``; the global random state is as it was before."""
    import torch
    from transformers import GenerationConfig

    from peftlab.data.collators import pad
    from peftlab.tasks.generation import end_tokens

    ends = end_tokens(model, tokenizer)
    config = GenerationConfig(max_new_tokens=max_new_tokens, do_sample=True, temperature=1.0, top_k=0, top_p=1.0,
                              pad_token_id=tokenizer.pad_token_id, eos_token_id=ends)
    device = next(model.parameters()).device
    answers: list[list[int]] = []
    was_training = model.training
    model.eval()
    try:
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []), torch.no_grad():
            torch.manual_seed(seed)
            for start in range(0, len(prompts), batch_size):
                chunk = prompts[start:start + batch_size]
                ids = pad([torch.tensor(p) for p in chunk], tokenizer.pad_token_id, left=True).to(device)
                mask = pad([torch.ones(len(p), dtype=torch.long) for p in chunk], 0, left=True).to(device)
                out = model.generate(input_ids=ids, attention_mask=mask, generation_config=config)
                for row in out[:, ids.shape[1]:].tolist():
                    cut = next((i + 1 for i, t in enumerate(row) if t in ends), len(row))
                    answers.append(row[:cut])
    finally:
        model.train(was_training)
    return answers


def answer_log_probs(model: torch.nn.Module, prompt: list[int], answer: list[int],
                     autocast: Callable[[], ContextManager] = contextlib.nullcontext) -> torch.Tensor:
    """(len(answer), vocabulary) fp32 log-probabilities of each answer token's position, from one
    unpadded forward over prompt + answer (prompt-learning models put virtual tokens first: the
    positions are counted from the end)."""
    import torch

    device = next(model.parameters()).device
    ids = torch.tensor([prompt + answer], device=device)
    with torch.no_grad(), autocast():
        logits = model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits
    n = len(answer)
    return torch.log_softmax(logits[0, -n - 1:-1].float(), dim=-1).cpu()


class KLToBase:
    """Samples the base's answers and keeps its log-probabilities (at construction, before the
    method is applied); ``record`` measures the trained model against them, for metrics.json's
    ``kl_to_base``."""

    def __init__(self, cfg: Any, prompts: list[list[int]], max_new_tokens: int, tokenizer: Any,
                 model: torch.nn.Module, autocast: Callable[[], ContextManager] = contextlib.nullcontext):
        self.cfg, self.autocast = cfg, autocast
        self.prompts = prompts[:cfg.prompts]
        answers = sample_answers(model, tokenizer, self.prompts, cfg.max_new_tokens or max_new_tokens, cfg.seed)
        keep = [i for i, a in enumerate(answers) if a]  # an answer that ends at once has no position to compare
        self.prompts, self.answers = [self.prompts[i] for i in keep], [answers[i] for i in keep]
        self.before = self._log_probs(model)

    def _log_probs(self, model: torch.nn.Module) -> list[torch.Tensor]:
        was_training = model.training
        model.eval()
        try:
            pairs = zip(self.prompts, self.answers, strict=True)
            return [answer_log_probs(model, p, a, self.autocast) for p, a in pairs]
        finally:
            model.train(was_training)

    def record(self, trained: torch.nn.Module) -> dict[str, Any]:
        from peftlab.reporting.intervals import seeds_interval

        after = self._log_probs(trained)
        forward, reverse, tokens = [], [], 0
        for base, new in zip(self.before, after, strict=True):
            p0, p1 = base.exp(), new.exp()
            forward.append(float((p0 * (base - new)).sum(-1).double().sum()))
            reverse.append(float((p1 * (new - base)).sum(-1).double().sum()))
            tokens += base.shape[0]
        n = len(forward)
        spread = seeds_interval(forward) if n > 1 else None
        return {"kl": round(sum(forward) / n, 6) if n else None,
                "kl_ci95": None if spread is None or spread.half is None else round(spread.half, 6),
                "per_token": round(sum(forward) / tokens, 6) if tokens else None,
                "reverse": round(sum(reverse) / n, 6) if n else None,
                "prompts": n, "tokens": tokens, "split": self.cfg.split, "seed": self.cfg.seed}
