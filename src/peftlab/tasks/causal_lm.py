"""Causal language modelling: prompt -> answer text, or conversations (``data.format``: messages,
sharegpt, ...). Loss on the answer tokens only (every assistant turn's, or the last's); exact match of
greedy generations on the test split (of a conversation: its last answer, given the turns before it).

torch and transformers load inside the methods: the registry is read when a config is validated,
and a bad config fails before they load."""

from __future__ import annotations

from typing import Any, Callable, Optional

from peftlab.data.conversations import encode_turns
from peftlab.data.formats import DEFAULT_FORMAT, conversation, reads_every_format
from peftlab.data.tokenize import IGNORE_INDEX, PromptFormat
from peftlab.errors import DataError
from peftlab.tasks.base import Task, register_task


class GeneratesText:
    """What every task whose model is a causal LM shares: the model class, greedy generation as the
    probe, exact match of greedy answers, answers to a user's prompts, and the logits a merge
    compares (every position, and the answer positions)."""

    data: Any
    generative = True
    probe_name = "greedy generations"

    @classmethod
    def auto_class(cls) -> Any:
        from transformers import AutoModelForCausalLM

        return AutoModelForCausalLM

    checkpoint_class = auto_class  # the LM head is part of the pretrained model

    def probe(self, model, tokenizer, batch) -> list[str]:
        from peftlab.tasks.generation import generate

        return generate(model, tokenizer, batch["gen_input_ids"], batch["gen_attention_mask"],
                        self.data.max_new_tokens)

    def score_generations(self, model, tokenizer, batch, exact_match, generations=None) -> list[dict[str, Any]]:
        """Greedy answers of the counted rows (``generations``, or the probe's) against their
        references, into ``exact_match``."""
        keep = batch["counted"].tolist()
        generations = self.probe(model, tokenizer, batch) if generations is None else generations
        pairs = [(p, r) for p, r, k in zip(generations, batch["references"], keep, strict=True) if k]
        exact_match.update([p for p, _ in pairs], [r for _, r in pairs])
        return [{"prediction": p, "reference": r, "correct": p.strip() == r.strip()} for p, r in pairs]

    def answer(self, model, tokenizer, prompts, options, streamer=None):
        from peftlab.tasks.generation import answer_prompts

        fmt = PromptFormat.for_tokenizer(tokenizer, self.data.prompt_format, self.data.system_prompt)
        answers = answer_prompts(model, tokenizer, fmt, prompts, options, streamer)
        return [{"prompt": p, "answer": a} for p, a in zip(prompts, answers, strict=True)]

    def verification_logits(self, model, batch):
        import torch

        with torch.no_grad():
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.float()
        return {"all": logits[batch["attention_mask"].bool()],
                "answer": logits[:, :-1][batch["labels"][:, 1:] != IGNORE_INDEX]}


@register_task
class CausalLMTask(GeneratesText, Task):
    name = "causal_lm"
    peft_task_type = "CAUSAL_LM"
    primary_metric = "exact_match"
    metric_names = ("exact_match", "loss", "perplexity")
    probe_setup = ("tiny_llama", "dates")

    def fields(self) -> dict[str, str]:
        """Prompt -> answer records are checked as they are read; the other formats as they are encoded."""
        return super().fields() if self.data.format == DEFAULT_FORMAT else {}

    def encoder(self, tokenizer: Any) -> Callable[[dict[str, Any], str], dict[str, Any]]:
        d = self.data
        fmt = PromptFormat.for_tokenizer(tokenizer, d.prompt_format, d.system_prompt)

        def encode_record(row: dict[str, Any], where: str) -> dict[str, Any]:
            turns = conversation(row, d, where)
            try:
                return encode_turns(tokenizer, fmt, turns, d.max_length, last_only=d.loss_turns == "last")
            except DataError as err:
                raise DataError(f"{where}: {err} (data.format={d.format})") from None

        return encode_record

    def unusable(self, record: dict[str, Any], example: dict[str, Any]) -> Optional[str]:
        turns = conversation(record, self.data)
        if not next(t["content"] for t in reversed(turns) if t["role"] == "user").strip():
            return "blank prompt"
        if not turns[-1]["content"].strip():
            return "empty answer"
        if all(label == IGNORE_INDEX for label in example["labels"][1:]):
            return f"answer cut away by data.max_length={self.data.max_length}"
        return None

    def collator(self, tokenizer: Any, evaluation: bool) -> Callable:
        from peftlab.data.collators import CausalLMCollator

        return CausalLMCollator(tokenizer.pad_token_id, generation=evaluation)

    def loss(self, model, batch):
        import torch.nn.functional as F

        from peftlab.tasks.heads import answer_logits

        logits, targets = answer_logits(model, batch)
        return F.cross_entropy(logits, targets, reduction="sum"), targets.new_tensor(len(targets))

    def metrics(self, full: bool):
        from peftlab.tasks.metrics import ExactMatch, SplitMetrics, perplexity

        return SplitMetrics({"exact_match": ExactMatch()} if full else None, derived=perplexity)

    def evaluate_batch(self, model, tokenizer, batch, metrics) -> list[dict[str, Any]]:
        if "exact_match" not in metrics.names:
            metrics.update_loss(*self.loss(model, batch))
            return []
        import torch.nn.functional as F

        from peftlab.tasks.generation import score_and_generate

        logits, targets, generations = score_and_generate(model, tokenizer, batch, self.data.max_new_tokens)
        metrics.update_loss(F.cross_entropy(logits, targets, reduction="sum"), len(targets))
        return self.score_generations(model, tokenizer, batch, metrics.task["exact_match"], generations)


reads_every_format(CausalLMTask.name)
