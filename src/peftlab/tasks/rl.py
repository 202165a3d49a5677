"""Prompts whose answers rewards judge: the data and the measurement of online RL.

A record is a prompt (and, where there is one, its reference answer and any other fields the
rewards read). The rows carry the whole prompt, encoded as the policy answers it, and the row's
other fields for the reward functions (TRL's convention). How such a run trains (sample, score,
advantages, reference, loss) is the ``online_rl`` objective's (objectives/online_rl.py). Evaluation is
SFT's: greedy exact match and the loss of the reference answers on the test split.
"""

from __future__ import annotations

from typing import Any, Callable, Optional

from peftlab.tasks.base import register_task
from peftlab.tasks.causal_lm import CausalLMTask
from peftlab.tasks.rewards import reward_values  # noqa: F401  (registers the shipped rewards with the config checks)


@register_task
class RLTask(CausalLMTask):
    name = "rl"
    takes_rl = True
    probe_setup = None

    def __init__(self, data, labels=None, run=None):
        super().__init__(data, labels, run)
        from peftlab.config.rl import RLSchema

        self.settings = getattr(run, "rl", None) or RLSchema(name="grpo")
        if self.settings.max_new_tokens is None:  # what the run samples with, recorded and read by the rewards
            self.settings.max_new_tokens = data.max_new_tokens

    @property
    def max_new_tokens(self) -> int:
        return self.settings.max_new_tokens

    def check(self, run: Any) -> list[str]:
        problems = super().check(run)
        if self.max_new_tokens >= run.data.max_length:
            problems.append(f"rl.max_new_tokens={self.max_new_tokens} leaves no room for a prompt within "
                            f"data.max_length={run.data.max_length}")
        return problems

    # -------------------------------------------------------------------------------- the data
    def encoder(self, tokenizer: Any) -> Callable[[dict[str, Any], str], dict[str, Any]]:
        from peftlab.data.tokenize import PromptFormat

        encode_record = super().encoder(tokenizer)
        fmt = PromptFormat.for_tokenizer(tokenizer, self.data.prompt_format, self.data.system_prompt)

        def encode_prompt(row: dict[str, Any], where: str) -> dict[str, Any]:
            prompt = str(row[self.data.prompt_field])
            whole = tokenizer(fmt.prompt_text(tokenizer, prompt), add_special_tokens=not fmt.use_chat).input_ids
            # the prompt is never cut: the policy answers it whole (unusable() refuses one with no room left)
            # the row's other fields go to the reward functions by name (TRL's convention)
            fields = {k: v for k, v in row.items() if k != self.data.prompt_field}
            return {**encode_record(row, where), "prompt": prompt, "prompt_ids": whole, "fields": fields}

        return encode_prompt

    def unusable(self, record: dict[str, Any], example: dict[str, Any]) -> Optional[str]:
        room = self.data.max_length - len(example["prompt_ids"])  # the whole prompt (encoder)
        if room < self.max_new_tokens:
            return (f"prompt leaves no room for {self.max_new_tokens} new tokens (rl.max_new_tokens) within "
                    f"data.max_length={self.data.max_length}")
        if example["truncated"]:  # the test loss scores the reference answer after the whole prompt
            return f"prompt and reference answer longer than data.max_length={self.data.max_length}"
        return super().unusable(record, example)

    def collator(self, tokenizer: Any, evaluation: bool) -> Callable:
        from peftlab.data.collators import CausalLMCollator

        collate = CausalLMCollator(tokenizer.pad_token_id, generation=True)  # training samples from the prompts too
        return lambda examples: {**collate(examples), "prompts": [e["prompt"] for e in examples],
                                 "fields": [e["fields"] for e in examples]}

    # ------------------------------------------------------------------------------ evaluation
    def evaluate_batch(self, model, tokenizer, batch, metrics) -> list[dict[str, Any]]:
        if "exact_match" not in metrics.names:  # validation: the reference answers' loss, as SFT's (no sampling)
            metrics.update_loss(*CausalLMTask.loss(self, model, batch))
            return []
        return super().evaluate_batch(model, tokenizer, batch, metrics)
