"""Trainable tokens (peft): train the embedding rows of a few chosen tokens and nothing else, the
lean way to teach a model the tokens of a chat template or newly added ones (peft keeps a tied output
head in step with the rows)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, List, Optional

from peftlab.config.checks import check
from peftlab.config.plugins import Capabilities, MethodSchema
from peftlab.errors import ConfigError
from peftlab.methods.base import BuildContext, register_method


@dataclass
class TrainableTokensSchema(MethodSchema):
    name: str = "trainable_tokens"
    # the tokens whose rows train, each one token of the tokenizer; null: its special tokens (the ones
    # a chat template writes: <|im_start|>, <|im_end|>, ...)
    tokens: Optional[List[str]] = None

    def __post_init__(self) -> None:
        check(self.tokens is None or (len(self.tokens) > 0 and all(isinstance(t, str) and t for t in self.tokens)),
              "method.tokens", "must be null or a non-empty list of tokens", self.tokens)


def token_ids(cfg: TrainableTokensSchema, tokenizer: Any) -> list[int]:
    if cfg.tokens is None:
        return sorted(set(tokenizer.all_special_ids))
    ids = []
    for token in cfg.tokens:
        found = tokenizer.convert_tokens_to_ids(token)
        if found is None or found == tokenizer.unk_token_id and token != tokenizer.unk_token:
            raise ConfigError(f"method.tokens: {token!r} is not a token of the tokenizer (each entry must be one "
                              "token, as the tokenizer writes it)")
        ids.append(found)
    return sorted(set(ids))


def build(cfg: TrainableTokensSchema, ctx: BuildContext) -> Any:
    from peft import TrainableTokensConfig

    embedding = ctx.model.get_input_embeddings()
    name = next(n for n, m in ctx.model.named_modules() if m is embedding)
    ids, rows = token_ids(cfg, ctx.tokenizer), embedding.weight.shape[0]
    outside = [i for i in ids if i >= rows]
    if cfg.tokens is None:  # a special token the tokenizer holds beyond the model's rows (a pad it added) cannot train
        ids = [i for i in ids if i < rows]
        if not ids:
            raise ConfigError("method.tokens: the tokenizer's special tokens have no row in the model's embedding; "
                              "name the tokens to train")
    elif outside:
        raise ConfigError(f"method.tokens: token ids {outside} are outside the model's {rows} embedding rows")
    return TrainableTokensConfig(task_type=ctx.task.peft_task_type, token_indices=ids,
                                 target_modules=[name.rsplit(".", 1)[-1]])


register_method(
    "trainable_tokens", TrainableTokensSchema, build,
    trains="the embedding rows of chosen tokens (default: the special tokens)",
    # peft trains no classification head beside trainable tokens (it has no modules_to_save): language
    # models only
    capabilities=Capabilities(mergeable=True, meta_device=False, language_models_only=True),
)
