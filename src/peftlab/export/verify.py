"""Checks that a merged model reproduces the adapter model: logits, top-1 agreement, the task's
discrete outputs on the whole test split (greedy generations, predicted labels), the task metric,
and forward latency.

The figures are computed against a ``Reference`` measured once on the adapter model; the adapter's
test predictions and metrics come from the training job that has just measured them, when it has.

Two forward passes that compute the same function in floating point agree bit for bit only when
they run the same kernels on the same bytes in the same layout; a weight stored transposed, another
batch shape, another BLAS or another CPU vendor sums in another order. Every gate that compares two
forward passes therefore allows ``forward_tolerance`` (the one rule, below): a few units of the
dtype's precision, times the square root of the reduction length, times the logits' magnitude.
docs/guides/merging.md ("Exact or within a tolerance") lists every comparison of computed floats in
peftlab's gates and why it is exact or within that tolerance.
"""

from __future__ import annotations

import dataclasses
import math
import statistics
import time
from dataclasses import dataclass, field
from typing import Any, Iterable, Iterator, Optional

import torch

FORWARD_SLACK = 4.0  # the "few" of forward_tolerance: the rounding bound's constant, with a margin


def reduction_length(config: Any) -> int:
    """How many terms a logit sums along its longest path through a transformers model: per layer
    the hidden size (the attention and MLP input projections sum over it) and the intermediate size
    (the MLP's output projection), and the hidden size once more for the head."""
    config = config.get_text_config() if hasattr(config, "get_text_config") else config
    hidden = next((getattr(config, k) for k in ("hidden_size", "n_embd", "d_model", "dim")
                   if isinstance(getattr(config, k, None), int)), 1)
    inner = next((getattr(config, k) for k in ("intermediate_size", "n_inner", "ffn_dim", "hidden_dim")
                  if isinstance(getattr(config, k, None), int)), 4 * hidden)
    layers = next((getattr(config, k) for k in ("num_hidden_layers", "n_layer", "num_layers", "n_layers")
                   if isinstance(getattr(config, k, None), int)), 1)
    return layers * (hidden + inner) + hidden


def forward_tolerance(dtype: Any, reduction: int, scale: float) -> float:
    """The largest absolute difference allowed between two forward passes that compute the same
    function, rounded in ``dtype``, whose only difference is the order of their floating-point
    operations (a weight's layout, the batch shape, the BLAS and CPU that ran them), or the
    rounding of their weights to ``dtype`` (a merge's fp32 weights, read in a float64 forward):

        FORWARD_SLACK x eps(dtype) x sqrt(reduction) x scale

    ``eps(dtype)`` is the gap between 1 and the next number (``torch.finfo``: 1.2e-7 for float32,
    7.8e-3 for bfloat16); ``reduction`` is how many terms each output sums along its longest path
    (``reduction_length`` of the model's config); ``scale`` the largest |logit| of the reference.
    A sum of n rounded terms is off by about eps x sqrt(n) of its terms' magnitude (the
    probabilistic bound, Higham and Mary 2019: the roundings are independent and partly cancel;
    eps x n is the worst case, which no kernel reaches); FORWARD_SLACK = 4 covers the bound's
    constant and the layers' compounding. On the tiny test models (n = 448) that is 1e-5 of the
    logits' magnitude, on SmolLM2-135M (n = 63,936) 1.2e-4: a real mismatch (a weight off by a
    thousandth, a module left out) moves the logits far more."""
    if isinstance(dtype, str):
        dtype = getattr(torch, dtype)
    scale = float(scale)
    if not math.isfinite(scale):
        return math.nan  # nothing compares within a NaN tolerance: a non-finite reference fails
    return FORWARD_SLACK * torch.finfo(dtype).eps * math.sqrt(max(int(reduction), 1)) * scale


def logits_tolerance(model: Any, logits: torch.Tensor) -> float:
    """``forward_tolerance`` for ``model``'s forward pass in its own dtype, at the magnitude of
    ``logits`` (the reference of the comparison)."""
    return forward_tolerance(logits.dtype, reduction_length(model.config), float(logits.abs().max()))


