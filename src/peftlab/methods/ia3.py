"""(IA)^3 (Liu et al., 2022): learned vectors that rescale keys, values and feed-forward activations."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from peftlab.config.checks import check, module_names
from peftlab.config.plugins import Capabilities
from peftlab.errors import ConfigError
from peftlab.methods.base import BuildContext, register_method
from peftlab.methods.shared import TargetedSchema, check_target_modules, peft_kwargs


@dataclass
class IA3Schema(TargetedSchema):
    """null target/feed-forward modules take peft's defaults for the architecture."""

    name: str = "ia3"
    target_modules: Any = None
    feedforward_modules: Any = None  # the targets that are feed-forward layers (rescaled on their input)
    targets_may_be_null: ClassVar[bool] = True

    def __post_init__(self) -> None:
        super().__post_init__()
        module_names("method.feedforward_modules", self.feedforward_modules, nullable=True)
        check((self.target_modules is None) == (self.feedforward_modules is None), "method.feedforward_modules",
              "must be set together with method.target_modules (or both null)", self.feedforward_modules)


def build(cfg: IA3Schema, ctx: BuildContext) -> Any:
    from peft import IA3Config

    cfg.check_targets(ctx.model)
    if cfg.feedforward_modules is not None:
        check_target_modules(ctx.model, cfg.feedforward_modules, key="method.feedforward_modules")
    try:
        return IA3Config(task_type=ctx.task.peft_task_type, **peft_kwargs(cfg))
    except ValueError as err:
        raise ConfigError(f"method.feedforward_modules: {str(err).splitlines()[0]}") from None


register_method(
    "ia3", IA3Schema, build,
    trains="vectors rescaling keys, values and feed-forward activations",
    capabilities=Capabilities(mergeable=True, quantized_base=True, combinations=("linear",)),
)
