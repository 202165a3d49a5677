"""The GRPO family's loss (objectives/rl_loss.py): by hand from its formulas, and equal to TRL's
GRPOTrainer's own ``_compute_loss`` on identical log-probabilities, advantages and masks, for every
loss type, clip range and importance level (value, gradient and clip fractions)."""

from __future__ import annotations

from collections import defaultdict
from types import SimpleNamespace

import pytest
import torch

from peftlab.config.rl import LOSS_TYPES, RLSchema
from peftlab.objectives.rl_loss import advantages, policy_loss

B, T = 6, 5


def _inputs(seed: int = 0):
    """Completions of unequal length (one fully cut off), log-probabilities of a policy that moved
    since sampling (so ratios leave the clip range both ways), a reference, advantages of both signs."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.tensor([5, 3, 1, 4, 2, 5])
    mask = torch.arange(T)[None, :] < lengths[:, None]
    old = -torch.rand(B, T, generator=g, dtype=torch.float64) * 3
    logps = (old + torch.randn(B, T, generator=g, dtype=torch.float64) * 0.4).requires_grad_(True)
    ref = old + torch.randn(B, T, generator=g, dtype=torch.float64) * 0.2
    adv = torch.tensor([1.2, -0.7, 0.3, -1.5, 0.9, -0.2], dtype=torch.float64)
    return logps, old, ref, adv, mask


def _settings(**kw) -> RLSchema:
    return RLSchema(name="grpo", **kw)


def _peftlab(s: RLSchema, logps, old, ref, adv, mask):
    out = policy_loss(logps, old, ref, adv, mask, s, T)
    loss = out.total / out.count  # the training module's division (one process)
    grad, = torch.autograd.grad(loss, logps)
    return float(loss), grad, out.stats


def _trl(s: RLSchema, logps, old, ref, adv, mask):
    """TRL's GRPOTrainer._compute_loss, its forward replaced by the given log-probabilities."""
    grpo = pytest.importorskip("trl.trainer.grpo_trainer")
    accelerator = SimpleNamespace(num_processes=1, reduce=lambda x, reduction: x, gather=lambda x: x,
                                  gather_for_metrics=lambda x: x)
    entropies = torch.ones_like(logps).detach()
    trainer = SimpleNamespace(
        top_entropy_quantile=1.0, off_policy_mask_threshold=None, importance_sampling_level=s.importance_level,
        beta=s.beta, loss_type=s.loss_type, epsilon_low=s.epsilon,
        epsilon_high=s.epsilon if s.epsilon_high is None else s.epsilon_high, use_vllm=False,
        args=SimpleNamespace(use_bias_correction_kl=False, delta=None, steps_per_generation=1),
        model=SimpleNamespace(training=True), current_gradient_accumulation_steps=1, max_completion_length=T,
        accelerator=accelerator, _entropy_bonus_enabled=False, aux_loss_enabled=False,
        _metrics={"train": defaultdict(list)},
        _get_per_token_logps_and_entropies=lambda *args, **kwargs: (logps, entropies, None))
    inputs = {"prompt_ids": torch.zeros(B, 2, dtype=torch.long), "prompt_mask": torch.ones(B, 2, dtype=torch.long),
              "completion_ids": torch.zeros(B, T, dtype=torch.long), "completion_mask": mask.long(),
              "advantages": adv, "old_per_token_logps": old, "ref_per_token_logps": ref,
              "num_items_in_batch": mask.sum()}
    loss = grpo.GRPOTrainer._compute_loss(trainer, None, inputs)
    grad, = torch.autograd.grad(loss, logps)
    metrics = trainer._metrics["train"]
    return float(loss), grad, {"clip_low": metrics["clip_ratio/low_mean"][0],
                               "clip_high": metrics["clip_ratio/high_mean"][0],
                               "clip_fraction": metrics["clip_ratio/region_mean"][0],
                               **({"kl": metrics["kl"][0]} if s.beta else {})}


@pytest.mark.parametrize("level", ["token", "sequence"])
@pytest.mark.parametrize("loss_type", LOSS_TYPES)
@pytest.mark.parametrize("clip", [{}, {"epsilon_high": 0.28}], ids=["symmetric", "clip-higher"])
def test_the_loss_equals_trls_for_every_loss_type(loss_type, level, clip):
    s = _settings(loss_type=loss_type, importance_level=level, beta=0.04, **clip)
    logps, old, ref, adv, mask = _inputs()
    ours, our_grad, our_stats = _peftlab(s, logps, old, ref, adv, mask)
    theirs, their_grad, their_stats = _trl(s, logps, old, ref, adv, mask)
    assert ours == pytest.approx(theirs, abs=1e-6, rel=1e-9)
    assert torch.allclose(our_grad, their_grad, atol=1e-6, rtol=0)
    for key, value in their_stats.items():
        assert our_stats[key] == pytest.approx(value, abs=1e-6), key  # TRL counts in float32
    assert our_stats["clip_low"] > 0 and our_stats["clip_high"] > 0  # the inputs make both sides bind


