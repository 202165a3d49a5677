"""Unpaired preference data: single answers labelled desirable or not, trained with KTO.

KTO (Ethayarajh et al., 2024) needs no pairs: each record is a prompt, one answer and a label
(``data.label_field``: true for a desirable answer, false for an undesirable one), and each answer
is judged on its own against the batch's estimate of the policy's KL divergence from the reference
(tasks/preference_losses.py). The reference modes, the log-probabilities and the KL estimate are the
preference task's; only the data and the metrics differ. The shipped ``data=date_feedback`` has
each date prompt once, with its right answer or a plausible mistake. A split the run reads must hold
both kinds: with one kind only, the reward margin (the primary metric) is undefined, so such data is
refused before any model loads, naming its file.
"""

from __future__ import annotations

from typing import Any, Callable, Optional

from peftlab.data.tokenize import IGNORE_INDEX, PromptFormat, encode
from peftlab.tasks.base import register_task
from peftlab.tasks.preference import PreferenceTask, _mismatched

LABELS = {True: True, False: False, "true": True, "false": False, "1": True, "0": False}  # 1 and 0 equal True, False


def parse_label(value: Any) -> Optional[bool]:
    """Whether a record's label says desirable; None for anything that is not true or false."""
    value = value.strip().lower() if isinstance(value, str) else value
    if isinstance(value, float) or not isinstance(value, (bool, int, str)) or value not in LABELS:
        return None
    return LABELS[value]


def one_kind_problem(splits: dict[str, list[dict[str, Any]]], field: str) -> Optional[str]:
    """The first split whose answers are all desirable or all undesirable, as one line naming its file."""
    from peftlab.data.records import WHERE

    labels = {split: [parse_label(r.get(field)) for r in rows] for split, rows in splits.items()}
    if any(None in found for found in labels.values()):
        return None  # the encoder names the record whose label is neither true nor false
    for split, rows in splits.items():
        kinds = set(labels[split])
        if len(kinds) == 1:
            where = str(rows[0].get(WHERE, split))
            source = where.rsplit(" line ", 1)[0].rsplit(" row ", 1)[0]
            desirable = kinds.pop()
            kind, value = ("desirable", "true") if desirable else ("undesirable", "false")
            return (f"{source}: all {len(rows)} answers of the {split} split are {kind} ({field}={value}): KTO's "
                    "reward margin, the primary metric, compares desirable with undesirable answers and is undefined "
                    "with one kind only")
    return None


