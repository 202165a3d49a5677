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

from peftlab.config.checks import check, module_names
from peftlab.config.plugins import Capabilities, MethodSchema
from peftlab.methods.base import BuildContext, MethodHooks, register_method
from peftlab.methods.targets import check_target_modules, peft_kwargs


@dataclass
class AdaLoraSchema(MethodSchema):
    """Ranks start at ``init_r`` per layer; between steps ``tinit`` and ``total_step - tfinal`` the
    budget falls to ``target_r`` per layer on average, reallocated every ``deltaT`` steps."""

    name: str = "adalora"
    init_r: int = 12
    target_r: int = 8
    tinit: int = 10  # steps before any pruning
    tfinal: int = 20  # steps at the final budget, at the end
    deltaT: int = 5  # steps between two allocations
    beta1: float = 0.85  # smoothing of the importance
    beta2: float = 0.85  # smoothing of its uncertainty
    orth_reg_weight: float = 0.1  # the paper's gamma
    total_step: Optional[int] = None  # the run's optimizer steps (the YAML: ${trainer.max_steps})
    lora_alpha: float = 32.0
    lora_dropout: float = 0.0
    target_modules: Any = "all-linear"

    def __post_init__(self) -> None:
        check(self.init_r > 0, "method.init_r", "must be > 0", self.init_r)
        check(0 < self.target_r <= self.init_r, "method.target_r", f"must be in [1, method.init_r={self.init_r}]",
              self.target_r)
        check(self.tinit >= 0, "method.tinit", "must be >= 0", self.tinit)
        check(self.tfinal >= 0, "method.tfinal", "must be >= 0", self.tfinal)
        check(self.deltaT > 0, "method.deltaT", "must be > 0", self.deltaT)
        for key in ("beta1", "beta2"):
            check(0.0 <= getattr(self, key) < 1.0, f"method.{key}", "must be in [0, 1)", getattr(self, key))
        check(self.orth_reg_weight >= 0, "method.orth_reg_weight", "must be >= 0", self.orth_reg_weight)
        check(self.total_step is not None and self.total_step > 0, "method.total_step",
              "must be the run's number of optimizer steps (> 0; set it when trainer.max_steps is -1)", self.total_step)
        check(self.tinit + self.tfinal < self.total_step, "method.tinit",
              f"plus method.tfinal must be below method.total_step={self.total_step} (no step would prune)",
              self.tinit)
        check(0.0 <= self.lora_dropout < 1.0, "method.lora_dropout", "must be in [0, 1)", self.lora_dropout)
        module_names("method.target_modules", self.target_modules)

    def check(self, run: Any) -> list[str]:
        problems = super().check(run)
        if getattr(run, "resume_from", None):
            problems.append("resume_from: method=adalora cannot resume exactly (peft keeps the rank allocator's "
                            "importance scores outside the model, so a checkpoint lacks them); start the run again")
        return problems


def build(cfg: AdaLoraSchema, ctx: BuildContext) -> Any:
    from peft import AdaLoraConfig

    check_target_modules(ctx.model, cfg.target_modules)
    return AdaLoraConfig(task_type=ctx.task.peft_task_type, **peft_kwargs(cfg))


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
    hooks=MethodHooks(after_step=allocate, loss_term=orthogonality_penalty),
)
