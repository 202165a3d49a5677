"""LoKr (LyCORIS; Yeh et al., 2024): the update is a Kronecker product of a small matrix and a
low-rank one, W + C ⊗ (B·A); the same knobs as LoHa, and how the layer is split into the factors."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from peftlab.config.checks import check
from peftlab.config.plugins import Capabilities
from peftlab.methods.base import BuildContext, register_method
from peftlab.methods.loha import LohaSchema
from peftlab.methods.shared import peft_kwargs


@dataclass
class LokrSchema(LohaSchema):
    name: str = "lokr"
    decompose_both: bool = False  # the small factor low-rank too
    decompose_factor: int = -1  # -1: the factor closest to the square root of the layer's size

    def __post_init__(self) -> None:
        super().__post_init__()
        check(self.decompose_factor == -1 or self.decompose_factor > 0, "method.decompose_factor",
              "must be -1 or > 0", self.decompose_factor)


def build(cfg: LokrSchema, ctx: BuildContext) -> Any:
    from peft import LoKrConfig

    cfg.check_targets(ctx.model)
    return LoKrConfig(task_type=ctx.task.peft_task_type, **peft_kwargs(cfg))


register_method(
    "lokr", LokrSchema, build,
    trains="a Kronecker product of a small matrix and a low-rank pair per targeted layer",
    capabilities=Capabilities(mergeable=True),
)
