"""Any tuner as the policy of online RL: every registered method (DoRA too) and every peft tuner the
capability probe shows training a causal LM takes a GRPO step on the tiny model: the method check
accepts the run, the sampled completions are scored, the policy gradient reaches the tuner's
trainable weights, and where the tuner starts as the base, the reference with the adapter off is the
policy itself at the first step (a KL of 0)."""

from __future__ import annotations

import json

import pytest
import torch
from test_rl import RL, setup

from conftest import compose


def _methods() -> dict[str, list[str]]:
    """Every registered method that serves online RL (DoRA too), with the reference it allows: the
    adapter switched off where a fresh one leaves the base as it was, none otherwise."""
    import peftlab.tasks  # noqa: F401  (registers the task types, rl among them)
    from peftlab.config.plugins import served_task_types
    from peftlab.methods import METHODS

    out = {}
    for name, spec in sorted(METHODS.items()):
        if name == "peft" or "rl" not in served_task_types(spec.capabilities):
            continue
        fresh_is_base = spec.capabilities.adapter and spec.capabilities.starts_as_base
        out[name] = [f"method={name}", *([] if fresh_is_base else ["rl.beta=0", "rl.reference=none"])]
    out["dora"] = ["method=lora", "method.use_dora=true"]
    return out


def _probed() -> dict[str, list[str]]:
    from peftlab.methods.generic import probe_results

    out = {}
    for name, found in sorted(probe_results().items()):
        result = found["tasks"].get("causal_lm", {})
        if result.get("trains"):
            options = ", ".join(f"{k}: {json.dumps(v)}" for k, v in result.get("options", {}).items())
            reference = [] if result.get("starts_as_base") else ["rl.beta=0", "rl.reference=none"]
            out[f"peft-{name}"] = ["method=peft", f"method.peft_type={name}", f"method.options={{{options}}}",
                                   *reference]
    return out


POLICIES = {**_methods(), **_probed()}


@pytest.mark.integration
@pytest.mark.parametrize("policy", sorted(POLICIES), ids=sorted(POLICIES))
def test_a_grpo_step_trains_the_policy_of_every_tuner(policy, cache_dir):
    from peftlab.config import validate
    from peftlab.config.commands import TrainSchema

    overrides = [*RL, "rl.rewards={length_penalty: 1.0, date_exact: 1.0}", "rl.num_generations=2", *POLICIES[policy]]
    run = validate(compose(overrides), TrainSchema)
    assert run.method.check(run) == []  # the method serves data.task_type=rl
    rl, model, data = setup(overrides, cache_dir)
    model.eval()  # no dropout: at the first step the policy is exactly what it sampled with
    torch.manual_seed(0)
    rl.step = 0
    total, count = rl.loss(model, next(iter(data.train_dataloader())))
    assert int(count) > 0 and torch.isfinite(total)
    # a gradient that moves the tuner: the advantages are 0 when every completion scored alike, so the
    # surrogate's gradient is the mean log-probability's, the direction every policy gradient scales
    logps = rl.rollout.tokens(rl.token_logps(model, rl.rollout.joint())[0])
    logps.sum().backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad and p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    assert any(g.abs().sum() > 0 for g in grads)
    if rl.settings.beta > 0:  # the adapter switched off is the base, which the fresh tuner still is
        assert rl.step_logs()["kl"] == pytest.approx(0.0, abs=1e-5)