@dataclass
class Tolerance:
    # fp32 exports: the largest logit difference allowed, adapter model vs reloaded merged model,
    # both evaluated in float64 so that it measures the merge (its weights rounded to fp32) and not
    # fp32 forward-pass rounding; forward_tolerance(rounding, ...) of the model at the reference's
    # largest |logit| (or the adapter model's own fp32 rounding, where larger), set by ``at`` once
    # the reference is measured. None: not gated (bf16/fp16)
    max_abs: Optional[float]
    min_top1: float  # share of answer positions whose arg-max agrees
    metric_slack: Optional[float]  # how far the task metric may move (bf16/fp16: one example; None: not gated)
    why: str = ""
    rounding: Optional[str] = None  # fp32 exports: the dtype whose rounding max_abs allows (see ``at``)
    # fp32 exports: an arg-max may differ where the reference's top two logits are within this of each
    # other (twice forward_tolerance of an fp32 forward: either side's rounding may break such a tie)
    top1_tie: float = 0.0

    @property
    def exact(self) -> bool:
        """Whether the export must reproduce the adapter model up to rounding (fp32 exports)."""
        return self.max_abs is not None or self.rounding is not None

    def at(self, reduction: int, scale: float, measured: float = 0.0) -> "Tolerance":
        """This tolerance for a model whose logits sum ``reduction`` terms (``reduction_length``) and
        whose reference logits reach ``scale`` in magnitude: max_abs and top1_tie from
        ``forward_tolerance``, or ``measured`` where that is larger: how far the adapter model's own
        fp32 forward is from its float64 one on the same examples (a tuner whose update is large
        and cancels, such as FourierFT's, rounds more than the logits' magnitude says). Unchanged
        when max_abs was given as a number."""
        if self.rounding is None or self.max_abs is not None:
            return self
        rule = forward_tolerance(self.rounding, reduction, scale)
        limit = max(rule, measured) if math.isfinite(measured) else rule  # a NaN rule stays NaN: nothing passes
        return dataclasses.replace(
            self, max_abs=limit, top1_tie=2 * limit,
            why=self.why + f" (here {limit:.3g}: reduction length {reduction}, largest |logit| {scale:.3g}, the "
                           f"adapter model's own fp32 forward {measured:.3g} from its float64 one)")


def tolerance(dtype: str, n_test: int, min_top1: Optional[float] = None, quantized: bool = False) -> Tolerance:
    if quantized:  # the reference is the same adapter on the full-precision base the export merges into
        slack = None
        why_metric = ("the task metric is compared with the run's (the adapter on the quantized base) and reported, "
                      "not gated: the export's full-precision base is not the quantized base the run tested; the "
                      "top-1 agreement with that model is gated in merge_report.json's quantization entry")
    else:
        slack = 1e-9 if dtype in ("float32", "float64") else 1.0 / max(n_test, 1) + 1e-9
        why_metric = "the task metric must not move" if slack < 1e-6 else "the task metric may move by one example"
    if dtype in ("float32", "float64"):  # the merge runs in fp32: a float64 export holds fp32-rounded weights
        return Tolerance(max_abs=None, rounding="float32", min_top1=min_top1 or 1.0, metric_slack=slack,
                         why="an fp32 merge changes nothing but rounding: every top-1 (bar near-ties within fp32 "
                             "rounding) and generation the same; " + why_metric + "; logits in a float64 forward "
                             f"within {FORWARD_SLACK:g} x eps(float32) x sqrt(reduction length) x largest |logit|")
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


def compare(reference: list[dict[str, torch.Tensor]], other: Iterable[dict[str, torch.Tensor]],
            tie: float = 0.0) -> dict[str, float]:
    """Logit errors over every real position; top-1 agreement at the answer positions (the
    task's tokens) and over every position. ``other`` may be lazy (``iter_logits``). A
    non-finite logit on either side makes the error infinite: NaN never passes a check.

    ``tie``: a position agrees when ``other``'s arg-max is, in the reference, within ``tie`` of the
    reference's largest logit (0: only where the reference ties exactly): two forward passes that
    differ by rounding may break a near-tie either way (``Tolerance.top1_tie``)."""
    max_err, max_ref = 0.0, 0.0
    agree = {"answer": [0, 0], "all": [0, 0]}  # agreeing positions, positions
    for ref, oth in zip(reference, other, strict=True):
        diff = torch.sub(ref["all"], oth["all"]).abs_()
        finite = bool(torch.isfinite(ref["all"]).all() and torch.isfinite(oth["all"]).all())
        max_err = max(max_err, float(diff.max()) if finite else math.inf)
        max_ref = max(max_ref, float(ref["all"].abs().max()))
        for key, counts in agree.items():
            picked = ref[key].gather(-1, oth[key].argmax(-1, keepdim=True)).squeeze(-1)
            same = (picked >= ref[key].amax(-1) - tie) & ~oth[key].isnan().any(-1)  # NaN: never the same
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
        if tol.exact and exact is not None:
            if tol.max_abs is None:
                raise ValueError("an fp32 merge's tolerance is scaled to the model (Tolerance.at) before it is used")
            if not exact <= tol.max_abs:
                found.append(f"{stage}: max logit error {exact:.3g} (float64 forward) > {tol.max_abs:g}")
        if not c["top1_agreement"] >= tol.min_top1:
            found.append(f"{stage}: top-1 agreement {c['top1_agreement']:.4f} < {tol.min_top1}")
        if tol.exact and "probes" in c and c["probes_identical"] != c["probes"]:
            differ = c["probes"] - c["probes_identical"]
            found.append(f"{stage}: {differ} of {c['probes']} {report['probe_name']} differ")
    ref, got = report["metrics"]["adapter"].get(metric), report["metrics"]["merged"].get(metric)
    if ref is not None and tol.metric_slack is not None and not abs(got - ref) <= tol.metric_slack:
        found.append(f"test {metric} {got:.4f} (merged) vs {ref:.4f} (adapter)")
    return found
