"""LoRA (Hu et al., 2021) and its variants that peft exposes as switches: DoRA, rsLoRA."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, List, Optional

from peftlab.config.checks import check, module_names, one_of
from peftlab.config.plugins import Capabilities, MethodSchema
from peftlab.methods.base import BuildContext, register_method
from peftlab.methods.targets import check_target_modules, peft_kwargs


@dataclass
class LoraSchema(MethodSchema):
    """Low-rank adapters: W + (lora_alpha / r) B·A on the targeted layers; DoRA and rsLoRA as switches."""

    name: str = "lora"
    r: int = 8
    lora_alpha: float = 16.0
    lora_dropout: float = 0.0
    target_modules: Any = "all-linear"  # "all-linear", or a list of module names
    bias: str = "none"
    use_rslora: bool = False
    use_dora: bool = False
    modules_to_save: Optional[List[str]] = None

    def __post_init__(self) -> None:
        check(self.r > 0, "method.r", "must be > 0", self.r)
        check(self.lora_alpha > 0, "method.lora_alpha", "must be > 0", self.lora_alpha)
        check(0.0 <= self.lora_dropout < 1.0, "method.lora_dropout", "must be in [0, 1)", self.lora_dropout)
        one_of("method.bias", self.bias, ("none", "all", "lora_only"))
        module_names("method.target_modules", self.target_modules)


def build(cfg: LoraSchema, ctx: BuildContext) -> Any:
    from peft import LoraConfig

    check_target_modules(ctx.model, cfg.target_modules)
    return LoraConfig(task_type=ctx.task.peft_task_type, **peft_kwargs(cfg))


register_method(
    "lora", LoraSchema, build,
    trains="low-rank updates B·A on the targeted layers (DoRA: plus a magnitude vector)",
    capabilities=Capabilities(mergeable=True, quantized_base=True),
)
