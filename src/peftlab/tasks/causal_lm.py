"""Causal language modelling: prompt -> answer text. Loss on the answer tokens only; exact match of
greedy generations on the test split."""

from __future__ import annotations

from typing import Any, Callable

import torch
import torch.nn.functional as F
from transformers import GenerationConfig

from peftlab.data.collators import CausalLMCollator
from peftlab.data.tokenize import IGNORE_INDEX, PromptFormat, encode
from peftlab.tasks.base import Task, register_task
from peftlab.tasks.heads import answer_logits
from peftlab.tasks.metrics import ExactMatch, SplitMetrics, perplexity


def end_tokens(model: torch.nn.Module, tokenizer: Any) -> list[int]:
    """Every token that ends a generation: the tokenizer's end token and the model's generation
    config's (a list for many chat models, e.g. end-of-turn and end-of-text)."""
    ids = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    ids = [ids] if isinstance(ids, int) else list(ids or [])
    if tokenizer.eos_token_id is not None:
        ids.append(tokenizer.eos_token_id)
    return sorted(set(ids))


@torch.no_grad()
def generate(model: torch.nn.Module, tokenizer: Any, input_ids: torch.Tensor, attention_mask: torch.Tensor,
             max_new_tokens: int) -> list[str]:
    """Batched greedy decoding of left-padded prompts with the KV cache; the continuations, stripped."""
    config = GenerationConfig(max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tokenizer.pad_token_id,
                              eos_token_id=end_tokens(model, tokenizer))
    out = model.generate(input_ids=input_ids, attention_mask=attention_mask, generation_config=config)
    return [t.strip() for t in tokenizer.batch_decode(out[:, input_ids.shape[1]:], skip_special_tokens=True)]


@register_task
class CausalLMTask(Task):
    name = "causal_lm"
    peft_task_type = "CAUSAL_LM"
    generative = True
    primary_metric = "exact_match"
    metric_names = ("exact_match", "loss", "perplexity")
    probe_name = "greedy generations"

    @classmethod
    def auto_class(cls) -> Any:
        from transformers import AutoModelForCausalLM

        return AutoModelForCausalLM

    checkpoint_class = auto_class  # the LM head is part of the pretrained model

    def encoder(self, tokenizer: Any) -> Callable[[dict[str, Any], str], dict[str, Any]]:
        d = self.data
        fmt = PromptFormat.for_tokenizer(tokenizer, d.prompt_format, d.system_prompt)

        def encode_record(row: dict[str, Any], where: str) -> dict[str, Any]:
            return encode(tokenizer, fmt, str(row[d.prompt_field]), str(row[d.response_field]), d.max_length)

        return encode_record

    def collator(self, tokenizer: Any, evaluation: bool) -> Callable:
        return CausalLMCollator(tokenizer.pad_token_id, generation=evaluation)

    def loss(self, model, batch) -> tuple[torch.Tensor, torch.Tensor]:
        logits, targets = answer_logits(model, batch)
        return F.cross_entropy(logits, targets, reduction="sum"), targets.new_tensor(len(targets))

    def metrics(self, test: bool) -> SplitMetrics:
        return SplitMetrics({"exact_match": ExactMatch()} if test else None, derived=perplexity)

    def evaluate(self, model, tokenizer, batch, metrics: SplitMetrics) -> list[dict[str, Any]]:
        metrics.update_loss(*self.loss(model, batch))
        if "exact_match" not in metrics.names:
            return []
        predictions = self.probe(model, tokenizer, batch)
        metrics.task["exact_match"].update(predictions, batch["references"])
        return [{"prediction": p, "reference": r, "correct": p.strip() == r.strip()}
                for p, r in zip(predictions, batch["references"], strict=True)]

    def probe(self, model, tokenizer, batch) -> list[str]:
        return generate(model, tokenizer, batch["gen_input_ids"], batch["gen_attention_mask"],
                        self.data.max_new_tokens)

    @torch.no_grad()
    def verification_logits(self, model, batch) -> dict[str, torch.Tensor]:
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.float()
        return {"all": logits[batch["attention_mask"].bool()],
                "answer": logits[:, :-1][batch["labels"][:, 1:] != IGNORE_INDEX]}
