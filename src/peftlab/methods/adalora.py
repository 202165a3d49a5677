"""AdaLoRA (Zhang et al., 2023): LoRA in SVD form (P·Λ·Q) whose rank budget moves during training
to the layers where it matters, by pruning the singular values of least importance.

It asks two things of the training loop, as hooks (peftlab.methods.MethodHooks): the rank
allocator runs after every optimizer step, while the step's gradients are in place (the importance
of a singular value is |value · gradient|, smoothed); and the orthogonality penalty on P and Q joins
the loss (peft adds it only to a loss computed from ``labels``, which peftlab's tasks do not pass).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

from peftlab.config.checks import check
from peftlab.config.plugins import Capabilities
from peftlab.methods.base import BuildContext, MethodHooks, register_method
from peftlab.methods.shared import TargetedSchema, peft_kwargs


@dataclass
class AdaLoraSchema(TargetedSchema):
    """Ranks start at ``init_r`` per layer; after the first ``tinit_share`` of the steps and until
    the last ``tfinal_share`` the budget falls to ``target_r`` per layer on average, reallocated
    every ``deltaT`` steps. The schedule is given as shares of the run (peft takes steps: the paper's
    step counts belong to its run lengths), so that it holds when trainer.max_steps changes."""

    name: str = "adalora"
    init_r: int = 12
    target_r: int = 8
    tinit_share: float = 1 / 6  # of the steps, before any pruning
    tfinal_share: float = 1 / 3  # of the steps, at the final budget, at the end
    deltaT: int = 5  # steps between two allocations
    beta1: float = 0.85  # smoothing of the importance
    beta2: float = 0.85  # smoothing of its uncertainty
    orth_reg_weight: float = 0.1  # the paper's gamma
    total_step: Optional[int] = None  # the run's optimizer steps (the YAML: ${trainer.max_steps})
    lora_alpha: float = 32.0
    lora_dropout: float = 0.0

    def __post_init__(self) -> None:
        super().__post_init__()
        check(self.init_r > 0, "method.init_r", "must be > 0", self.init_r)
        check(0 < self.target_r <= self.init_r, "method.target_r", f"must be in [1, method.init_r={self.init_r}]",
              self.target_r)
        check(0 <= self.tinit_share < 1, "method.tinit_share", "must be in [0, 1)", self.tinit_share)
        check(0 <= self.tfinal_share < 1, "method.tfinal_share", "must be in [0, 1)", self.tfinal_share)
        check(self.deltaT > 0, "method.deltaT", "must be > 0", self.deltaT)
        for key in ("beta1", "beta2"):
            check(0.0 <= getattr(self, key) < 1.0, f"method.{key}", "must be in [0, 1)", getattr(self, key))
        check(self.orth_reg_weight >= 0, "method.orth_reg_weight", "must be >= 0", self.orth_reg_weight)
        check(self.total_step is not None and self.total_step > 0, "method.total_step",
              "must be the run's number of optimizer steps (> 0; set it when trainer.max_steps is -1)", self.total_step)
        tinit, tfinal = self.steps()
        check(tinit + tfinal < self.total_step, "method.tinit_share",
              f"plus method.tfinal_share must leave steps to prune in (of total_step={self.total_step}: "
              f"{tinit} + {tfinal} steps)", self.tinit_share)
        check(0.0 <= self.lora_dropout < 1.0, "method.lora_dropout", "must be in [0, 1)", self.lora_dropout)

    def steps(self) -> tuple[int, int]:
        """peft's tinit and tfinal, in steps."""
        return round(self.tinit_share * self.total_step), round(self.tfinal_share * self.total_step)

    def check(self, run: Any) -> list[str]:
        problems = super().check(run)
        if getattr(run, "resume_from", None):
            problems.append("resume_from: method=adalora cannot resume exactly (peft keeps the rank allocator's "
                            "importance scores outside the model, so a checkpoint lacks them); start the run again")
        return problems


def build(cfg: AdaLoraSchema, ctx: BuildContext) -> Any:
    from peft import AdaLoraConfig

    cfg.check_targets(ctx.model)
    tinit, tfinal = cfg.steps()
    return AdaLoraConfig(task_type=ctx.task.peft_task_type, tinit=tinit, tfinal=tfinal,
                         **peft_kwargs(cfg, drop=("tinit_share", "tfinal_share")))


def freeze_rank_counts(model: Any, cfg: AdaLoraSchema, ctx: BuildContext) -> None:
    """peft keeps each layer's rank count as a parameter it freezes; built on the meta device
    (accelerate's empty weights) it comes out trainable, and parameter counts would differ."""
    for name, p in model.named_parameters():
        if ".ranknum." in name:
            p.requires_grad_(False)


def allocate(model: Any, step: int) -> None:
    """peft's rank allocator: update the importance scores, prune to the step's budget."""
    model.base_model.update_and_allocate(step)


def orthogonality_penalty(model: Any) -> Any:
    """orth_reg_weight x the mean over P and Q of ||P P^T - I||_F (||Q^T Q - I||_F): the term
    peft's AdaLoraModel.forward adds to a loss computed from labels."""
    import torch

    name = model.base_model.trainable_adapter_name
    weight = model.peft_config[name].orth_reg_weight
    terms = []
    for n, p in model.named_parameters():
        if f"lora_A.{name}" in n or f"lora_B.{name}" in n:
            cov = p @ p.T if "lora_A" in n else p.T @ p
            terms.append(torch.linalg.matrix_norm(cov - torch.eye(cov.shape[0], dtype=cov.dtype, device=cov.device)))
    return weight * torch.stack(terms).mean()


register_method(
    "adalora", AdaLoraSchema, build,
    trains="SVD-form low-rank updates P·Λ·Q whose ranks are pruned to a budget during training",
    capabilities=Capabilities(mergeable=True, per_step_hook=True),
    initialise=freeze_rank_counts,
    hooks=MethodHooks(after_step=allocate, loss_term=orthogonality_penalty),
)
