"""Preference pairs: (prompt, chosen, rejected) trained with DPO (or IPO) against a reference.

With an adapter the reference needs no second model: it is the same base weights with the adapter
switched off (a fresh adapter), or a frozen copy of the adapter the run started from (after SFT the
reference must be the SFT model, not the base), or log-probabilities computed once before
training. ``separate`` holds a second full copy, the way without PEFT (and for full fine-tuning).
Chosen and rejected go through one forward; log-probabilities are summed over the answer tokens
only, with the output head on those positions alone (as for SFT).
"""

from __future__ import annotations

from typing import Any, Callable, Optional

from peftlab.data.tokenize import IGNORE_INDEX, PromptFormat, encode
from peftlab.tasks.base import Task, register_task
from peftlab.tasks.causal_lm import GeneratesText
from peftlab.tasks.reference import Reference, eval_mode


@register_task
class PreferenceTask(GeneratesText, Task):
    name = "preference"
    peft_task_type = "CAUSAL_LM"
    primary_metric = "reward_accuracy"
    metric_names = ("reward_accuracy", "reward_margin", "exact_match", "loss", "chosen_reward", "rejected_reward",
                    "chosen_logp", "rejected_logp")
    takes_preference = True

    def __init__(self, data, labels=None, run=None):
        super().__init__(data, labels, run)
        from peftlab.config.schema import PreferenceSchema

        self.settings = getattr(run, "preference", None) or PreferenceSchema(name="dpo")
        self.init_adapter = getattr(run, "init_adapter", None)
        self.reference = Reference(self.settings.reference, self.init_adapter)  # tasks/reference.py
        self._precomputed_bytes = 0

    @property
    def reference_model(self) -> Any:  # reference=separate: the frozen copy of the backbone
        return self.reference.model

    @property
    def reference_bytes(self) -> int:  # what the reference holds beyond the policy's own weights
        return self.reference.bytes or self._precomputed_bytes

    @classmethod
    def merge_metrics(cls) -> tuple[str, ...]:
        # rewards and the DPO loss are against a reference, which a merged model no longer holds
        return ("exact_match", "chosen_logp", "rejected_logp")

    def check(self, run: Any) -> list[str]:
        problems = super().check(run)
        mode, can = self.settings.reference, run.method.capabilities
        if mode == "adapter_off" and not can.adapter:
            problems.append(f"preference.reference=adapter_off: method={run.method.name} has no adapter to switch off; "
                            "use preference.reference=separate (a second copy of the model) or precomputed")
        elif mode == "adapter_off" and run.method.adapter_off_differs() and not run.init_adapter:
            problems.append(f"preference.reference=adapter_off: {run.method.adapter_off_differs()}, so the base is "
                            "not the model the run starts from; use preference.reference=precomputed")
        if mode == "adapter_off" and run.init_adapter:
            problems.append("preference.reference=adapter_off with init_adapter: the reference would be the base, "
                            "not the model the policy starts from; use preference.reference=frozen_adapter "
                            "(or precomputed)")
        if mode == "precomputed" and self._needs_kl:
            problems.append(f"preference.reference=precomputed: {self.settings.loss} estimates the KL divergence from "
                            "each batch's prompts paired with other answers, which no precomputation knows; use "
                            "adapter_off or frozen_adapter")
        if self._needs_kl and run.data.batch_size < 2:
            problems.append(f"data.batch_size must be >= 2 for preference.loss={self.settings.loss}: its KL estimate "
                            f"pairs each prompt with another example's answer, got {run.data.batch_size}")
        if mode == "frozen_adapter" and not run.init_adapter:
            problems.append("preference.reference=frozen_adapter needs init_adapter=<run_dir>/adapter: the frozen "
                            "copy is of the adapter the run starts from")
        return problems

    @property
    def _needs_kl(self) -> bool:
        from peftlab.tasks.preference_losses import LOSSES

        return LOSSES[self.settings.loss].needs_kl

    def settings_record(self) -> dict[str, Any]:
        import dataclasses

        # the defaults too, when none was given; and the bytes the reference holds beside the policy
        return {"preference": {**dataclasses.asdict(self.settings), "reference_bytes": self.reference_bytes}}

    # -------------------------------------------------------------------------------- the data
    def encoder(self, tokenizer: Any) -> Callable[[dict[str, Any], str], dict[str, Any]]:
        d = self.data
        fmt = PromptFormat.for_tokenizer(tokenizer, d.prompt_format, d.system_prompt)

        def encode_pair(row: dict[str, Any], where: str) -> dict[str, Any]:
            prompt = str(row[d.prompt_field])
            chosen = encode(tokenizer, fmt, prompt, str(row[d.chosen_field]), d.max_length)
            rejected = encode(tokenizer, fmt, prompt, str(row[d.rejected_field]), d.max_length)
            return {"chosen": chosen, "rejected": rejected, "prompt_ids": chosen["prompt_ids"],
                    "reference": chosen["reference"], "truncated": chosen["truncated"] or rejected["truncated"]}

        return encode_pair

    def fields(self) -> dict[str, str]:
        d = self.data
        return {"prompt_field": d.prompt_field, "chosen_field": d.chosen_field, "rejected_field": d.rejected_field}

    def unusable(self, record: dict[str, Any], example: dict[str, Any]) -> Optional[str]:
        d = self.data
        if not str(record[d.prompt_field]).strip():
            return "blank prompt"
        if not str(record[d.chosen_field]).strip() or not str(record[d.rejected_field]).strip():
            return "empty answer"
        if str(record[d.chosen_field]).strip() == str(record[d.rejected_field]).strip():
            return "chosen equals rejected"
        if any(all(t == IGNORE_INDEX for t in example[k]["labels"][1:]) for k in ("chosen", "rejected")):
            return f"answer cut away by data.max_length={d.max_length}"
        return None

    def length(self, example: dict[str, Any]) -> int:
        return max(len(example["chosen"]["input_ids"]), len(example["rejected"]["input_ids"]))

    def collator(self, tokenizer: Any, evaluation: bool) -> Callable:
        from peftlab.data.collators import CausalLMCollator

        pairs = CausalLMCollator(tokenizer.pad_token_id, generation=False)
        prompts = CausalLMCollator(tokenizer.pad_token_id, generation=True)

        def collate(examples: list[dict[str, Any]]) -> dict[str, Any]:
            import torch

            rows = [{**e[k], "pad": e.get("pad", False)} for k in ("chosen", "rejected") for e in examples]
            batch = pairs(rows)  # chosen rows, then rejected rows: one forward for both
            if all("ref_logps" in e for e in examples):
                batch["ref_logps"] = torch.tensor([e["ref_logps"][i] for i in (0, 1) for e in examples],
                                                  dtype=torch.float64)
            if self._needs_kl:  # each prompt with the next example's chosen answer: KTO's KL estimate
                batch["kl"] = pairs([_mismatched(e, examples[(i + 1) % len(examples)]) for i, e in enumerate(examples)])
            if evaluation:
                gen = prompts([{**e["chosen"], "pad": e.get("pad", False)} for e in examples])
                batch.update({k: gen[k] for k in ("gen_input_ids", "gen_attention_mask", "references", "counted")})
            return batch

        return collate

    # ------------------------------------------------------------------------------- the reference
    def before_wrapping(self, backbone: Any) -> None:
        self.reference.before_wrapping(backbone)

    def before_training(self, model: Any, data: Any) -> None:
        self.reference.before_training(model)
        if self.settings.reference == "precomputed":
            self._precompute(model, data)
            self._precomputed_bytes = 16 * sum(len(split) for split in data.splits.values())  # two float64 a pair

    def _precompute(self, model: Any, data: Any) -> None:
        """The reference log-probabilities of every pair, kept with the data: those of the model
        the run starts from (its starting or fresh adapter on), before the first step."""
        import torch

        collate = self.collator(data.tokenizer, evaluation=False)
        with torch.no_grad(), eval_mode(model):
            for examples in data.splits.values():
                for start in range(0, len(examples), data.cfg.eval_batch_size):
                    chunk = examples[start:start + data.cfg.eval_batch_size]
                    logps, _ = self._logps(model, collate(chunk))
                    n = len(chunk)
                    for i, e in enumerate(chunk):
                        e["ref_logps"] = (float(logps[i]), float(logps[n + i]))

    def _reference_logps(self, model: Any, batch: dict[str, Any]):
        if "ref_logps" in batch:
            return batch["ref_logps"].to(batch["input_ids"].device)
        return self.reference(model, self._logps, batch)[0]

    # ------------------------------------------------------------------------------- the loss
    def _logps(self, model: Any, batch: dict[str, Any]):
        """Summed log-probabilities of each row's answer tokens, and each row's answer length."""
        import torch
        import torch.nn.functional as F

        from peftlab.tasks.heads import answer_logits

        logits, targets = answer_logits(model, batch)
        rows = (batch["labels"][:, 1:] != IGNORE_INDEX).nonzero()[:, 0]
        token_logps = -F.cross_entropy(logits, targets, reduction="none").double()
        n = batch["labels"].shape[0]
        logps = torch.zeros(n, dtype=torch.float64, device=logits.device).index_add_(0, rows, token_logps)
        lengths = torch.zeros(n, dtype=torch.float64, device=logits.device).index_add_(
            0, rows, torch.ones_like(token_logps))
        return logps, lengths

    def _pairs(self, model: Any, batch: dict[str, Any]) -> dict[str, Any]:
        """Per pair: the loss (the registered ``preference.loss``), the rewards and the policy's
        log-probabilities."""
        from peftlab.tasks.preference_losses import LOSSES, PairLogps

        s = self.settings
        policy, lengths = self._logps(model, batch)
        reference = (self._reference_logps(model, batch).to(policy.dtype) if LOSSES[s.loss].needs_reference
                     else policy.new_zeros(policy.shape))
        b = len(policy) // 2
        kl = self._kl(model, batch["kl"]) if LOSSES[s.loss].needs_kl else None
        losses, chosen_reward, rejected_reward = LOSSES[s.loss].compute(PairLogps(policy, reference, lengths, kl), s)
        if s.sft_weight:
            losses = losses + s.sft_weight * (-policy[:b] / lengths[:b].clamp(min=1))  # chosen NLL per token
        return {"losses": losses, "chosen_reward": chosen_reward.detach(), "rejected_reward": rejected_reward.detach(),
                "chosen_logp": policy[:b].detach(), "rejected_logp": policy[b:].detach()}

    def _kl(self, model: Any, rows: dict[str, Any]):
        """The batch's estimate of KL(policy || reference): the mean log-ratio of answers to prompts
        they were not written for, without gradient (KTO's reference point)."""
        import torch

        real = (rows["labels"] != IGNORE_INDEX).any(1)  # not a shard's padding copy
        if int(real.sum()) < 2:  # one example (a last evaluation batch) has no other answer: no estimate
            return rows["labels"].new_zeros((), dtype=torch.float64)
        with torch.no_grad():
            policy = self._logps(model, rows)[0]
        return (policy - self._reference_logps(model, rows))[real].mean()

    def loss(self, model, batch):
        losses = self._pairs(model, batch)["losses"]
        return losses.sum().float(), batch["input_ids"].new_tensor(len(losses))

    # ------------------------------------------------------------------------------ evaluation
    def metrics(self, full: bool):
        from torchmetrics import MeanMetric

        from peftlab.tasks.metrics import ExactMatch, SplitMetrics

        # per-pair means over every pair; "disable" keeps a NaN visible instead of dropping it
        names = ("reward_accuracy", "reward_margin", "chosen_reward", "rejected_reward", "chosen_logp", "rejected_logp")
        means = {k: MeanMetric(nan_strategy="disable") for k in names}
        return SplitMetrics({**means, **({"exact_match": ExactMatch()} if full else {})})

    def evaluate_batch(self, model, tokenizer, batch, metrics) -> list[dict[str, Any]]:
        import torch

        keep = batch["counted"]
        with torch.no_grad():
            pairs = {k: v[keep] for k, v in self._pairs(model, batch).items()}
        metrics.update_loss(pairs["losses"].sum(), len(pairs["losses"]))
        m = metrics.task
        m["reward_accuracy"].update((pairs["chosen_reward"] > pairs["rejected_reward"]).double())
        m["reward_margin"].update(pairs["chosen_reward"] - pairs["rejected_reward"])
        for key in ("chosen_reward", "rejected_reward", "chosen_logp", "rejected_logp"):
            m[key].update(pairs[key])
        if "exact_match" not in metrics.names:
            return []
        return self.score_generations(model, tokenizer, batch, m["exact_match"])


def _mismatched(example: dict[str, Any], other: dict[str, Any]) -> dict[str, Any]:
    """``example``'s prompt followed by ``other``'s chosen answer, labelled on the answer."""
    from peftlab.data.tokenize import IGNORE_INDEX

    prompt = example["chosen"]["prompt_ids"]
    answer = other["chosen"]["input_ids"][len(other["chosen"]["prompt_ids"]):]
    return {"input_ids": prompt + answer, "labels": [IGNORE_INDEX] * len(prompt) + answer,
            "pad": example.get("pad", False)}
