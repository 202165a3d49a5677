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

from peftlab.config.schema import (FullSchema, IA3Schema, LoraSchema, MethodSchema, PrefixSchema, PromptSchema,
                                   PtuningSchema)
from peftlab.errors import ConfigError

# peft task types by peftlab task type
PEFT_TASK_TYPES = {"causal_lm": "CAUSAL_LM", "seq_cls": "SEQ_CLS"}


@dataclass(frozen=True)
class BuildContext:
    """What a builder may look at: the task, the backbone, its tokenizer and where it loads from."""

    task_type: str
    model: nn.Module
    tokenizer: Any = None
    path: Optional[str] = None


@dataclass(frozen=True)
class MethodSpec:
    schema: Type[MethodSchema]
    build: Optional[Callable[[Any, BuildContext], Any]]  # (schema, context) -> peft config; None: no wrapper
    mergeable: bool
    trains: str
    caveats: str = ""
    # (peft model, schema, context) -> None: sets the initial values of what trains, after wrapping
    initialise: Optional[Callable[[Any, Any, BuildContext], None]] = None


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


def _kwargs(cfg: MethodSchema, drop: tuple[str, ...] = ()) -> dict[str, Any]:
    return {k: _plain(v) for k, v in asdict(cfg).items() if k != "name" and k not in drop}


def _build_lora(cfg: LoraSchema, ctx: BuildContext) -> Any:
    from peft import LoraConfig

    check_target_modules(ctx.model, cfg.target_modules)
    return LoraConfig(task_type=PEFT_TASK_TYPES[ctx.task_type], **_kwargs(cfg))


def _build_ia3(cfg: IA3Schema, ctx: BuildContext) -> Any:
    from peft import IA3Config

    if cfg.target_modules is not None:
        check_target_modules(ctx.model, cfg.target_modules)
        check_target_modules(ctx.model, cfg.feedforward_modules, key="method.feedforward_modules")
    try:
        return IA3Config(task_type=PEFT_TASK_TYPES[ctx.task_type], **_kwargs(cfg))
    except ValueError as err:
        raise ConfigError(f"method.feedforward_modules: {str(err).splitlines()[0]}") from None


def _build_prefix(cfg: PrefixSchema, ctx: BuildContext) -> Any:
    from peft import PrefixTuningConfig

    if cfg.init == "text":
        if ctx.task_type != "causal_lm":
            raise ConfigError(f"method.init=text: prefixes are computed by a causal LM's forward pass; "
                              f"this task is {ctx.task_type}")
        n = len(ctx.tokenizer(cfg.init_text, add_special_tokens=False).input_ids) if ctx.tokenizer else 0
        if n < cfg.num_virtual_tokens:
            raise ConfigError(f"method.init_text: {n} tokens, fewer than method.num_virtual_tokens="
                              f"{cfg.num_virtual_tokens}: it must give a key and value for every prefix position")
    kwargs = _kwargs(cfg, drop=("init", "init_text"))
    if kwargs["encoder_hidden_size"] is None:
        kwargs["encoder_hidden_size"] = ctx.model.config.hidden_size
    return PrefixTuningConfig(task_type=PEFT_TASK_TYPES[ctx.task_type], **kwargs)


def _initialise_prefix(model: Any, cfg: PrefixSchema, ctx: BuildContext) -> None:
    """``init=text``: the prefixes start as the keys and values the frozen model computes on
    ``init_text`` (as a system turn when the tokenizer has a chat template), so that training
    starts from the model's behaviour with real words before the input, not from random vectors in
    every layer (Li & Liang, 2021, section 7.2: initialisation with real words)."""
    if cfg.init != "text":
        return
    from peft import initialize_kv_prefix_from_text

    initialize_kv_prefix_from_text(model, ctx.tokenizer, text=cfg.init_text,
                                   use_chat_template=bool(getattr(ctx.tokenizer, "chat_template", None)))


