"""Multiplicative, orthogonal updates: the layer's weight is rotated rather than added to, which
keeps the angles between its neurons (hyperspherical energy).

  OFT (Qiu et al., 2023): a block-diagonal orthogonal matrix (Cayley parametrised) per layer;
  HRA (Yuan et al., 2024): a chain of r Householder reflections per layer.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from peftlab.config.checks import check, module_names
from peftlab.config.plugins import Capabilities, MethodSchema
from peftlab.methods.base import BuildContext, register_method
from peftlab.methods.targets import check_target_modules, peft_kwargs


@dataclass
class OftSchema(MethodSchema):
    name: str = "oft"
    oft_block_size: int = 32  # the size of each orthogonal block (the number of blocks follows)
    module_dropout: float = 0.0  # drops whole blocks (multiplicative dropout)
    coft: bool = False  # constrained OFT: keep the rotation within eps of the identity
    eps: float = 6e-5
    block_share: bool = False  # one block shared by the whole layer
    target_modules: Any = "all-linear"

    def __post_init__(self) -> None:
        check(self.oft_block_size > 0, "method.oft_block_size", "must be > 0", self.oft_block_size)
        check(0.0 <= self.module_dropout < 1.0, "method.module_dropout", "must be in [0, 1)", self.module_dropout)
        check(self.eps > 0, "method.eps", "must be > 0", self.eps)
        module_names("method.target_modules", self.target_modules)


@dataclass
class HraSchema(MethodSchema):
    name: str = "hra"
    r: int = 8  # the number of Householder reflections (even when apply_GS is false)
    apply_GS: bool = False  # orthogonalise the reflection vectors (Gram-Schmidt)
    target_modules: Any = "all-linear"

    def __post_init__(self) -> None:
        check(self.r > 0, "method.r", "must be > 0", self.r)
        module_names("method.target_modules", self.target_modules)


def build_oft(cfg: OftSchema, ctx: BuildContext) -> Any:
    from peft import OFTConfig

    check_target_modules(ctx.model, cfg.target_modules)
    return OFTConfig(task_type=ctx.task.peft_task_type, r=0, **peft_kwargs(cfg))


def build_hra(cfg: HraSchema, ctx: BuildContext) -> Any:
    from peft import HRAConfig

    check_target_modules(ctx.model, cfg.target_modules)
    return HRAConfig(task_type=ctx.task.peft_task_type, **peft_kwargs(cfg))


register_method(
    "oft", OftSchema, build_oft,
    trains="a block-diagonal orthogonal rotation of each targeted layer's weight",
    capabilities=Capabilities(mergeable=True),
)
register_method(
    "hra", HraSchema, build_hra,
    trains="r Householder reflections of each targeted layer's weight",
    capabilities=Capabilities(mergeable=True),
)
