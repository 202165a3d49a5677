"""FourierFT (Gao et al., 2024): each targeted layer's update is the inverse discrete Fourier
transform of n trained spectral coefficients at fixed random frequencies; far fewer parameters
than LoRA at a similar update size."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from peftlab.config.checks import check
from peftlab.config.plugins import Capabilities
from peftlab.methods.base import BuildContext, register_method
from peftlab.methods.shared import TargetedSchema, peft_kwargs


@dataclass
class FourierftSchema(TargetedSchema):
    name: str = "fourierft"
    n_frequency: int = 1000  # trained coefficients per layer (at most the layer's in x out)
    scaling: float = 150.0  # the update's scale (the paper: 150 for LLaMA, 300 for RoBERTa)
    random_loc_seed: int = 777  # the seed of the frequencies' locations
    # false (peft's default, the paper's): the coefficients start standard-normal, so a fresh adapter
    # already changes the model; true: they start at 0 and the fresh adapter is the base
    init_weights: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        check(self.n_frequency > 0, "method.n_frequency", "must be > 0", self.n_frequency)
        check(self.scaling > 0, "method.scaling", "must be > 0", self.scaling)

    def adapter_off_differs(self) -> str:
        if self.init_weights:
            return ""
        return ("a fresh method=fourierft adapter already changes the model (method.init_weights=false, the paper's: "
                "its coefficients start standard-normal; method.init_weights=true starts them at 0)")


def build(cfg: FourierftSchema, ctx: BuildContext) -> Any:
    from peft import FourierFTConfig

    cfg.check_targets(ctx.model)
    return FourierFTConfig(task_type=ctx.task.peft_task_type, **peft_kwargs(cfg))


register_method(
    "fourierft", FourierftSchema, build,
    trains="n spectral coefficients per targeted layer (the update is their inverse 2-D DFT)",
    # a fresh adapter is the base only with method.init_weights=true (adapter_off_differs)
    capabilities=Capabilities(mergeable=True, starts_as_base=False),
)
