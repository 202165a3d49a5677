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

    def combine_refusal(self, combination_type: str, weights: list[float]) -> str:
        """IA3's combination is the weighted sum of its scaling vectors (each near 1): a negative
        weight flips the sign of the activations it scales, and weights that do not sum to 1 scale
        every targeted activation by about their sum."""
        found = super().combine_refusal(combination_type, weights)
        if not found and any(w < 0 for w in weights):
            found = ("method=ia3 adapters scale activations: a negative weight flips their sign instead of "
                     "removing a skill")
        if not found and abs(sum(weights) - 1) > 1e-6:
            found = (f"method=ia3 adapters combine as sum(w * vector), vectors near 1: weights summing to "
                     f"{sum(weights):g} scale every targeted activation by about that much (give weights "
                     f"that sum to 1, such as weights=[{','.join(['%g' % (1 / len(weights))] * len(weights))}])")
        return found


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
