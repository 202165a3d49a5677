"""Reward models: a scalar score head trained on preference pairs (prompt, chosen, rejected).

The model is the causal LM's backbone with a sequence-classification head of one output (a
``score`` layer on the last real token), trained with the Bradley-Terry loss
``-log sigmoid(r_chosen - r_rejected - margin)`` (Ouyang et al., 2022; the per-pair margin of
Llama 2, read from ``data.margin_field`` when it is set). The texts it scores are the prompt and
the answer exactly as the policy sees them (chat template and system prompt), so an RL run scores
its completions the way the reward model was trained. The same data configs as DPO serve it:
``data=date_prefs data.task_type=reward``. Any method that serves classification trains it; peft
saves the head with the adapter, so the folder reloads with plain transformers + peft.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Optional

from peftlab.data.tokenize import PromptFormat, encode
from peftlab.tasks.base import Task, register_task

SCORES = ("pair_accuracy", "margin", "chosen_score", "rejected_score")


@register_task
class RewardTask(Task):
    name = "reward"
    peft_task_type = "SEQ_CLS"
    generative = False
    primary_metric = "pair_accuracy"
    metric_names = (*SCORES, "loss")
    probe_name = "preferred answers"

    @classmethod
    def auto_class(cls) -> Any:
        from transformers import AutoModelForSequenceClassification

        return AutoModelForSequenceClassification

    @classmethod
    def checkpoint_class(cls) -> Any:
        from transformers import AutoModelForCausalLM

        return AutoModelForCausalLM  # the base a policy shares; the score head is added at load time

    def model_kwargs(self) -> dict[str, Any]:
        return {"num_labels": 1}

    # -------------------------------------------------------------------------------- the data
    def fields(self) -> dict[str, str]:
        d = self.data
        fields = {"prompt_field": d.prompt_field, "chosen_field": d.chosen_field, "rejected_field": d.rejected_field}
        return {**fields, **({"margin_field": d.margin_field} if d.margin_field else {})}

    def encoder(self, tokenizer: Any) -> Callable[[dict[str, Any], str], dict[str, Any]]:
        d = self.data
        fmt = PromptFormat.for_tokenizer(tokenizer, d.prompt_format, d.system_prompt)

        def encode_pair(row: dict[str, Any], where: str) -> dict[str, Any]:
            from peftlab.errors import DataError

            prompt = str(row[d.prompt_field])
            chosen = encode(tokenizer, fmt, prompt, str(row[d.chosen_field]), d.max_length)
            rejected = encode(tokenizer, fmt, prompt, str(row[d.rejected_field]), d.max_length)
            margin = 0.0
            if d.margin_field:
                try:
                    margin = float(row[d.margin_field])
                except (TypeError, ValueError):
                    raise DataError(f"{where}: {d.margin_field}={row[d.margin_field]!r} is not a number "
                                    "(data.margin_field)") from None
            return {"chosen": chosen["input_ids"], "rejected": rejected["input_ids"], "margin": margin,
                    "answers": (str(row[d.chosen_field]), str(row[d.rejected_field])),
                    "truncated": chosen["truncated"] or rejected["truncated"]}

        return encode_pair

    def unusable(self, record: dict[str, Any], example: dict[str, Any]) -> Optional[str]:
        d = self.data
        if not str(record[d.prompt_field]).strip():
            return "blank prompt"
        if not str(record[d.chosen_field]).strip() or not str(record[d.rejected_field]).strip():
            return "empty answer"
        if example["chosen"] == example["rejected"]:  # the same text, or cut to the same tokens by max_length
            return "chosen equals rejected"
        return None

    def length(self, example: dict[str, Any]) -> int:
        return max(len(example["chosen"]), len(example["rejected"]))

    def collator(self, tokenizer: Any, evaluation: bool) -> Callable:
        import torch

        from peftlab.data.collators import counted, pad

        def collate(examples: list[dict[str, Any]]) -> dict[str, Any]:
            rows = [e[k] for k in ("chosen", "rejected") for e in examples]  # chosen rows, then rejected rows
            return {"input_ids": pad(rows, tokenizer.pad_token_id),
                    "attention_mask": pad([[1] * len(r) for r in rows], 0),
                    "margin": torch.tensor([e["margin"] for e in examples], dtype=torch.float32),
                    "answers": [e["answers"] for e in examples], "counted": counted(examples)}

        return collate

    # ---------------------------------------------------------------------- training, evaluation
    @staticmethod
    def scores(model: Any, input_ids: Any, attention_mask: Any) -> Any:
        """One fp32 score per row: the head's output on the row's last real token."""
        return model(input_ids=input_ids, attention_mask=attention_mask).logits[:, 0].float()

    def _pairs(self, model, batch):
        import torch.nn.functional as F

        s = self.scores(model, batch["input_ids"], batch["attention_mask"])
        b = len(s) // 2
        chosen, rejected = s[:b], s[b:]
        losses = -F.logsigmoid(chosen - rejected - batch["margin"].to(s.device))
        return losses, chosen, rejected

    def loss(self, model, batch):
        losses, _, _ = self._pairs(model, batch)
        keep = batch["counted"].to(losses.device)
        return losses[keep].sum(), keep.sum()

    def metrics(self, full: bool):
        from torchmetrics import MeanMetric

        from peftlab.tasks.metrics import SplitMetrics

        return SplitMetrics({k: MeanMetric(nan_strategy="disable") for k in SCORES})

    def evaluate_batch(self, model, tokenizer, batch, metrics) -> list[dict[str, Any]]:
        import torch

        with torch.no_grad():
            losses, chosen, rejected = self._pairs(model, batch)
        keep = batch["counted"].to(losses.device)
        losses, chosen, rejected = losses[keep], chosen[keep], rejected[keep]
        metrics.update_loss(losses.sum(), len(losses))
        m = metrics.task
        m["pair_accuracy"].update((chosen > rejected).double())
        m["margin"].update(chosen - rejected)
        m["chosen_score"].update(chosen)
        m["rejected_score"].update(rejected)
        answers = [a for a, k in zip(batch["answers"], keep.tolist(), strict=True) if k]
        return [{"prediction": a[0] if c > r else a[1], "reference": a[0], "correct": c > r,
                 "chosen_score": round(c, 4), "rejected_score": round(r, 4)}
                for a, c, r in zip(answers, chosen.tolist(), rejected.tolist(), strict=True)]

    def answer(self, model, tokenizer, prompts, options, streamer=None):
        """The score of each text, read as a whole (a prompt followed by its answer)."""
        import torch

        from peftlab.data.collators import pad

        out = []
        for start in range(0, len(prompts), options.batch_size):
            texts = prompts[start:start + options.batch_size]
            ids = [tokenizer(t, truncation=True, max_length=self.data.max_length).input_ids for t in texts]
            with torch.no_grad():
                s = self.scores(model, pad(ids, tokenizer.pad_token_id), pad([[1] * len(i) for i in ids], 0))
            out += [{"prompt": t, "score": round(float(v), 4)} for t, v in zip(texts, s.tolist(), strict=True)]
        return out

    # -------------------------------------------------------------------------- merge checks
    def verification_logits(self, model, batch):
        import torch

        with torch.no_grad():
            s = self.scores(model, batch["input_ids"], batch["attention_mask"])[:, None]
        return {"all": s, "answer": s}

    def probe(self, model, tokenizer, batch) -> list[str]:
        import torch

        with torch.no_grad():
            _, chosen, rejected = self._pairs(model, batch)
        return ["chosen" if c > r else "rejected" for c, r in zip(chosen.tolist(), rejected.tolist(), strict=True)]


def reward_model_problems(folder: Path, run: Any, one_base: bool) -> list[str]:
    """Why ``folder`` cannot score this run's completions, read from its files alone (no weights
    loaded): not a reward model's adapter, no score head of one output, another base; and with
    ``one_base``, why it cannot sit as a second adapter on the policy's base."""
    from peftlab.errors import ConfigError
    from peftlab.runs.config import base_identity, read_adapter_config, read_run_config, safetensors_header

    key = "rl.reward_model"
    try:
        config = read_adapter_config(folder, key)
        header = safetensors_header(folder / "adapter_model.safetensors", key)
    except ConfigError as err:
        return [str(err)]
    if config.get("task_type") != "SEQ_CLS":
        return [f"{key}: {folder} is a {config.get('task_type')} adapter, not a reward model (train one with "
                "data.task_type=reward)"]
    head = [v["shape"] for k, v in header.items() if k.endswith("score.weight")]
    if not head or head[0][0] != 1:
        return [f"{key}: {folder} holds no score head of one output (train a reward model with data.task_type=reward)"]
    trained = None
    if (folder.parent / "config.yaml").is_file():  # its run folder names its base and method
        try:
            trained = read_run_config(folder.parent, key=key)
        except ConfigError as err:
            return [str(err)]
        theirs, ours = base_identity(trained.model), base_identity(run.model)
        differ = sorted(k for k in ours if ours[k] != theirs.get(k))
        if differ:
            return [f"{key}: {folder} was trained on another base (model.{differ[0]}: {theirs.get(differ[0])!r}, the "
                    f"policy's {ours[differ[0]]!r}): a reward model scores on the base it was trained on"]
    mode = getattr(getattr(run, "rl", None), "reward_format", "match")
    return reward_format_problems(folder, run, trained, mode) + (_one_base_problems(folder, run, trained)
                                                                 if one_base else [])