@register_task
class UnpairedPreferenceTask(PreferenceTask):
    name = "unpaired"
    primary_metric = "reward_margin"
    metric_names = ("reward_margin", "desirable_reward", "undesirable_reward", "kl", "desirable_logp", "exact_match",
                    "loss")

    def __init__(self, data, labels=None, run=None):
        super().__init__(data, labels, run)
        if getattr(run, "preference", None) is None:  # KTO's paper defaults (conf/preference/kto.yaml)
            from peftlab.config.schema import PreferenceSchema

            self.settings = PreferenceSchema(name="kto", loss="kto", desirable_weight=1.0, undesirable_weight=1.0)

    @classmethod
    def merge_metrics(cls) -> tuple[str, ...]:
        return ("exact_match", "desirable_logp")  # what the policy alone determines

    def check(self, run: Any) -> list[str]:
        problems = super().check(run)
        if self.settings.sft_weight:
            problems.append(f"preference.sft_weight does not apply to data.task_type=unpaired (KTO weighs the "
                            f"desirable answers with preference.desirable_weight), got {self.settings.sft_weight}")
        if self.settings.loss != "kto":
            problems.append(f"data.task_type=unpaired: preference.loss={self.settings.loss} compares answers in "
                            "pairs; single answers labelled good or bad train with preference=kto")
        return problems or self._label_problems(run)  # the data is read once the settings are sound

    def _label_problems(self, run: Any) -> list[str]:
        """The data read before any model loads: every split the run reads holds both kinds of answer."""
        from peftlab.data.sources import load_splits
        from peftlab.errors import DataError

        splits = load_splits(self.data, self.fields())
        read = {"train", *(["val"] if run.trainer.limit_val_batches != 0 else []),
                *(["test"] if run.test or run.zero_shot else [])}
        problem = one_kind_problem({k: v for k, v in splits.items() if k in read}, self.data.label_field)
        if problem:
            raise DataError(problem)
        return []

    # -------------------------------------------------------------------------------- the data
    def fields(self) -> dict[str, str]:
        d = self.data
        return {"prompt_field": d.prompt_field, "response_field": d.response_field, "label_field": d.label_field}

    def encoder(self, tokenizer: Any) -> Callable[[dict[str, Any], str], dict[str, Any]]:
        from peftlab.errors import DataError

        d = self.data
        fmt = PromptFormat.for_tokenizer(tokenizer, d.prompt_format, d.system_prompt)

        def encode_answer(row: dict[str, Any], where: str) -> dict[str, Any]:
            label = parse_label(row[d.label_field])
            if label is None:
                raise DataError(f"{where}: {d.label_field}={row[d.label_field]!r} is not true or false "
                                "(data.label_field: whether the answer is desirable)")
            answer = encode(tokenizer, fmt, str(row[d.prompt_field]), str(row[d.response_field]), d.max_length)
            return {"chosen": answer, "desirable": label, "prompt_ids": answer["prompt_ids"],
                    "reference": answer["reference"], "truncated": answer["truncated"]}

        return encode_answer

    def unusable(self, record: dict[str, Any], example: dict[str, Any]) -> Optional[str]:
        d = self.data
        if not str(record[d.prompt_field]).strip():
            return "blank prompt"
        if not str(record[d.response_field]).strip():
            return "empty answer"
        if all(t == IGNORE_INDEX for t in example["chosen"]["labels"][1:]):
            return f"answer cut away by data.max_length={d.max_length}"
        return None

    def length(self, example: dict[str, Any]) -> int:
        return len(example["chosen"]["input_ids"])

    def collator(self, tokenizer: Any, evaluation: bool) -> Callable:
        import torch

        from peftlab.data.collators import CausalLMCollator

        answers = CausalLMCollator(tokenizer.pad_token_id, generation=False)
        prompts = CausalLMCollator(tokenizer.pad_token_id, generation=True)

        def collate(examples: list[dict[str, Any]]) -> dict[str, Any]:
            batch = answers([{**e["chosen"], "pad": e.get("pad", False)} for e in examples])
            batch["desirable"] = torch.tensor([e["desirable"] for e in examples], dtype=torch.bool)
            batch["kl"] = answers([_mismatched(e, examples[(i + 1) % len(examples)]) for i, e in enumerate(examples)])
            if evaluation:
                gen = prompts([{**e["chosen"], "pad": e.get("pad", False)} for e in examples])
                batch.update({k: gen[k] for k in ("gen_input_ids", "gen_attention_mask", "references", "counted")})
            return batch

        return collate

    # ------------------------------------------------------------------------------- the loss
    def _answers(self, model: Any, batch: dict[str, Any]) -> dict[str, Any]:
        """Per answer: KTO's loss, the reward (beta times the log-ratio) and the log-probability."""
        import torch

        s = self.settings
        policy, _ = self._logps(model, batch)
        ratio = policy - self._reference_logps(model, batch).to(policy.dtype)
        z = self._kl(model, batch["kl"]).clamp(min=0).detach()
        good = batch["desirable"].to(policy.device)
        losses = torch.where(good, s.desirable_weight * (1 - torch.sigmoid(s.beta * (ratio - z))),
                             s.undesirable_weight * (1 - torch.sigmoid(s.beta * (z - ratio))))
        return {"losses": losses, "reward": (s.beta * ratio).detach(), "logp": policy.detach(), "desirable": good,
                "kl": z}

    def loss(self, model, batch):
        losses = self._answers(model, batch)["losses"]
        real = (batch["labels"] != IGNORE_INDEX).any(1)  # not a shard's padding copy
        return losses[real].sum().float(), real.sum()

    # ------------------------------------------------------------------------------ evaluation
    def metrics(self, full: bool):
        from torchmetrics import MeanMetric

        from peftlab.tasks.metrics import ExactMatch, SplitMetrics

        names = ("desirable_reward", "undesirable_reward", "kl", "desirable_logp")
        means = {k: MeanMetric(nan_strategy="disable") for k in names}

        def margin(values: dict[str, float]) -> dict[str, float]:
            return {"reward_margin": values["desirable_reward"] - values["undesirable_reward"]}

        return SplitMetrics({**means, **({"exact_match": ExactMatch()} if full else {})}, derived=margin)

    def evaluate_batch(self, model, tokenizer, batch, metrics) -> list[dict[str, Any]]:
        import torch

        keep = (batch["labels"] != IGNORE_INDEX).any(1)  # not a shard's padding copy
        with torch.no_grad():
            out = self._answers(model, batch)
        keep = keep.to(out["losses"].device)
        good = out["desirable"]
        metrics.update_loss(out["losses"][keep].sum(), int(keep.sum()))
        m = metrics.task
        m["desirable_reward"].update(out["reward"][keep & good])
        m["undesirable_reward"].update(out["reward"][keep & ~good])
        m["desirable_logp"].update(out["logp"][keep & good])
        if keep.any():  # a batch of padding copies alone estimates nothing
            m["kl"].update(out["kl"])
        if "exact_match" not in metrics.names:
            return []
        # greedy answers to every prompt; exact match against the desirable answers only
        found = []
        for text, reference, counted, desirable in zip(self.probe(model, tokenizer, batch), batch["references"],
                                                       batch["counted"].tolist(), good.tolist(), strict=True):
            if not counted:
                continue
            if desirable:
                m["exact_match"].update([text], [reference])
            found.append({"prediction": text, "reference": reference, "desirable": desirable,
                          "correct": text.strip() == reference.strip() if desirable else None})
        return found
