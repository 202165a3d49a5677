"""LN tuning (Zhao et al., 2024): train the normalisation layers' weights (and biases) only, a
few thousand parameters; the trained copies replace the originals when merged."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, List, Optional

from peftlab.config.plugins import Capabilities
from peftlab.errors import ConfigError
from peftlab.methods.base import BuildContext, register_method
from peftlab.methods.shared import TargetedSchema, peft_kwargs


@dataclass
class LnTuningSchema(TargetedSchema):
    name: str = "ln_tuning"
    target_modules: Optional[List[str]] = None  # null: every normalisation layer of the model
    targets_may_be_null: ClassVar[bool] = True


def norm_layer_names(model: Any) -> list[str]:
    """The short names of the model's normalisation layers (LayerNorm, and the RMSNorm classes of
    Llama, Qwen2, Gemma 2...): what LN tuning trains when no list is given."""
    from torch import nn

    return sorted({name.rsplit(".", 1)[-1] for name, module in model.named_modules()
                   if name and (isinstance(module, nn.LayerNorm) or type(module).__name__.endswith("Norm"))})


def build(cfg: LnTuningSchema, ctx: BuildContext) -> Any:
    from peft import LNTuningConfig

    cfg.check_targets(ctx.model)
    targets = cfg.target_modules or norm_layer_names(ctx.model)
    if not targets:
        raise ConfigError("method.target_modules: the model has no normalisation layer LN tuning could train; "
                          "name the layers to train")
    return LNTuningConfig(task_type=ctx.task.peft_task_type, **peft_kwargs(cfg, drop=("target_modules",)),
                          target_modules=targets)


register_method(
    "ln_tuning", LnTuningSchema, build,
    trains="the normalisation layers' weights (a trained copy of each)",
    capabilities=Capabilities(mergeable=True),
)