def reward_format_problems(folder: Path, run: Any, trained: Any, mode: str) -> list[str]:
    """Why the reward model in ``folder`` (``trained``: its run's config, if it has one) would score
    texts formatted otherwise than it learned from (``mode``: rl.reward_format)."""
    key = "rl.reward_model"
    if mode == "policy":  # stated: the policy's format, whatever the reward run's
        return []
    if trained is None:
        return [f"{key}: {folder} has no run config beside it ({folder.parent / 'config.yaml'}) to say the prompt "
                f"format and system prompt it was trained with (rl.reward_format={mode}); set "
                "rl.reward_format=policy to score in the policy's"]
    if mode == "reward_run":  # its own format, whatever the policy's
        return []
    for name in ("prompt_format", "system_prompt"):
        theirs, ours = getattr(trained.data, name), getattr(run.data, name)
        if theirs != ours:
            return [f"{key}: {folder} was trained with data.{name}={theirs!r} and the policy has {ours!r}: a reward "
                    "model scores texts formatted as those it learned from; set rl.reward_format=reward_run to "
                    "score in the reward run's format, or rl.reward_format=policy to score in the policy's anyway"]
    return []


def _one_base_problems(folder: Path, run: Any, trained: Any) -> list[str]:
    """Why the reward model in ``folder`` (``trained``: its run's config, if it has one) cannot sit as
    a second adapter on this run's policy base (``rl.reward_separate=true`` loads it on its own)."""
    key, separate = "rl.reward_model", "; use rl.reward_separate=true"
    method = run.method
    if not method.capabilities.adapter:
        return [f"{key}: method={method.name} has no adapter for the reward model's to sit beside{separate}"]
    if method.adapter_off_differs():
        return [f"{key} on the policy's base: {method.adapter_off_differs()}, so the weights under the adapters are "
                f"not the base the reward model was trained on{separate}"]
    if run.hardware.strategy == "fsdp":
        return [f"{key} on the policy's base with hardware.strategy=fsdp: the reward model reads the decoder outside "
                f"its sharded forward{separate}"]
    if trained is not None and trained.method.name != method.name:
        return [f"{key}: {folder} is a method={trained.method.name} adapter and the policy trains "
                f"method={method.name}: adapters of one kind share a base (peft mixes no others){separate}"]
    if trained is not None and trained.method.adapter_off_differs():
        return [f"{key}: {folder} was trained with {trained.method.adapter_off_differs()}: its adapter needs the "
                f"base it changed{separate}"]
    return []
