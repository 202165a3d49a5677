"""Prompt learning: prefix tuning, prompt tuning and P-tuning. Each trains virtual tokens that the
frozen model sees as extra inputs (prefix tuning: as extra keys and values in every layer), so none
of them merges into the base weights; the adapter folder is the deployable artefact."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

from peftlab.config.checks import check, one_of
from peftlab.config.plugins import Capabilities, MethodSchema
from peftlab.errors import ConfigError
from peftlab.methods.base import BuildContext, register_method
from peftlab.methods.shared import peft_kwargs

NOT_MERGEABLE = "its virtual tokens are extra inputs, not weight updates"


def _check_virtual_tokens(n: int) -> None:
    check(n > 0, "method.num_virtual_tokens", "must be > 0", n)


def check_positions(n: int, ctx: BuildContext) -> None:
    """Virtual tokens take positions: with the longest example they must fit the model's."""
    config = ctx.model.config
    limit = getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None)
    data = getattr(ctx.task, "data", None)
    if limit and data is not None and n + data.max_length > limit:
        raise ConfigError(f"method.num_virtual_tokens={n} + data.max_length={data.max_length} exceeds the "
                          f"{limit} positions of the model: lower one of them")


def _check_init_text(init: str, text: Optional[str]) -> None:
    one_of("method.init", init, ("random", "text"))
    if init == "text":
        check(bool(text and text.strip()), "method.init_text", "must be a non-empty text when method.init=text", text)


# -------------------------------------------------------------------------------- prefix tuning
@dataclass
class PrefixSchema(MethodSchema):
    """Prefix tuning (Li & Liang, 2021): trained key/value prefixes in every layer; with
    ``prefix_projection`` an MLP (hidden ``encoder_hidden_size``) produces them during training."""

    name: str = "prefix"
    num_virtual_tokens: int = 20
    prefix_projection: bool = False
    encoder_hidden_size: Optional[int] = None  # null: the model's hidden size
    init: str = "random"  # random | text: the keys and values the frozen model computes on init_text
    init_text: Optional[str] = None

    def __post_init__(self) -> None:
        _check_virtual_tokens(self.num_virtual_tokens)
        h = self.encoder_hidden_size
        check(h is None or h > 0, "method.encoder_hidden_size", "must be > 0 or null", h)
        _check_init_text(self.init, self.init_text)
        if self.init == "text":
            check(not self.prefix_projection, "method.prefix_projection",
                  "must be false when method.init=text (with the projection an MLP makes the prefixes)",
                  self.prefix_projection)

    def check(self, run: Any) -> list[str]:
        problems = super().check(run)
        model = getattr(run, "model", None)
        if model is not None and model.gradient_checkpointing:
            problems.append("method=prefix cannot train with model.gradient_checkpointing=true: peft's prefix tuning "
                            "feeds its prefixes as a KV cache, which gradient checkpointing does not support")
        return problems


def build_prefix(cfg: PrefixSchema, ctx: BuildContext) -> Any:
    from peft import PrefixTuningConfig

    check_positions(cfg.num_virtual_tokens, ctx)
    if cfg.init == "text" and not ctx.meta:
        if not ctx.task.generative:
            raise ConfigError(f"method.init=text: prefixes are computed by a causal LM's forward pass; "
                              f"this task is {ctx.task.name}")
        n = len(ctx.tokenizer(cfg.init_text, add_special_tokens=False).input_ids)
        if n < cfg.num_virtual_tokens:
            raise ConfigError(f"method.init_text: {n} tokens, fewer than method.num_virtual_tokens="
                              f"{cfg.num_virtual_tokens}: it must give a key and value for every prefix position")
    kwargs = peft_kwargs(cfg, drop=("init", "init_text"))
    if kwargs["encoder_hidden_size"] is None:
        kwargs["encoder_hidden_size"] = ctx.model.config.hidden_size
    return PrefixTuningConfig(task_type=ctx.task.peft_task_type, **kwargs)


def initialise_prefix(model: Any, cfg: PrefixSchema, ctx: BuildContext) -> None:
    """``init=text``: the prefixes start as the keys and values the frozen model computes on
    ``init_text`` (as a system turn when the tokenizer has a chat template), so that training
    starts from the model's behaviour with real words before the input, not from random vectors in
    every layer (Li & Liang, 2021, section 7.2: initialisation with real words)."""
    if cfg.init != "text" or ctx.meta:
        return
    from peft import initialize_kv_prefix_from_text

    initialize_kv_prefix_from_text(model, ctx.tokenizer, text=cfg.init_text,
                                   use_chat_template=bool(getattr(ctx.tokenizer, "chat_template", None)))