def test_each_loss_type_by_hand():
    """The normalisations of objectives/rl_loss.py's docstring, with beta=0 and old = logps (ratio 1):
    each token's loss is then -A exactly."""
    logps, _, _, adv, mask = _inputs()
    per_token = (-adv[:, None]).expand(B, T) * mask
    lengths = mask.sum(1).double()
    expected = {"dapo": per_token.sum() / mask.sum(), "bnpo": per_token.sum() / mask.sum(),
                "grpo": (per_token.sum(1) / lengths).mean(), "dr_grpo": per_token.sum() / (B * T)}
    for loss_type, value in expected.items():
        out = policy_loss(logps, logps.detach(), None, adv, mask, _settings(loss_type=loss_type, beta=0.0,
                                                                            reference="none"), T)
        assert float(out.total / out.count) == pytest.approx(float(value), abs=1e-12), loss_type
        assert out.stats["clip_fraction"] == 0.0


def test_the_clip_and_gspo_by_hand():
    """One completion, ratio e^0.5 = 1.65 on every token, advantage +1: clipped at 1 + epsilon_high
    (its gradient 0); GSPO's ratio is the exponential of the mean log-ratio."""
    logps = torch.zeros(1, 2, dtype=torch.float64, requires_grad=True)
    old = torch.tensor([[-0.5, -0.5]], dtype=torch.float64)
    mask = torch.ones(1, 2, dtype=torch.bool)
    s = _settings(epsilon_high=0.28, beta=0.0, reference="none")
    out = policy_loss(logps, old, None, torch.tensor([1.0], dtype=torch.float64), mask, s, 2)
    assert float(out.total / out.count) == pytest.approx(-1.28)
    assert out.stats == {"clip_fraction": 1.0, "clip_low": 0.0, "clip_high": 1.0, "kl": 0.0}
    grad, = torch.autograd.grad(out.total, logps)
    assert grad.abs().max() == 0
    old = torch.tensor([[-0.2, -0.0]], dtype=torch.float64)  # log-ratios 0.2, 0: GSPO's ratio e^0.1 for both tokens
    out = policy_loss(logps, old, None, torch.tensor([-1.0], dtype=torch.float64), mask,
                      _settings(importance_level="sequence", beta=0.0, reference="none"), 2)
    assert float(out.total / out.count) == pytest.approx(torch.exp(torch.tensor(0.1)).item())


def test_the_advantages_of_each_scale():
    r = torch.tensor([[1.0, 0.0, 0.0, 1.0], [0.25, 0.25, 0.25, 1.0]], dtype=torch.float64)
    centred = r - r.mean(1, keepdim=True)
    assert torch.allclose(advantages(r, "grpo", "group"), centred / (r.std(1, keepdim=True) + 1e-4))
    assert torch.allclose(advantages(r, "grpo", "batch"), centred / (r.std() + 1e-4))
    assert torch.equal(advantages(r, "grpo", "none"), centred)
    assert advantages(r, "rloo", "group")[1].tolist() == pytest.approx([-0.25, -0.25, -0.25, 0.75])


@pytest.mark.parametrize("overrides,message", [
    ({"num_iterations": 0}, "rl.num_iterations must be in [1, 64] (updates per sampled batch), got 0"),
    ({"loss_type": "ppo"}, "rl.loss_type must be one of dapo, grpo, dr_grpo, bnpo, got 'ppo'"),
    ({"epsilon_high": 0.1}, "rl.epsilon_high must be a finite number >= rl.epsilon=0.2 (clip-higher widens the "
                            "range above 1) or null, got 0.1"),
    ({"scale_rewards": "std"}, "rl.scale_rewards must be one of group, batch, none, got 'std'"),
    ({"importance_level": "word"}, "rl.importance_level must be one of token, sequence, got 'word'"),
])
def test_bad_settings_are_refused_with_one_line(overrides, message):
    from peftlab.errors import ConfigError

    with pytest.raises(ConfigError) as err:
        _settings(**overrides)
    assert str(err.value) == message


def test_runs_written_before_the_loss_family_read_as_they_trained():
    assert _settings(scale_rewards=True).scale_rewards == "group"
    assert _settings(scale_rewards=False).scale_rewards == "none"
    assert _settings().loss_type == "dapo"  # the token mean over the step: what every earlier run trained with
