"""VeRA (Kopiczko et al., 2024): one pair of frozen random low-rank matrices shared by every
targeted layer; each layer trains only two scaling vectors, so r can be large (the paper: 256)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from peftlab.config.checks import check
from peftlab.config.plugins import Capabilities
from peftlab.methods.base import BuildContext, register_method
from peftlab.methods.shared import TargetedSchema, peft_kwargs


@dataclass
class VeraSchema(TargetedSchema):
    name: str = "vera"
    r: int = 256
    vera_dropout: float = 0.0
    d_initial: float = 0.1  # the initial value of the scaling vector d
    projection_prng_key: int = 0  # the seed of the shared random matrices

    def __post_init__(self) -> None:
        super().__post_init__()
        check(self.r > 0, "method.r", "must be > 0", self.r)
        check(0.0 <= self.vera_dropout < 1.0, "method.vera_dropout", "must be in [0, 1)", self.vera_dropout)
        check(self.d_initial > 0, "method.d_initial", "must be > 0", self.d_initial)


def build(cfg: VeraSchema, ctx: BuildContext) -> Any:
    from peft import VeraConfig

    cfg.check_targets(ctx.model)
    # the shared matrices are saved with the adapter, so that it loads without the seed's generator
    return VeraConfig(task_type=ctx.task.peft_task_type, save_projection=True, **peft_kwargs(cfg))


register_method(
    "vera", VeraSchema, build,
    trains="two scaling vectors per targeted layer around one pair of frozen random matrices",
    capabilities=Capabilities(mergeable=True),
)
