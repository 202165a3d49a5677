"""The offline preference losses, each a registered entry: ``preference.loss=<name>``.

Each takes, per pair, the policy's summed answer log-probabilities and answer lengths (chosen and
rejected) and, for the losses with a reference, the reference's; it returns the per-pair loss and
the implicit rewards the metrics report (reward accuracy: chosen above rejected).

- ``sigmoid`` (DPO, Rafailov et al., 2023): -log σ(β·h), h the margin of the log-ratios to the
  reference, with conservative DPO's label smoothing.
- ``ipo`` (Azar et al., 2023): (h - 1/(2β))², on per-token means.
- ``kto`` (Ethayarajh et al., 2024): each pair as one desirable and one undesirable answer, judged
  on its own against a reference point z, the batch's estimate of the policy's KL divergence from
  the reference (each prompt with another example's answer, no gradient, at least 0):
  λ_D·(1 - σ(β·(r_c - z))) + λ_U·(1 - σ(β·(z - r_r))), r the log-ratio. Paper defaults β 0.1,
  λ_D = λ_U = 1 (conf/preference/kto.yaml).
- ``simpo`` (Meng et al., 2024): no reference; the reward is β times the mean log-probability per
  answer token, and the loss -log σ(β·(mean_c - mean_r) - γ), with the target margin γ. Paper
  defaults: β 2.0, γ 0.5 (conf/preference/simpo.yaml).
- ``orpo`` (Hong et al., 2024): no reference; the chosen answers' mean NLL per token plus
  λ·(-log σ(log odds_c - log odds_r)), odds = p/(1-p) of the mean per-token probability p. λ is
  ``beta`` (paper default 0.1, conf/preference/orpo.yaml); the rewards are λ times the means.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Optional

from peftlab.config.plugins import register_preference_loss

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class PairLogps:
    """One batch of pairs: summed answer log-probabilities, answer lengths, chosen rows then rejected."""

    policy: torch.Tensor
    reference: torch.Tensor  # zeros for the losses without a reference
    lengths: torch.Tensor
    kl: Optional[torch.Tensor] = None  # kto: the batch's estimate of KL(policy || reference), detached

    def split(self, values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        b = len(values) // 2
        return values[:b], values[b:]

    def means(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean log-probability per answer token, chosen and rejected."""
        return self.split(self.policy / self.lengths.clamp(min=1))


def _sigmoid(x: PairLogps, s: Any):
    import torch.nn.functional as F

    chosen, rejected = (a - b for a, b in zip(x.split(x.policy), x.split(x.reference), strict=True))
    h = chosen - rejected
    losses = -(1 - s.label_smoothing) * F.logsigmoid(s.beta * h) - s.label_smoothing * F.logsigmoid(-s.beta * h)
    return losses, s.beta * chosen, s.beta * rejected


def _ipo(x: PairLogps, s: Any):
    per_token = x.lengths.clamp(min=1)
    chosen, rejected = (a - b for a, b in zip(x.split(x.policy / per_token), x.split(x.reference / per_token),
                                               strict=True))
    return (chosen - rejected - 1 / (2 * s.beta)) ** 2, s.beta * chosen, s.beta * rejected


def _kto(x: PairLogps, s: Any):
    import torch

    chosen, rejected = (a - b for a, b in zip(x.split(x.policy), x.split(x.reference), strict=True))
    z = x.kl.clamp(min=0).detach()
    losses = (s.desirable_weight * (1 - torch.sigmoid(s.beta * (chosen - z)))
              + s.undesirable_weight * (1 - torch.sigmoid(s.beta * (z - rejected))))
    return losses, s.beta * chosen, s.beta * rejected


def _simpo(x: PairLogps, s: Any):
    import torch.nn.functional as F

    chosen, rejected = x.means()
    return -F.logsigmoid(s.beta * (chosen - rejected) - s.gamma), s.beta * chosen, s.beta * rejected


def _orpo(x: PairLogps, s: Any):
    import torch
    import torch.nn.functional as F

    chosen, rejected = x.means()

    def log_odds(mean):  # log p/(1-p) of p = exp(mean), computed without leaving log space
        return mean - torch.log1p(-torch.exp(mean.clamp(max=-1e-6)))

    ratio = -F.logsigmoid(log_odds(chosen) - log_odds(rejected))
    return -chosen + s.beta * ratio, s.beta * chosen, s.beta * rejected


@dataclass(frozen=True)
class PreferenceLoss:
    name: str
    compute: Callable[[PairLogps, Any], tuple]  # (pairs, settings) -> (losses, chosen reward, rejected reward)
    needs_reference: bool
    reads: tuple[str, ...] = ()  # the settings beyond beta that only this loss reads
    needs_kl: bool = False  # reads the batch's KL estimate (PairLogps.kl)


LOSSES = {loss.name: loss for loss in (
    PreferenceLoss("sigmoid", _sigmoid, True, ("label_smoothing",)),
    PreferenceLoss("ipo", _ipo, True),
    PreferenceLoss("kto", _kto, True, ("desirable_weight", "undesirable_weight"), needs_kl=True),
    PreferenceLoss("simpo", _simpo, False, ("gamma",)),
    PreferenceLoss("orpo", _orpo, False),
)}
for _loss in LOSSES.values():
    register_preference_loss(_loss.name, _loss.needs_reference, _loss.reads)


def preference_loss(name: str, needs_reference: bool, reads: tuple[str, ...] = (),
                    needs_kl: bool = False) -> Callable[[Callable], Callable]:
    """Decorator for a loss of one's own, ``preference.loss=<name>``: ``fn(pairs: PairLogps, settings)``
    returns (losses, chosen rewards, rejected rewards), one each per pair."""
    def register(fn: Callable) -> Callable:
        from peftlab.errors import ConfigError

        if name in LOSSES:
            raise ConfigError(f"preference.loss: the loss {name!r} is registered twice")
        LOSSES[name] = PreferenceLoss(name, fn, needs_reference, tuple(reads), needs_kl)
        register_preference_loss(name, needs_reference, tuple(reads))
        return fn

    return register
