"""The GRPO family's advantages and policy loss, as formulas on tensors (objectives/online_rl.py runs them).

With ``p`` the policy's log-probability of a completion token, ``p_old`` the sampling policy's
(stored when the completions were sampled: equal to ``p`` on the step that sampled them, so the
ratio is 1 there and the clip binds only on the ``rl.num_iterations - 1`` later updates of the same
completions), ``A`` the completion's advantage and ``r`` the reference's log-probability:

    ratio     = exp(p - p_old)                         importance_level=token
              = exp(mean over the completion of p - p_old)   importance_level=sequence (GSPO)
    per token = -min(ratio * A, clip(ratio, 1 - epsilon, 1 + epsilon_high) * A)
                + beta * (exp(r - p) - (r - p) - 1)    (the k3 estimate of the KL divergence)

and the loss averages the per-token terms over the completion tokens (``m``: 1 on a real token of a
completion, 0 on padding and, with ``rl.mask_truncated``, on every token of a completion cut off at
``rl.max_new_tokens``) as ``rl.loss_type`` says:

    grpo     mean over completions of (sum_t m * l / sum_t m)
    dr_grpo  sum m * l / (completions * max_new_tokens)
    dapo     sum m * l / sum m, the sums over the step's completions on every process
    bnpo     sum m * l / sum m on each process, the processes' losses averaged

These are TRL's GRPOTrainer's (tests/test_rl_loss.py checks them against it). The training module
divides ``total`` by the sum of ``count`` over the processes and multiplies by their number."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import torch

STD_FLOOR = 1e-4  # added to a standard deviation before dividing by it (TRL's)


def advantages(rewards: torch.Tensor, algorithm: str, scale: str) -> torch.Tensor:
    """(prompts, G) rewards -> advantages: GRPO's centred on the group's mean and divided by the
    group's standard deviation (``scale=group``), the whole batch's (``batch``) or nothing
    (``none``); RLOO's leave-one-out baseline (unscaled)."""
    G = rewards.shape[1]
    if algorithm == "rloo":
        return rewards - (rewards.sum(1, keepdim=True) - rewards) / (G - 1)
    centred = rewards - rewards.mean(1, keepdim=True)
    if scale == "group":
        return centred / (rewards.std(1, keepdim=True) + STD_FLOOR)
    if scale == "batch":
        return centred / (rewards.std() + STD_FLOOR)
    return centred


@dataclass
class PolicyLoss:
    total: torch.Tensor  # divided by ``count`` (summed over the processes) in the training module
    count: torch.Tensor
    stats: dict[str, float]  # the clip fractions (low, high, either), the KL's mean, over the loss's tokens


def policy_loss(logps: torch.Tensor, old: torch.Tensor, ref: Optional[torch.Tensor], adv: torch.Tensor,
                mask: torch.Tensor, s: Any, max_new_tokens: int) -> PolicyLoss:
    """The loss of (completions, tokens) log-probabilities ``logps`` (with their gradient), ``old``
    and ``ref`` (without), per-completion advantages ``adv`` and the loss mask ``mask``; ``s``: the
    rl settings (loss_type, epsilon, epsilon_high, beta, importance_level)."""
    loss_type, epsilon, beta = s.loss_type, s.epsilon, s.beta
    m = mask.to(logps.dtype)
    adv = adv.to(logps.dtype)[:, None]
    log_ratio = logps - old
    if s.importance_level == "sequence":
        log_ratio = ((log_ratio * m).sum(-1) / m.sum(-1).clamp(min=1.0))[:, None]
    ratio = torch.exp(log_ratio)
    high = epsilon if s.epsilon_high is None else s.epsilon_high
    per_token = -torch.minimum(ratio * adv, torch.clamp(ratio, 1 - epsilon, 1 + high) * adv)
    kl = torch.zeros_like(logps)
    if beta != 0 and ref is not None:
        diff = ref - logps
        kl = torch.exp(diff) - diff - 1
        per_token = per_token + beta * kl
    per_token = per_token.expand_as(m)
    if loss_type == "grpo":
        total = ((per_token * m).sum(-1) / m.sum(-1).clamp(min=1.0)).sum()
        count = torch.tensor(float(m.shape[0]), device=m.device)
    elif loss_type == "dr_grpo":
        total, count = (per_token * m).sum(), torch.tensor(float(m.shape[0] * max_new_tokens), device=m.device)
    elif loss_type == "bnpo":  # this process's token mean; the module's division by the processes' count of 1s
        total, count = (per_token * m).sum() / m.sum().clamp(min=1.0), torch.tensor(1.0, device=m.device)
    else:  # dapo
        total, count = (per_token * m).sum(), m.sum()
    return PolicyLoss(total, count, _clip_stats(ratio.detach(), adv, m, epsilon, high, kl))


def _clip_stats(ratio: torch.Tensor, adv: torch.Tensor, m: torch.Tensor, low: float, high: float,
                kl: torch.Tensor) -> dict[str, float]:
    """The shares of the loss's tokens (of its completions, with one ratio per completion) whose
    ratio the clip holds, as TRL defines them: below 1 - epsilon with a negative advantage, above
    1 + epsilon_high with a positive one; and the KL's mean over the loss's tokens."""
    weight = m if ratio.shape[1] > 1 else torch.ones_like(ratio)
    count = weight.sum().clamp(min=1.0)
    below = ((ratio < 1 - low) & (adv < 0)).to(m.dtype) * weight
    above = ((ratio > 1 + high) & (adv > 0)).to(m.dtype) * weight
    return {"clip_fraction": float((below + above).sum() / count), "clip_low": float(below.sum() / count),
            "clip_high": float(above.sum() / count), "kl": float((kl.detach() * m).sum() / m.sum().clamp(min=1.0))}