def _build_prompt(cfg: PromptSchema, ctx: BuildContext) -> Any:
    from peft import PromptTuningConfig

    kwargs: dict[str, Any] = {"num_virtual_tokens": cfg.num_virtual_tokens, "prompt_tuning_init": "RANDOM"}
    if cfg.init == "text":
        ids = ctx.tokenizer(cfg.init_text, add_special_tokens=False).input_ids if ctx.tokenizer else []
        vocab = ctx.model.get_input_embeddings().num_embeddings
        bad = [i for i in ids if not 0 <= i < vocab]
        if not ids or bad:
            raise ConfigError(f"method.init_text: {cfg.init_text!r} gives token ids {bad or ids} outside the "
                              f"model's vocabulary of {vocab} embeddings")
        kwargs.update(prompt_tuning_init="TEXT", prompt_tuning_init_text=cfg.init_text,
                      tokenizer_name_or_path=ctx.path)
    return PromptTuningConfig(task_type=PEFT_TASK_TYPES[ctx.task_type], **kwargs)


def _build_ptuning(cfg: PtuningSchema, ctx: BuildContext) -> Any:
    from peft import PromptEncoderConfig

    return PromptEncoderConfig(task_type=PEFT_TASK_TYPES[ctx.task_type], **_kwargs(cfg))


METHODS: Dict[str, MethodSpec] = {
    "lora": MethodSpec(LoraSchema, _build_lora, mergeable=True,
                       trains="low-rank updates B·A on the targeted layers (DoRA: plus a magnitude vector)"),
    "ia3": MethodSpec(IA3Schema, _build_ia3, mergeable=True,
                      trains="vectors rescaling keys, values and feed-forward activations"),
    "prefix": MethodSpec(PrefixSchema, _build_prefix, mergeable=False,
                         trains="key/value prefixes in every layer (with projection: an MLP that makes them)",
                         caveats="no gradient checkpointing; the adapter holds the final prefixes, not the MLP",
                         initialise=_initialise_prefix),
    "prompt": MethodSpec(PromptSchema, _build_prompt, mergeable=False,
                         trains="virtual-token embeddings before the input"),
    "ptuning": MethodSpec(PtuningSchema, _build_ptuning, mergeable=False,
                          trains="virtual-token embeddings made by an MLP/LSTM prompt encoder",
                          caveats="the adapter holds the final embeddings, not the encoder: resume from checkpoints/"),
    "full": MethodSpec(FullSchema, None, mergeable=False, trains="every weight of the backbone (the baseline)"),
}


def method_spec(name: str) -> MethodSpec:
    try:
        return METHODS[name]
    except KeyError:
        raise ConfigError(f"method.name: unknown method {name!r} (known: {', '.join(sorted(METHODS))})") from None


def peft_config_for(cfg: MethodSchema, ctx: BuildContext) -> Any:
    """The method's peft config (None for ``full``); raises ConfigError for what cannot fit."""
    spec = method_spec(cfg.name)
    return None if spec.build is None else spec.build(cfg, ctx)


def apply_method(backbone: nn.Module, cfg: MethodSchema, task_type: str, tokenizer: Any = None,
                 path: Optional[str] = None) -> nn.Module:
    """Wrap ``backbone`` for ``cfg`` (a peft model, or the backbone itself for ``full``) and set
    what trains. The backbone is modified in place by peft."""
    ctx = BuildContext(task_type, backbone, tokenizer, path)
    peft_config = peft_config_for(cfg, ctx)
    if peft_config is None:
        model = backbone
    else:
        from peft import get_peft_model

        try:
            model = get_peft_model(backbone, peft_config)
        except ValueError as err:  # peft's own checks, e.g. an unsupported module type
            raise ConfigError(f"method ({cfg.name}): {str(err).splitlines()[0]}") from err
        spec = method_spec(cfg.name)
        if spec.initialise is not None:
            spec.initialise(model, cfg, ctx)
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
