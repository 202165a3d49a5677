"""What the method modules share: the schema of a method that adapts chosen layers
(``target_modules``), the check that those layers exist, and plain peft arguments."""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from peftlab.config.checks import module_names
from peftlab.config.plugins import MethodSchema
from peftlab.errors import ConfigError

if TYPE_CHECKING:
    from torch import nn


def plain(value: Any) -> Any:
    """OmegaConf containers and tuples become plain lists and dicts (peft cannot save a ListConfig)."""
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if hasattr(value, "items"):
        return {k: plain(v) for k, v in value.items()}
    return value


def peft_kwargs(cfg: MethodSchema, drop: tuple[str, ...] = ()) -> dict[str, Any]:
    """The schema's fields as keyword arguments of a peft config (``name`` and ``drop`` left out)."""
    return {k: plain(v) for k, v in asdict(cfg).items() if k != "name" and k not in drop}


def linear_module_names(model: nn.Module) -> list[str]:
    """Short names (last path component) of the layers that adapter methods can target."""
    from torch import nn

    names = set()
    for name, module in model.named_modules():
        if isinstance(module, (nn.Linear, nn.Embedding, nn.Conv1d)) or type(module).__name__ == "Conv1D":
            names.add(name.rsplit(".", 1)[-1])
    return sorted(names)


def check_target_modules(model: nn.Module, target_modules: Any, key: str = "method.target_modules") -> None:
    """Fail with the model's module names when a requested target matches nothing."""
    if target_modules == "all-linear":
        return
    full_names = [n for n, _ in model.named_modules() if n]
    if isinstance(target_modules, str):  # peft treats a string as a regular expression
        if not any(re.fullmatch(target_modules, n) for n in full_names):
            raise ConfigError(
                f"{key}: the pattern {target_modules!r} matches no module of the model "
                f"(its targetable modules: {', '.join(linear_module_names(model))})"
            )
        return
    missing = [t for t in target_modules if not any(n == t or n.endswith("." + t) for n in full_names)]
    if missing:
        raise ConfigError(
            f"{key}: no module named {', '.join(map(repr, missing))} in the model "
            f"(its targetable modules: {', '.join(linear_module_names(model))})"
        )


@dataclass
class TargetedSchema(MethodSchema):
    """A method that adapts chosen layers of the model. ``target_modules``: ``all-linear`` (every
    linear layer but the output head), a regular expression over full module names, or a list of
    module names (``[q_proj, v_proj]``); where ``targets_may_be_null``, null leaves the choice to
    the method (peft's defaults for the architecture)."""

    target_modules: Any = "all-linear"
    targets_may_be_null: ClassVar[bool] = False

    def __post_init__(self) -> None:
        module_names("method.target_modules", self.target_modules, nullable=self.targets_may_be_null)

    def check_targets(self, model: nn.Module) -> None:
        """Stop with the model's targetable module names when a target matches nothing."""
        if self.target_modules is not None:
            check_target_modules(model, self.target_modules)
