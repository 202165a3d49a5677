"""The method-agnostic LightningModule.

It is given a built model (a peft model, or the plain backbone for full fine-tuning) and never
asks which method made it: the optimizer sees exactly the parameters that require grad, and a
checkpoint holds exactly those parameters and the optimizer state. What differs between tasks
(the loss, the evaluation) lives in one ``TaskSteps`` class per task type.
"""

from __future__ import annotations

import math
from typing import Any, Optional

import lightning as L
import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from transformers import GenerationConfig

from peftlab.config.schema import OptimSchema
from peftlab.data.tokenize import IGNORE_INDEX
from peftlab.methods import trainable_parameters
from peftlab.metrics import CausalLMMetrics, ClassificationMetrics


def answer_token_nll(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed next-token NLL over the answer tokens, and their count.

    The output head runs only on the positions that carry a label: the model is asked for one
    position of logits, and the head is applied to the final hidden states at the labelled
    positions. Prompt-learning methods prepend virtual tokens; their positions are skipped.
    """
    out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                output_hidden_states=True, logits_to_keep=1, use_cache=False)
    hidden = out.hidden_states[-1]
    labels = batch["labels"]
    offset = hidden.shape[1] - labels.shape[1]  # virtual tokens of prompt methods, else 0
    targets = labels[:, 1:]
    mask = targets != IGNORE_INDEX
    selected = hidden[:, offset:-1][mask]
    logits = model.get_output_embeddings()(selected).float()
    nll = F.cross_entropy(logits, targets[mask], reduction="sum")
    return nll, mask.sum()


def lr_lambda(total_steps: int, warmup_ratio: float, schedule: str, min_ratio: float):
    warmup = int(math.ceil(warmup_ratio * total_steps))

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        if schedule == "constant":
            return 1.0
        progress = min(1.0, (step - warmup) / max(1, total_steps - warmup))
        decay = 0.5 * (1.0 + math.cos(math.pi * progress)) if schedule == "cosine" else 1.0 - progress
        return min_ratio + (1.0 - min_ratio) * decay

    return factor


def build_optimizer(model: torch.nn.Module, optim: OptimSchema) -> torch.optim.Optimizer:
    """The configured optimizer over the trainable parameters only."""
    return instantiate(optim.optimizer, params=trainable_parameters(model), lr=optim.lr,
                       weight_decay=optim.weight_decay, _convert_="all")


class CausalLMSteps:
    """Generation tasks: loss on the answer tokens; greedy generations for exact match."""

    def __init__(self, tokenizer: Any, max_new_tokens: int):
        self.tokenizer = tokenizer
        self.generation = GenerationConfig(max_new_tokens=max_new_tokens, do_sample=False,
                                           pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)

    def metrics(self, test: bool) -> torch.nn.Module:
        return CausalLMMetrics(generate=test)

    def loss(self, model, batch) -> tuple[torch.Tensor, torch.Tensor]:
        return answer_token_nll(model, batch)

    def evaluate(self, model, batch, metrics: CausalLMMetrics) -> list[dict[str, Any]]:
        nll, tokens = answer_token_nll(model, batch)
        metrics.loss.update(nll, tokens)
        if not metrics.generate:
            return []
        predictions = self.generate(model, batch["gen_input_ids"], batch["gen_attention_mask"])
        metrics.exact_match.update(predictions, batch["references"])
        return [{"prediction": p, "reference": r, "correct": p.strip() == r.strip()}
                for p, r in zip(predictions, batch["references"])]

    @torch.no_grad()
    def generate(self, model, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> list[str]:
        """Batched greedy decoding of left-padded prompts with the KV cache."""
        out = model.generate(input_ids=input_ids, attention_mask=attention_mask, generation_config=self.generation)
        return [t.strip() for t in self.tokenizer.batch_decode(out[:, input_ids.shape[1]:], skip_special_tokens=True)]


class ClassificationSteps:
    """Sequence classification: cross-entropy on the class logits; accuracy and macro-F1."""

    def __init__(self, labels: list[str]):
        self.labels = labels

    def metrics(self, test: bool) -> torch.nn.Module:
        return ClassificationMetrics(len(self.labels))

    def loss(self, model, batch) -> tuple[torch.Tensor, torch.Tensor]:
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.float()
        return F.cross_entropy(logits, batch["labels"], reduction="sum"), batch["labels"].new_tensor(len(logits))

    def evaluate(self, model, batch, metrics: ClassificationMetrics) -> list[dict[str, Any]]:
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.float()
        labels = batch["labels"]
        metrics.loss.update(F.cross_entropy(logits, labels, reduction="sum"), len(labels))
        predicted = logits.argmax(-1)
        metrics.accuracy.update(predicted, labels)
        metrics.macro_f1.update(predicted, labels)
        return [{"prediction": self.labels[p], "reference": self.labels[r], "correct": p == r}
                for p, r in zip(predicted.tolist(), labels.tolist())]


def task_steps(task_type: str, tokenizer: Any, max_new_tokens: int = 16, labels: Optional[list[str]] = None):
    if task_type == "seq_cls":
        return ClassificationSteps(labels or [])
    return CausalLMSteps(tokenizer, max_new_tokens)


class PeftLabModule(L.LightningModule):
    def __init__(self, model: torch.nn.Module, tokenizer: Any, optim: Optional[OptimSchema] = None,
                 max_new_tokens: int = 16, task_type: str = "causal_lm", labels: Optional[list[str]] = None):
        super().__init__()
        self.model = model
        self.tokenizer = tokenizer
        self.optim = optim
        self.steps = task_steps(task_type, tokenizer, max_new_tokens, labels)
        self.val_metrics = self.steps.metrics(test=False)
        self.test_metrics = self.steps.metrics(test=True)
        self.predictions: list[dict[str, Any]] = []
        self.strict_loading = False  # checkpoints hold the trainable parameters only

    def on_fit_start(self) -> None:
        self.model.train()  # from_pretrained returns eval mode; dropout must be on while training

    # ---------------------------------------------------------------------------------- steps
    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        total, count = self.steps.loss(self.model, batch)
        loss = total / count.clamp(min=1)
        self.log("train/loss", loss, prog_bar=True, batch_size=batch["input_ids"].shape[0])
        return loss

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self.steps.evaluate(self.model, batch, self.val_metrics)

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self.predictions.extend(self.steps.evaluate(self.model, batch, self.test_metrics))

    def generate(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> list[str]:
        return self.steps.generate(self.model, input_ids, attention_mask)

    def on_validation_epoch_end(self) -> None:
        self._log_split("val", self.val_metrics)

    def on_test_epoch_start(self) -> None:
        self.predictions = []

    def on_test_epoch_end(self) -> None:
        self._log_split("test", self.test_metrics)

    def _log_split(self, split: str, metrics) -> None:
        values = metrics.compute()  # torchmetrics has already reduced across devices
        metrics.reset()
        for name, value in values.items():
            self.log(f"{split}/{name}", value, prog_bar=name in ("loss", "exact_match", "accuracy"), sync_dist=False)

    # ------------------------------------------------------------------------------ optimizer
    def configure_optimizers(self):
        if self.optim is None:
            raise RuntimeError("PeftLabModule was built without an optimizer config; it can only evaluate")
        optimizer = build_optimizer(self.model, self.optim)
        total = max(1, int(self.trainer.estimated_stepping_batches))
        schedule = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lr_lambda(total, self.optim.warmup_ratio, self.optim.scheduler, self.optim.min_lr_ratio))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}

    # ----------------------------------------------------------------------------- checkpoints
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Keep the trainable parameters only: the frozen base is rebuilt from its source."""
        trainable = {name for name, p in self.named_parameters() if p.requires_grad}
        checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if k in trainable}
