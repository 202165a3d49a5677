"""One builder per method: a typed schema becomes a peft config and is applied to a backbone.

``METHODS`` is the registry: a method exists when it has an entry here and a
``conf/method/<name>.yaml`` (a test keeps the two in step). ``apply_method`` is the only place
that wraps a backbone, and ``set_trainable`` the only place that decides what trains.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from typing import Any, Callable, Dict, Optional, Type

import torch
from torch import nn

from peftlab.config.schema import FullSchema, LoraSchema, MethodSchema
from peftlab.errors import ConfigError

# peft task types by peftlab task type
PEFT_TASK_TYPES = {"causal_lm": "CAUSAL_LM", "seq_cls": "SEQ_CLS"}


@dataclass(frozen=True)
class MethodSpec:
    schema: Type[MethodSchema]
    build: Optional[Callable[[Any, str, nn.Module], Any]]  # (schema, task_type, backbone) -> peft config
    mergeable: bool
    summary: str


def _plain(value: Any) -> Any:
    """OmegaConf containers and tuples become plain lists (peft cannot save a ListConfig)."""
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if hasattr(value, "items"):
        return {k: _plain(v) for k, v in value.items()}
    return value


def linear_module_names(model: nn.Module) -> list[str]:
    """Short names (last path component) of the layers that adapter methods can target."""
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


def _build_lora(cfg: LoraSchema, task_type: str, backbone: nn.Module) -> Any:
    from peft import LoraConfig

    check_target_modules(backbone, cfg.target_modules)
    kwargs = asdict(cfg)
    kwargs.pop("name")
    kwargs = {k: _plain(v) for k, v in kwargs.items()}
    return LoraConfig(task_type=PEFT_TASK_TYPES[task_type], **kwargs)


METHODS: Dict[str, MethodSpec] = {
    "lora": MethodSpec(LoraSchema, _build_lora, mergeable=True,
                       summary="low-rank updates B@A added to the targeted weights"),
    "full": MethodSpec(FullSchema, None, mergeable=False, summary="every weight of the backbone"),
}


def method_spec(name: str) -> MethodSpec:
    try:
        return METHODS[name]
    except KeyError:
        raise ConfigError(f"method.name: unknown method {name!r} (known: {', '.join(sorted(METHODS))})") from None


def apply_method(backbone: nn.Module, cfg: MethodSchema, task_type: str) -> nn.Module:
    """Wrap ``backbone`` for ``cfg`` (a peft model, or the backbone itself for ``full``) and set
    what trains. The backbone is modified in place by peft."""
    spec = method_spec(cfg.name)
    if spec.build is None:
        model = backbone
    else:
        from peft import get_peft_model

        peft_config = spec.build(cfg, task_type, backbone)
        try:
            model = get_peft_model(backbone, peft_config)
        except ValueError as err:  # peft's own checks, e.g. an unsupported module type
            raise ConfigError(f"method ({cfg.name}): {str(err).splitlines()[0]}") from err
    set_trainable(model, cfg)
    return model


def set_trainable(model: nn.Module, cfg: MethodSchema) -> None:
    """The one place that decides which parameters train: every weight for ``full``; for peft
    methods, what peft marked trainable (adapters, plus ``modules_to_save``)."""
    if method_spec(cfg.name).build is None:
        for p in model.parameters():
            p.requires_grad_(True)
    if not any(p.requires_grad for p in model.parameters()):
        raise ConfigError(f"method ({cfg.name}): no parameter is trainable")


def trainable_parameters(model: nn.Module) -> list[torch.nn.Parameter]:
    return [p for p in model.parameters() if p.requires_grad]


def count_parameters(model: nn.Module) -> Dict[str, Any]:
    """Trainable and total parameter counts (shared weights counted once), as peft counts them."""
    if hasattr(model, "get_nb_trainable_parameters"):
        trainable, total = model.get_nb_trainable_parameters()
    else:
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        total = sum(p.numel() for p in model.parameters())
    return {"trainable": int(trainable), "total": int(total),
            "trainable_pct": round(100.0 * trainable / max(total, 1), 6)}
