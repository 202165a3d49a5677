"""Checks that a merged model reproduces the adapter model: logits, top-1 agreement, the task's
discrete outputs on the whole test split (greedy generations, predicted labels), the task metric,
and forward latency.

The figures are computed against a ``Reference`` measured once on the adapter model; the adapter's
test predictions and metrics come from the training job that has just measured them, when it has."""

from __future__ import annotations

import math
import statistics
import time
from dataclasses import dataclass, field
from typing import Any, Iterable, Iterator, Optional

import torch


@dataclass
class Tolerance:
    # fp32 exports: the largest logit difference allowed, adapter model vs reloaded merged model,
    # both evaluated in float64 so that it measures the merge and not fp32 forward-pass rounding
    # (which alone moves SmolLM2's logits, of magnitude ~50, by ~1e-4 between two batch layouts)
    max_abs: Optional[float]
    min_top1: float  # share of answer positions whose arg-max agrees
    metric_slack: Optional[float]  # how far the task metric may move (bf16/fp16: one example; None: not gated)
    why: str = ""


def tolerance(dtype: str, n_test: int, min_top1: Optional[float] = None, quantized: bool = False) -> Tolerance:
    if quantized:  # the reference is the same adapter on the full-precision base the export merges into
        slack = None
        why_metric = ("the task metric is compared with the run's (the adapter on the quantized base) and reported, "
                      "not gated: the export's full-precision base is not the quantized base the run tested; the "
                      "top-1 agreement with that model is gated in merge_report.json's quantization entry")
    else:
        slack = 1e-9 if dtype in ("float32", "float64") else 1.0 / max(n_test, 1) + 1e-9
        why_metric = "the task metric must not move" if slack < 1e-6 else "the task metric may move by one example"
    if dtype in ("float32", "float64"):
        return Tolerance(max_abs=1e-4, min_top1=min_top1 or 1.0, metric_slack=slack,
                         why="an fp32 merge changes nothing but rounding: logits within 1e-4 in a float64 forward, "
                             "every top-1 and generation the same; " + why_metric)
    return Tolerance(max_abs=None, min_top1=min_top1 or 0.99, metric_slack=slack,
                     why=f"{dtype} rounds every weight: 99% top-1 agreement at the answer positions; " + why_metric)


@dataclass
class Evaluation:
    """A model's test metrics and its prediction for every test example, in the split's order."""

    metrics: dict[str, float]
    predictions: list[Any]


@dataclass
class Reference:
    """What the adapter model gives, measured once: the merged model is compared with it."""

    logits: list[dict[str, torch.Tensor]]
    test: Evaluation
    logits64: Optional[list[dict[str, torch.Tensor]]] = None  # fp32 exports: the same in float64
    latency: dict[str, float] = field(default_factory=dict)


def rows(batch: dict[str, Any], start: int, stop: int) -> dict[str, Any]:
    """Rows ``start:stop`` of every field of a batch (of a nested one too: KTO's mismatched answers)."""
    return {k: rows(v, start, stop) if isinstance(v, dict) else v[start:stop] for k, v in batch.items()}


def iter_logits(model, task, batches: list[dict[str, Any]], chunk: int = 8) -> Iterator[dict[str, torch.Tensor]]:
    """The task's verification logits, ``chunk`` examples at a time: with a 50k-token vocabulary a
    batch's logits take hundreds of MiB, so only one chunk of them is in memory at a time."""
    for batch in batches:
        for start in range(0, len(batch["input_ids"]), chunk):
            yield task.verification_logits(model, rows(batch, start, start + chunk))


def compare(reference: list[dict[str, torch.Tensor]], other: Iterable[dict[str, torch.Tensor]]) -> dict[str, float]:
    """Logit errors over every real position; top-1 agreement at the answer positions (the
    task's tokens) and over every position. ``other`` may be lazy (``iter_logits``). A
    non-finite logit on either side makes the error infinite: NaN never passes a check."""
    max_err, max_ref = 0.0, 0.0
    agree = {"answer": [0, 0], "all": [0, 0]}  # agreeing positions, positions
    for ref, oth in zip(reference, other, strict=True):
        diff = torch.sub(ref["all"], oth["all"]).abs_()
        finite = bool(torch.isfinite(ref["all"]).all() and torch.isfinite(oth["all"]).all())
        max_err = max(max_err, float(diff.max()) if finite else math.inf)
        max_ref = max(max_ref, float(ref["all"].abs().max()))
        for key, counts in agree.items():
            same = ref[key].argmax(-1) == oth[key].argmax(-1)
            counts[0] += int(same.sum())
            counts[1] += same.numel()
    top1 = {key: a / n if n else float("nan") for key, (a, n) in agree.items()}
    return {"max_abs_error": max_err, "rel_error": max_err / max(max_ref, 1e-12),
            "top1_agreement": top1["answer"], "top1_agreement_all_positions": top1["all"]}


def same_predictions(ours: Evaluation, reference: Evaluation) -> dict[str, int]:
    """How many test predictions (greedy generations, labels) equal the reference's, of how many
    (a prediction missing on either side counts as different: the check then fails)."""
    return {"probes_identical": sum(a == b for a, b in zip(ours.predictions, reference.predictions, strict=False)),
            "probes": max(len(reference.predictions), len(ours.predictions))}


def score_split(model, task, tokenizer, loader) -> Evaluation:
    """The task metrics of ``model`` on every batch of ``loader``, and its predictions."""
    from peftlab.data.loaders import InSplitOrder

    metrics, predictions = task.metrics(full=True), []
    with torch.no_grad():
        for batch in loader:
            found = task.evaluate_batch(model, tokenizer, batch, metrics)
            predictions += [(i, p["prediction"]) for i, p in zip(batch["position"], found, strict=True)]
    return Evaluation({k: round(v, 6) for k, v in metrics.compute().items()}, InSplitOrder.restore(predictions))


@torch.no_grad()
def forward_ms(model, batch: dict[str, Any], repeats: int = 3, warm: bool = False) -> float:
    """Median wall time of one forward pass over ``batch``, in milliseconds (after a warm-up,
    unless ``warm``: the model has just run a batch of this shape)."""
    if not warm:
        model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
        times.append((time.perf_counter() - start) * 1000)
    return round(statistics.median(times), 2)


def problems(report: dict[str, Any], tol: Tolerance, metric: str) -> list[str]:
    """What fails the tolerance, one phrase each (an empty list: the merge passes)."""
    found = []
    for stage, c in report["checks"].items():
        exact = c.get("max_abs_error_fp64")  # measured on the reloaded export of fp32 merges
        if tol.max_abs is not None and exact is not None and not exact <= tol.max_abs:
            found.append(f"{stage}: max logit error {exact:.3g} (float64 forward) > {tol.max_abs:g}")
        if not c["top1_agreement"] >= tol.min_top1:
            found.append(f"{stage}: top-1 agreement {c['top1_agreement']:.4f} < {tol.min_top1}")
        if tol.max_abs is not None and "probes" in c and c["probes_identical"] != c["probes"]:
            differ = c["probes"] - c["probes_identical"]
            found.append(f"{stage}: {differ} of {c['probes']} {report['probe_name']} differ")
    ref, got = report["metrics"]["adapter"].get(metric), report["metrics"]["merged"].get(metric)
    if ref is not None and tol.metric_slack is not None and not abs(got - ref) <= tol.metric_slack:
        found.append(f"test {metric} {got:.4f} (merged) vs {ref:.4f} (adapter)")
    return found
