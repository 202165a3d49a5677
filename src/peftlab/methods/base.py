"""The method registry, and the one place that wraps a backbone and decides what trains.

A method module (one per family: ``lora.py``, ``ia3.py``, ``prompt_learning.py``, ``full.py``)
defines its schema, its builder and its checks, and ends with ``register_method(...)``; the
package imports every module it holds, so adding a method is one module and one
``conf/method/<name>.yaml`` (docs/adding-a-method.md).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Dict, Iterable, Optional

from peftlab.config.plugins import Capabilities, MethodSchema, method_schema, register_method_schema
from peftlab.errors import ConfigError

if TYPE_CHECKING:  # torch loads with the first model, not with the registry
    import torch
    from torch import nn


@dataclass(frozen=True)
class BuildContext:
    """What a builder may look at: the task, the backbone, its tokenizer and where it loads from.
    ``meta``: the backbone lives on the meta device (counting parameters): nothing may read weights."""

    task: Any  # a peftlab.tasks.Task
    model: nn.Module
    tokenizer: Any = None
    path: Optional[str] = None
    meta: bool = False
    # n -> n training batches (model inputs), the same on every process and apart from the training
    # order: for initialisations that look at data (LoRA's init=eva); None where there is no data
    batches: Optional[Callable[[int], Iterable[dict[str, Any]]]] = None


@dataclass(frozen=True)
class MethodSpec:
    name: str
    schema: type[MethodSchema]
    build: Optional[Callable[[Any, BuildContext], Any]]  # (schema, context) -> peft config; None: no wrapper
    trains: str  # what trains, in a few words (the capability table)
    capabilities: Capabilities
    # (peft model, schema, context) -> None: sets the initial values of what trains, after wrapping (also on
    # the meta device, ``context.meta``, where nothing may read weights)
    initialise: Optional[Callable[[Any, Any, BuildContext], None]] = None
    hooks: MethodHooks = None  # type: ignore[assignment]  (register_method sets it)


@dataclass(frozen=True)
class MethodHooks:
    """What a method asks of the training loop beyond its forward pass. The LightningModule and the
    job call these without asking which method it is; each is optional.

    ``after_step(model, step)``: after every optimizer step, with the step's gradients still in place
    (AdaLoRA's rank allocator; ``step`` counts from 0). ``loss_term(model)``: a regulariser added
    to the training loss (AdaLoRA's orthogonality penalty). ``param_groups(model, schema, lr)``:
    the optimizer's parameter groups when they differ in learning rate (LoRA+). ``save(model,
    folder)``: writes the adapter when peft's plain ``save_pretrained`` is not the whole story
    (PiSSA's conversion back to an adapter of the original base)."""

    after_step: Optional[Callable[[Any, int], None]] = None
    loss_term: Optional[Callable[[Any], torch.Tensor]] = None
    param_groups: Optional[Callable[[Any, Any, float], list[dict[str, Any]]]] = None
    save: Optional[Callable[[Any, str], None]] = None


METHODS: Dict[str, MethodSpec] = {}


def register_method(name: str, schema: type[MethodSchema], build: Optional[Callable], trains: str,
                    capabilities: Capabilities, initialise: Optional[Callable] = None,
                    not_mergeable: str = "", hooks: Optional[MethodHooks] = None) -> MethodSpec:
    """Add a method: ``method=<name>`` then validates against ``schema`` (also stored in Hydra's
    ConfigStore as ``schema/method/<name>``) and ``build`` turns it into a peft config."""
    if name in METHODS:
        raise ValueError(f"method {name!r} is registered twice")
    hooks = hooks or MethodHooks()
    if capabilities.per_step_hook != (hooks.after_step is not None):
        raise ValueError(f"method {name!r}: capabilities.per_step_hook must say whether it has hooks.after_step")
    schema.capabilities = capabilities
    schema.not_mergeable = not_mergeable
    register_method_schema(name, schema)
    METHODS[name] = MethodSpec(name, schema, build, trains, capabilities, initialise, hooks)
    return METHODS[name]


def method_spec(name: str) -> MethodSpec:
    method_schema(name)  # the one message for an unknown method
    return METHODS[name]


def peft_config_for(cfg: MethodSchema, ctx: BuildContext) -> Any:
    """The method's peft config (None for methods without a peft wrapper); raises ConfigError for
    what cannot fit the backbone (a target module it does not have, an init text too short...)."""
    spec = method_spec(cfg.name)
    return None if spec.build is None else spec.build(cfg, ctx)


def apply_method(backbone: nn.Module, cfg: MethodSchema, ctx: BuildContext,
                 init_adapter: Optional[str] = None) -> nn.Module:
    """Wrap ``backbone`` for ``cfg`` (a peft model, or the backbone itself when the method has no
    wrapper) and set what trains. The backbone is modified in place by peft. ``init_adapter``: start
    from that saved adapter (it must be of the same method) instead of a fresh one."""
    spec = method_spec(cfg.name)
    peft_config = peft_config_for(cfg, ctx)
    if peft_config is None:
        if init_adapter:
            raise ConfigError(f"init_adapter: method={cfg.name} has no adapter to start from")
        model = backbone
    elif init_adapter:
        model = _load_adapter(backbone, peft_config, cfg.name, init_adapter)
    else:
        from peft import get_peft_model

        try:
            model = get_peft_model(backbone, peft_config)
        except (ValueError, TypeError) as err:  # peft's own checks, e.g. an unsupported module type
            raise ConfigError(f"method ({cfg.name}): {str(err).splitlines()[0]}") from err
        if spec.initialise is not None:  # on the meta device too: an initialise that reads weights skips it
            spec.initialise(model, cfg, ctx)
    set_trainable(model, spec)
    return model


def _load_adapter(backbone: nn.Module, peft_config: Any, method: str, path: str) -> nn.Module:
    """``init_adapter``: a finished run's adapter (or an adapter folder of its own), of this method's kind."""
    from peftlab.runs.adapters import load_adapter
    from peftlab.runs.config import read_adapter_config, read_source_adapter

    read_source_adapter(path, "init_adapter")
    saved = read_adapter_config(Path(path).expanduser(), "init_adapter")
    kind = getattr(peft_config.peft_type, "value", peft_config.peft_type)
    if saved.get("peft_type") != kind:
        raise ConfigError(f"init_adapter: {path} is a {saved.get('peft_type')} adapter; method={method} trains {kind}")
    if getattr(peft_config, "is_prompt_learning", False):
        raise ConfigError(f"init_adapter: {path} is a {kind} adapter, which peft loads frozen only: a run cannot "
                          f"train on from it (method={method} starts fresh; its reference can be the base)")
    return load_adapter(backbone, path, "init_adapter", trainable=True)


def set_trainable(model: nn.Module, spec: MethodSpec) -> None:
    """The one place that decides which parameters train: every weight for a method without a
    peft wrapper (full fine-tuning); otherwise what peft marked trainable (adapters, plus the task
    head through ``modules_to_save``)."""
    if spec.build is None:
        for p in model.parameters():
            p.requires_grad_(True)
    if not any(p.requires_grad for p in model.parameters()):
        raise ConfigError(f"method ({spec.name}): no parameter is trainable")


def save_adapter(model: nn.Module, cfg: MethodSchema, folder: Any, **kwargs: Any) -> None:
    """Write the trained adapter (the whole model for full fine-tuning) to ``folder``: peft's
    ``save_pretrained``, or the method's own ``save`` hook around it."""
    hook = method_spec(cfg.name).hooks.save
    if hook is not None:
        hook(model, str(folder), **kwargs)
    else:
        model.save_pretrained(folder, **kwargs)


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
