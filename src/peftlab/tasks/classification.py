"""Sequence classification: text -> one of ``data.labels``. Cross-entropy on the class logits;
accuracy and macro-F1. (torch loads inside the methods, as for every task.)"""

from __future__ import annotations

from functools import cached_property
from typing import Any, Callable, Optional

from peftlab.data.sources import resolve_labels
from peftlab.data.tokenize import encode_classification
from peftlab.tasks.base import Task, register_task


@register_task
class ClassificationTask(Task):
    name = "seq_cls"
    peft_task_type = "SEQ_CLS"
    generative = False
    primary_metric = "accuracy"
    metric_names = ("accuracy", "macro_f1", "loss")
    probe_name = "predicted labels"
    probe_setup = ("tiny_bert", "reviews")

    @classmethod
    def auto_class(cls) -> Any:
        from transformers import AutoModelForSequenceClassification

        return AutoModelForSequenceClassification

    @classmethod
    def checkpoint_class(cls) -> Any:
        from transformers import AutoModel

        return AutoModel  # the classification head is added at load time, sized to the labels

    @cached_property
    def labels(self) -> Optional[list[str]]:
        """data.labels, else the sorted label values of the train split (read once)."""
        return self._labels or resolve_labels(self.data)

    def model_kwargs(self) -> dict[str, Any]:
        labels = self.labels
        return {"num_labels": len(labels), "id2label": dict(enumerate(labels)),
                "label2id": {name: i for i, name in enumerate(labels)}}

    def encoder(self, tokenizer: Any) -> Callable[[dict[str, Any], str], dict[str, Any]]:
        d, label_ids = self.data, {name: i for i, name in enumerate(self.labels)}

        def encode_record(row: dict[str, Any], where: str) -> dict[str, Any]:
            return encode_classification(tokenizer, str(row[d.prompt_field]), str(row[d.response_field]), label_ids,
                                         d.max_length, where)

        return encode_record

    def unusable(self, record: dict[str, Any], example: dict[str, Any]) -> Optional[str]:
        return None if str(record[self.data.prompt_field]).strip() else "blank text"

    def collator(self, tokenizer: Any, evaluation: bool) -> Callable:
        from peftlab.data.collators import ClassificationCollator

        return ClassificationCollator(tokenizer.pad_token_id)

    def _logits(self, model, batch):
        return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.float()

    def loss(self, model, batch):
        import torch.nn.functional as F

        logits = self._logits(model, batch)
        return F.cross_entropy(logits, batch["labels"], reduction="sum"), batch["labels"].new_tensor(len(logits))

    def metrics(self, full: bool):
        from torchmetrics.classification import MulticlassAccuracy, MulticlassF1Score

        from peftlab.tasks.metrics import SplitMetrics

        n = len(self.labels)
        return SplitMetrics({"accuracy": MulticlassAccuracy(num_classes=n, average="micro"),
                             "macro_f1": MulticlassF1Score(num_classes=n, average="macro")})

    def evaluate_batch(self, model, tokenizer, batch, metrics) -> list[dict[str, Any]]:
        import torch.nn.functional as F

        keep = batch["counted"]
        logits, labels = self._logits(model, batch)[keep], batch["labels"][keep]
        metrics.update_loss(F.cross_entropy(logits, labels, reduction="sum"), len(labels))
        predicted = logits.argmax(-1)
        metrics.task.update(predicted, labels)
        return [{"prediction": self.labels[p], "reference": self.labels[r], "correct": p == r}
                for p, r in zip(predicted.tolist(), labels.tolist(), strict=True)]

    def answer(self, model, tokenizer, prompts, options, streamer=None):
        """The predicted label of each text and its probability."""
        import torch

        from peftlab.data.collators import ClassificationCollator

        collate, out = ClassificationCollator(tokenizer.pad_token_id), []
        for start in range(0, len(prompts), options.batch_size):
            texts = prompts[start:start + options.batch_size]
            batch = collate([{"input_ids": tokenizer(t, truncation=True, max_length=self.data.max_length).input_ids,
                              "label": 0} for t in texts])
            with torch.no_grad():
                probs = self._logits(model, batch).softmax(-1)
            for text, (p, i) in zip(texts, zip(*probs.max(-1), strict=True), strict=True):
                out.append({"prompt": text, "answer": self.labels[int(i)], "probability": round(float(p), 4)})
        return out

    def verification_logits(self, model, batch):
        import torch

        with torch.no_grad():
            logits = self._logits(model, batch)
        return {"all": logits, "answer": logits}

    def probe(self, model, tokenizer, batch) -> list[str]:
        import torch

        with torch.no_grad():
            return [self.labels[i] for i in self._logits(model, batch).argmax(-1).tolist()]
