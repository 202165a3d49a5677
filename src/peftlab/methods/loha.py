"""LoHa (Hyeon-Woo et al., 2022, as in LyCORIS): the update is the Hadamard product of two low-rank
products, (B1·A1) ⊙ (B2·A2), so rank r reaches an update of rank up to r² with twice LoRA's
parameters. peft's LoHa adapts linear and convolution layers (not GPT-2's Conv1D)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from peftlab.config.checks import check
from peftlab.config.plugins import Capabilities
from peftlab.methods.base import BuildContext, register_method
from peftlab.methods.shared import TargetedSchema, peft_kwargs


@dataclass
class LohaSchema(TargetedSchema):
    name: str = "loha"
    r: int = 8
    alpha: float = 8.0
    rank_dropout: float = 0.0
    module_dropout: float = 0.0

    def __post_init__(self) -> None:
        super().__post_init__()
        check(self.r > 0, "method.r", "must be > 0", self.r)
        check(self.alpha > 0, "method.alpha", "must be > 0", self.alpha)
        for key in ("rank_dropout", "module_dropout"):
            check(0.0 <= getattr(self, key) < 1.0, f"method.{key}", "must be in [0, 1)", getattr(self, key))


def build(cfg: LohaSchema, ctx: BuildContext) -> Any:
    from peft import LoHaConfig

    cfg.check_targets(ctx.model)
    return LoHaConfig(task_type=ctx.task.peft_task_type, **peft_kwargs(cfg))


register_method(
    "loha", LohaSchema, build,
    trains="two low-rank pairs per targeted layer, combined by a Hadamard product",
    capabilities=Capabilities(mergeable=True),
)