register_method(
    "prefix", PrefixSchema, build_prefix, initialise=initialise_prefix,
    trains="key/value prefixes in every layer (with projection: an MLP that makes them)",
    capabilities=Capabilities(mergeable=False, quantized_base=True, starts_as_base=False),
    not_mergeable=NOT_MERGEABLE,
)


# -------------------------------------------------------------------------------- prompt tuning
@dataclass
class PromptSchema(MethodSchema):
    """Prompt tuning (Lester et al., 2021): trained virtual-token embeddings before the input,
    initialised at random or from the embeddings of ``init_text``."""

    name: str = "prompt"
    num_virtual_tokens: int = 20
    init: str = "random"  # random | text
    init_text: Optional[str] = None

    def __post_init__(self) -> None:
        _check_virtual_tokens(self.num_virtual_tokens)
        _check_init_text(self.init, self.init_text)


def build_prompt(cfg: PromptSchema, ctx: BuildContext) -> Any:
    from peft import PromptTuningConfig

    check_positions(cfg.num_virtual_tokens, ctx)
    kwargs: dict[str, Any] = {"num_virtual_tokens": cfg.num_virtual_tokens, "prompt_tuning_init": "RANDOM"}
    if cfg.init == "text" and not ctx.meta:  # on the meta device: the same shapes, no tokenizer needed
        ids = ctx.tokenizer(cfg.init_text, add_special_tokens=False).input_ids
        vocab = ctx.model.get_input_embeddings().num_embeddings
        bad = [i for i in ids if not 0 <= i < vocab]
        if not ids or bad:
            raise ConfigError(f"method.init_text: {cfg.init_text!r} gives token ids {bad or ids} outside the "
                              f"model's vocabulary of {vocab} embeddings")
        kwargs.update(prompt_tuning_init="TEXT", prompt_tuning_init_text=cfg.init_text,
                      tokenizer_name_or_path=ctx.path)
    return PromptTuningConfig(task_type=ctx.task.peft_task_type, **kwargs)


register_method(
    "prompt", PromptSchema, build_prompt,
    trains="virtual-token embeddings before the input",
    capabilities=Capabilities(mergeable=False, quantized_base=True, starts_as_base=False),
    not_mergeable=NOT_MERGEABLE,
)


# ------------------------------------------------------------------------------------ P-tuning
@dataclass
class PtuningSchema(MethodSchema):
    """P-tuning (Liu et al., 2021): virtual-token embeddings produced by a trained MLP or LSTM
    prompt encoder (peft's PromptEncoder)."""

    name: str = "ptuning"
    num_virtual_tokens: int = 20
    encoder_reparameterization_type: str = "MLP"  # MLP | LSTM
    encoder_hidden_size: int = 128
    encoder_num_layers: int = 2
    encoder_dropout: float = 0.0

    def __post_init__(self) -> None:
        _check_virtual_tokens(self.num_virtual_tokens)
        one_of("method.encoder_reparameterization_type", self.encoder_reparameterization_type, ("MLP", "LSTM"))
        check(self.encoder_hidden_size > 0, "method.encoder_hidden_size", "must be > 0", self.encoder_hidden_size)
        check(self.encoder_num_layers > 0, "method.encoder_num_layers", "must be > 0", self.encoder_num_layers)
        check(0 <= self.encoder_dropout < 1, "method.encoder_dropout", "must be in [0, 1)", self.encoder_dropout)


def build_ptuning(cfg: PtuningSchema, ctx: BuildContext) -> Any:
    from peft import PromptEncoderConfig

    check_positions(cfg.num_virtual_tokens, ctx)
    return PromptEncoderConfig(task_type=ctx.task.peft_task_type, **peft_kwargs(cfg))


register_method(
    "ptuning", PtuningSchema, build_ptuning,
    trains="virtual-token embeddings made by an MLP/LSTM prompt encoder",
    capabilities=Capabilities(mergeable=False, quantized_base=True, starts_as_base=False),
    not_mergeable=NOT_MERGEABLE,
)
