"""Multiplicative, orthogonal updates: the layer's weight is rotated rather than added to, which
keeps the angles between its neurons (hyperspherical energy).

  OFT (Qiu et al., 2023): a block-diagonal orthogonal matrix (Cayley parametrised) per layer;
  BOFT (Liu et al., 2024): a dense orthogonal matrix built as a product of sparse butterfly factors
  (each block-diagonal and permuted), so that few parameters reach every input dimension;
  HRA (Yuan et al., 2024): a chain of r Householder reflections per layer.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from peftlab.config.checks import check
from peftlab.config.plugins import Capabilities
from peftlab.methods.base import BuildContext, register_method
from peftlab.methods.shared import TargetedSchema, peft_kwargs


@dataclass
class OftSchema(TargetedSchema):
    name: str = "oft"
    oft_block_size: int = 32  # the size of each orthogonal block (the number of blocks follows)
    module_dropout: float = 0.0  # drops whole blocks (multiplicative dropout)
    coft: bool = False  # constrained OFT: keep the rotation within eps of the identity
    eps: float = 6e-5
    block_share: bool = False  # one block shared by the whole layer

    def __post_init__(self) -> None:
        super().__post_init__()
        check(self.oft_block_size > 0, "method.oft_block_size", "must be > 0", self.oft_block_size)
        check(0.0 <= self.module_dropout < 1.0, "method.module_dropout", "must be in [0, 1)", self.module_dropout)
        check(self.eps > 0, "method.eps", "must be > 0", self.eps)


@dataclass
class BoftSchema(TargetedSchema):
    name: str = "boft"
    boft_block_size: int = 4  # the size of each block of a butterfly factor (the number of blocks follows)
    # factors in the product: 1 is OFT with small blocks; m factors reach 2^(m-1) blocks further at m times the
    # parameters. More than 1 needs peft's CUDA extension (without it peft 0.21 trains one factor in silence)
    boft_n_butterfly_factor: int = 1
    boft_dropout: float = 0.0  # drops whole blocks (multiplicative dropout)

    def __post_init__(self) -> None:
        super().__post_init__()
        check(self.boft_block_size > 0 and self.boft_block_size % 2 == 0, "method.boft_block_size",
              "must be an even number > 0", self.boft_block_size)
        check(self.boft_n_butterfly_factor > 0, "method.boft_n_butterfly_factor", "must be > 0",
              self.boft_n_butterfly_factor)
        check(0.0 <= self.boft_dropout < 1.0, "method.boft_dropout", "must be in [0, 1)", self.boft_dropout)


@dataclass
class HraSchema(TargetedSchema):
    name: str = "hra"
    r: int = 8  # the number of Householder reflections (even when apply_GS is false)
    apply_GS: bool = False  # orthogonalise the reflection vectors (Gram-Schmidt)

    def __post_init__(self) -> None:
        super().__post_init__()
        check(self.r > 0, "method.r", "must be > 0", self.r)


def build_oft(cfg: OftSchema, ctx: BuildContext) -> Any:
    from peft import OFTConfig

    cfg.check_targets(ctx.model)
    return OFTConfig(task_type=ctx.task.peft_task_type, r=0, **peft_kwargs(cfg))


def build_boft(cfg: BoftSchema, ctx: BuildContext) -> Any:
    import torch
    from peft import BOFTConfig

    cfg.check_targets(ctx.model)
    if not torch.cuda.is_available():
        # peft 0.21 tries to compile its CUDA extension for every layer it wraps, warns twice each time,
        # then builds one butterfly factor whatever the config says (and saves the config's number, so
        # a GPU would reload another model): peftlab refuses that, and tells peft there is no extension
        check(cfg.boft_n_butterfly_factor == 1, "method.boft_n_butterfly_factor",
              "must be 1 without a GPU (peft builds more butterfly factors only with its CUDA extension)",
              cfg.boft_n_butterfly_factor)
        no_cuda_extension()
    return BOFTConfig(task_type=ctx.task.peft_task_type, **peft_kwargs(cfg))


def no_cuda_extension() -> None:
    """Tell peft's BOFT layers that its CUDA extension is absent, so that they stop trying to build it
    (tests/test_methods.py tells when peft no longer needs this)."""
    from peft.tuners.boft import layer

    layer._FBD_CUDA = False


def build_hra(cfg: HraSchema, ctx: BuildContext) -> Any:
    from peft import HRAConfig

    cfg.check_targets(ctx.model)
    return HRAConfig(task_type=ctx.task.peft_task_type, **peft_kwargs(cfg))


register_method(
    "oft", OftSchema, build_oft,
    trains="a block-diagonal orthogonal rotation of each targeted layer's weight",
    capabilities=Capabilities(mergeable=True),
)
register_method(
    "boft", BoftSchema, build_boft,
    trains="a product of butterfly-structured orthogonal blocks rotating each targeted layer's weight",
    capabilities=Capabilities(mergeable=True),
)
register_method(
    "hra", HraSchema, build_hra,
    trains="r Householder reflections of each targeted layer's weight",
    capabilities=Capabilities(mergeable=True),
)
