"""(IA)^3 (Liu et al., 2022): learned vectors that rescale keys, values and feed-forward activations."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from peftlab.config.checks import check, module_names
from peftlab.config.plugins import Capabilities, MethodSchema
from peftlab.errors import ConfigError
from peftlab.methods.base import BuildContext, register_method
from peftlab.methods.targets import check_target_modules, peft_kwargs


@dataclass
class IA3Schema(MethodSchema):
    """null target/feed-forward modules take peft's defaults for the architecture."""

    name: str = "ia3"
    target_modules: Any = None
    feedforward_modules: Any = None

    def __post_init__(self) -> None:
        module_names("method.target_modules", self.target_modules, nullable=True)
        module_names("method.feedforward_modules", self.feedforward_modules, nullable=True)
        check((self.target_modules is None) == (self.feedforward_modules is None), "method.feedforward_modules",
              "must be set together with method.target_modules (or both null)", self.feedforward_modules)


def build(cfg: IA3Schema, ctx: BuildContext) -> Any:
    from peft import IA3Config

    if cfg.target_modules is not None:
        check_target_modules(ctx.model, cfg.target_modules)
        check_target_modules(ctx.model, cfg.feedforward_modules, key="method.feedforward_modules")
    try:
        return IA3Config(task_type=ctx.task.peft_task_type, **peft_kwargs(cfg))
    except ValueError as err:
        raise ConfigError(f"method.feedforward_modules: {str(err).splitlines()[0]}") from None


register_method(
    "ia3", IA3Schema, build,
    trains="vectors rescaling keys, values and feed-forward activations",
    capabilities=Capabilities(mergeable=True, quantized_base=True),
)
