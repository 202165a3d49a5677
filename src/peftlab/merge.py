"""``peftlab-merge``: merge a run's LoRA/IA3 adapter into its base model, verify, then export.

    peftlab-merge run_dir=outputs/runs/<stamp>                 # -> <run_dir>/merged/
    peftlab-merge run_dir=outputs/runs/<stamp> dtype=bfloat16 out_dir=exports/dates-bf16

The merge runs in fp32 and casts once. Before anything is kept, the merged model is checked
against the adapter model on the run's own validation batches (logit error, top-1 agreement),
greedy generations and the task metric on the test split; the saved folder is reloaded with plain
transformers and checked again. Only then is the folder renamed into place. A failed check exits
non-zero and leaves nothing behind; ``merge_report.json`` says what was measured.
"""

from __future__ import annotations

import gc
import logging
import shutil
import statistics
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator, Optional

import hydra
import torch
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from peftlab.callbacks import peak_rss_mb, reset_peak_rss
from peftlab.cli import run_app
from peftlab.config import CONF_DIR, validate
from peftlab.config.schema import MergeSchema, TrainSchema
from peftlab.data import TaskDataModule
from peftlab.data.sources import resolve_labels
from peftlab.errors import ConfigError, PeftlabError
from peftlab.methods import method_spec
from peftlab.models import DTYPES, auto_class, load_backbone
from peftlab.module import task_steps
from peftlab.outputs import write_json

log = logging.getLogger("peftlab.merge")


class VerificationError(PeftlabError):
    """The merged model does not reproduce the adapter model within tolerance."""


@dataclass
class Tolerance:
    # fp32 exports: the largest logit difference allowed, adapter model vs reloaded merged model,
    # both evaluated in float64 so that it measures the merge and not fp32 forward-pass rounding
    # (which alone moves SmolLM2's logits, of magnitude ~50, by ~1e-4 between two batch layouts)
    max_abs: Optional[float]
    min_top1: float  # share of answer positions whose arg-max agrees
    metric_slack: float  # how far the task metric may move (bf16/fp16: one example)


def tolerance(dtype: str, n_test: int, min_top1: Optional[float] = None) -> Tolerance:
    if dtype in ("float32", "float64"):
        return Tolerance(max_abs=1e-4, min_top1=min_top1 or 1.0, metric_slack=1e-9)
    return Tolerance(max_abs=None, min_top1=min_top1 or 0.99, metric_slack=1.0 / max(n_test, 1) + 1e-9)


# ------------------------------------------------------------------------------ checks of a run
def check_mergeable(run_dir: Path, run: TrainSchema) -> None:
    spec = method_spec(run.method.name)
    if run.method.name == "full":
        raise ConfigError(f"run_dir: method=full has nothing to merge: {run_dir / 'adapter'} already holds the "
                          "whole fine-tuned model")
    if not spec.mergeable:
        raise ConfigError(f"run_dir: method={run.method.name} cannot be merged: its virtual tokens are extra inputs, "
                          f"not weight updates; the adapter folder {run_dir / 'adapter'} is the deployable artefact "
                          "(PeftModel.from_pretrained)")


def check_adapter_file(adapter: Path) -> None:
    """A truncated or corrupted safetensors file fails here with its name, not deep inside peft."""
    from safetensors import safe_open

    path = adapter / "adapter_model.safetensors"
    if not path.is_file():
        raise ConfigError(f"run_dir: {path} is missing")
    try:
        with safe_open(str(path), framework="pt") as f:
            for key in f.keys():
                f.get_tensor(key)
    except Exception as err:  # safetensors raises several types for bad files
        raise ConfigError(f"{path}: corrupted or truncated ({str(err).splitlines()[0]})") from None


def folder_mb(path: Path) -> float:
    return round(sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file()) / 2**20, 2)


# ----------------------------------------------------------------------------------- measures
@torch.no_grad()
def iter_logits(model, batches: list[dict[str, Any]], task_type: str,
                chunk: int = 8) -> Iterator[dict[str, torch.Tensor]]:
    """Per ``chunk`` examples, the fp32 logits at every real (non-padding) position ("all") and at
    the answer positions, the ones that predict a labelled token ("answer"; for classification, the
    class logits). A few examples at a time: with a 50k-token vocabulary a batch's logits take
    hundreds of MiB, and the full (padded) logits are dropped before the caller sees a chunk."""
    for batch in batches:
        for start in range(0, len(batch["input_ids"]), chunk):
            b = {k: v[start:start + chunk] for k, v in batch.items() if isinstance(v, torch.Tensor)}
            logits = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits.float()
            if task_type == "seq_cls":
                out = {"all": logits, "answer": logits}
            else:
                out = {"all": logits[b["attention_mask"].bool()], "answer": logits[:, :-1][b["labels"][:, 1:] != -100]}
            del logits
            yield out


def logits_on(model, batches: list[dict[str, Any]], task_type: str) -> list[dict[str, torch.Tensor]]:
    """The reference logits, kept: ``iter_logits`` of every batch."""
    return list(iter_logits(model, batches, task_type))


def compare(reference: list[dict[str, torch.Tensor]], other: Iterable[dict[str, torch.Tensor]]) -> dict[str, float]:
    """Logit errors over every real position; top-1 agreement at the answer positions (the
    task's tokens) and over every position. ``other`` may be lazy (``iter_logits``): only one of
    its chunks is in memory at a time."""
    max_err, max_ref = 0.0, 0.0
    agree = {"answer": [0, 0], "all": [0, 0]}  # agreeing positions, positions
    for ref, oth in zip(reference, other, strict=True):
        max_err = max(max_err, float(torch.sub(ref["all"], oth["all"]).abs_().max()))
        max_ref = max(max_ref, float(ref["all"].max()), -float(ref["all"].min()))
        for key, counts in agree.items():
            same = ref[key].argmax(-1) == oth[key].argmax(-1)
            counts[0] += int(same.sum())
            counts[1] += same.numel()
    top1 = {key: a / n if n else float("nan") for key, (a, n) in agree.items()}
    return {"max_abs_error": max_err, "rel_error": max_err / max(max_ref, 1e-12),
            "top1_agreement": top1["answer"], "top1_agreement_all_positions": top1["all"]}


def test_metrics(model, steps, data: TaskDataModule) -> tuple[dict[str, float], list[str]]:
    """The task metrics on the test split, and the predictions (in order)."""
    metrics = steps.metrics(test=True)
    predictions = []
    with torch.no_grad():
        for batch in data.test_dataloader():
            predictions += [p["prediction"] for p in steps.evaluate(model, batch, metrics)]
    return {k: round(v, 6) for k, v in metrics.compute().items()}, predictions


def _head(batch: dict[str, Any], n: int) -> dict[str, Any]:
    return {k: v[:n] for k, v in batch.items()}


@torch.no_grad()
def forward_ms(model, batch: dict[str, Any], repeats: int = 3) -> float:
    """Median wall time of one forward pass over ``batch``, in milliseconds (after a warm-up)."""
    model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
        times.append((time.perf_counter() - start) * 1000)
    return round(statistics.median(times), 2)


# -------------------------------------------------------------------------------------- merge
def merge_run(run_dir: Path, run: TrainSchema, out_dir: Path, dtype: Optional[str] = None,
              cache_dir: Optional[str] = None, verify_batches: int = 2, report_dir: Optional[Path] = None,
              max_test_examples: Optional[int] = None, min_top1: Optional[float] = None,
              adapter_metrics: Optional[dict[str, float]] = None) -> dict[str, Any]:
    """Merge ``run_dir``'s adapter into its base, verify, and write the merged model to ``out_dir``.

    ``adapter_metrics``: the adapter model's test metrics when the caller has just measured them on
    the same weights (training does), so the test split is not evaluated twice."""
    from peft import PeftModel

    gc.collect()  # what the caller (a training job) has let go
    reset_peak_rss()
    run_dir, out_dir = Path(run_dir), Path(out_dir)
    check_mergeable(run_dir, run)
    if out_dir.exists():
        raise ConfigError(f"out_dir: {out_dir} already exists; it is never overwritten")
    adapter = run_dir / "adapter"
    check_adapter_file(adapter)
    dtype = dtype or run.precision.dtype
    task_type = run.data.task_type
    labels = resolve_labels(run.data) if task_type == "seq_cls" else None
    data_cfg = run.data if max_test_examples is None else _limit(run.data, max_test_examples)

    def adapter_model(load_dtype: str):
        torch.manual_seed(run.seed)  # a classification head not in the adapter is initialised the same
        bb = load_backbone(run.model, cache_dir or run.paths.cache_dir, task_type, load_dtype, labels)
        return PeftModel.from_pretrained(bb.model, adapter).eval(), bb

    # the reference: the adapter model as it would be deployed unmerged, in the export dtype
    model, backbone = adapter_model(dtype)
    tokenizer = backbone.tokenizer
    data = TaskDataModule(data_cfg, tokenizer, seed=run.seed, labels=labels)
    steps = task_steps(task_type, tokenizer, run.data.max_new_tokens, labels)
    batches = [b for _, b in zip(range(verify_batches), data.val_dataloader())]
    prompts = _head(batches[0], 16)  # greedy generations compared on these prompts
    timing = _head(batches[0], 8)  # forward latency measured on this batch
    ref_logits = logits_on(model, batches, task_type)
    exact = dtype in ("float32", "float64")
    exact_batch = [_head(batches[0], 8)]  # float64 forwards are slow on CPUs: a few examples suffice
    if exact:  # the same logits in float64: what the merge changes, free of fp32 forward-pass noise
        ref_logits64 = logits_on(model.double(), exact_batch, task_type)
        model.float()  # fp32 -> fp64 -> fp32 is lossless
    ref_gen = steps.generate(model, prompts["gen_input_ids"], prompts["gen_attention_mask"]) \
        if task_type == "causal_lm" else []
    ref_metrics = adapter_metrics if adapter_metrics is not None else test_metrics(model, steps, data)[0]
    latency = {"adapter_unmerged_ms": forward_ms(model, timing)}
    with model.disable_adapter():
        latency["base_ms"] = forward_ms(model, timing)
    if dtype != "float32":  # one copy of the weights at a time: the reference goes before the fp32 load
        del model, backbone
        model, backbone = adapter_model("float32")

    # merge in fp32 (in place: no second copy of the weights), then cast once
    merged = model.merge_and_unload()
    merged = merged.to(DTYPES[dtype])
    latency["merged_ms"] = forward_ms(merged, timing)
    tol = tolerance(dtype, data.sizes()["test"], min_top1)
    checks: dict[str, Any] = {"in_memory": _check(merged, steps, batches, prompts, ref_logits, ref_gen, task_type)}

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_dir.parent / f".{out_dir.name}.tmp-{uuid.uuid4().hex[:8]}"
    report: dict[str, Any] = {"run_dir": str(run_dir), "out_dir": str(out_dir), "method": run.method.name,
                              "base_model": backbone.path, "dtype": dtype}
    try:
        merged.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        del merged, model, backbone
        kwargs = {"num_labels": len(labels)} if labels else {}
        reloaded = auto_class(task_type).from_pretrained(tmp, dtype=DTYPES[dtype], local_files_only=True,
                                                          **kwargs).eval()
        checks["reloaded"] = _check(reloaded, steps, batches, prompts, ref_logits, ref_gen, task_type)
        if exact:
            checks["reloaded"]["max_abs_error_fp64"] = compare(
                ref_logits64, iter_logits(reloaded.double(), exact_batch, task_type))["max_abs_error"]
            reloaded.float()
        merged_metrics, _ = test_metrics(reloaded, steps, data)
        report.update(
            tolerance=tol.__dict__, checks=checks,
            metrics={"adapter": ref_metrics, "merged": merged_metrics},
            sizes_mb={"adapter": folder_mb(adapter), "merged": folder_mb(tmp)},
            latency=latency | {"merged_over_base": round(latency["merged_ms"] / latency["base_ms"], 3)},
            peak_rss_mb=round(peak_rss_mb(), 1),
            chat_template=bool(getattr(tokenizer, "chat_template", None)),
        )
        problems = _problems(report, tol)
        report["passed"] = not problems
        if problems:
            raise VerificationError("merge verification failed: " + "; ".join(problems))
        write_json(tmp / "merge_report.json", report)
        tmp.rename(out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        if report_dir is not None and "checks" in report:
            write_json(Path(report_dir) / "merge_report.json", report)
    log.info("merged and verified\n%s", summary(report))
    return report


def _limit(data_cfg, n: int):
    import dataclasses

    return dataclasses.replace(data_cfg, max_eval_examples=n)


def _check(model, steps, batches, prompts, ref_logits, ref_gen, task_type) -> dict[str, Any]:
    result = compare(ref_logits, iter_logits(model, batches, task_type))
    if task_type == "causal_lm":
        gen = steps.generate(model, prompts["gen_input_ids"], prompts["gen_attention_mask"])
        result["generations_identical"] = sum(a == b for a, b in zip(gen, ref_gen))
        result["generations"] = len(ref_gen)
    return result


def _problems(report: dict[str, Any], tol: Tolerance) -> list[str]:
    problems = []
    for stage, c in report["checks"].items():
        exact = c.get("max_abs_error_fp64")  # measured on the reloaded export of fp32 merges
        if tol.max_abs is not None and exact is not None and exact > tol.max_abs:
            problems.append(f"{stage}: max logit error {c['max_abs_error_fp64']:.3g} (float64 forward) > "
                            f"{tol.max_abs:g}")
        if c["top1_agreement"] < tol.min_top1:
            problems.append(f"{stage}: top-1 agreement {c['top1_agreement']:.4f} < {tol.min_top1}")
        if tol.max_abs is not None and c.get("generations_identical", 0) != c.get("generations", 0):
            problems.append(f"{stage}: {c['generations'] - c['generations_identical']} of {c['generations']} "
                            "greedy generations differ")
    for key, ref in report["metrics"]["adapter"].items():
        if key in ("exact_match", "accuracy"):
            got = report["metrics"]["merged"][key]
            if abs(got - ref) > tol.metric_slack:
                problems.append(f"test {key} {got:.4f} (merged) vs {ref:.4f} (adapter)")
    return problems


def summary(r: dict[str, Any]) -> str:
    c, m, lat = r["checks"]["reloaded"], r["metrics"], r["latency"]
    metric = next(k for k in ("exact_match", "accuracy", "loss") if k in m["adapter"])
    gens = f", greedy generations identical {c['generations_identical']}/{c['generations']}" if "generations" in c else ""
    return "\n".join([
        f"  {r['method']} adapter of {r['run_dir']} merged into {r['base_model']} ({r['dtype']})",
        f"  reloaded merged vs adapter: max logit error {c['max_abs_error']:.3g} (relative {c['rel_error']:.3g})"
        + (f", in a float64 forward {c['max_abs_error_fp64']:.3g}" if "max_abs_error_fp64" in c else "")
        + f"; top-1 agreement at the answer positions {c['top1_agreement']:.4f}{gens}",
        f"  test {metric}: adapter {m['adapter'][metric]:.4f}, merged {m['merged'][metric]:.4f}",
        f"  forward latency: base {lat['base_ms']} ms, adapter {lat['adapter_unmerged_ms']} ms, merged "
        f"{lat['merged_ms']} ms (merged/base {lat['merged_over_base']})",
        f"  size on disk: adapter {r['sizes_mb']['adapter']} MiB, merged {r['sizes_mb']['merged']} MiB; "
        f"peak RSS {r['peak_rss_mb']} MiB",
        f"  merged model: {r['out_dir']}",
    ])


def merge_cfg(cfg: DictConfig) -> dict[str, Any]:
    from peftlab.eval import load_run_config

    conf = validate(cfg, MergeSchema)
    run_dir = Path(conf.run_dir)
    run = load_run_config(run_dir)
    out_dir = Path(conf.out_dir) if conf.out_dir else run_dir / "merged"
    report_dir = Path(HydraConfig.get().runtime.output_dir) if HydraConfig.initialized() else None
    return merge_run(run_dir, run, out_dir, conf.dtype, conf.paths.cache_dir, conf.verify_batches, report_dir,
                     conf.max_test_examples, conf.min_top1)


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="merge")
def _hydra_main(cfg: DictConfig) -> None:
    merge_cfg(cfg)


def main() -> None:
    run_app(_hydra_main, "peftlab-merge")


if __name__ == "__main__":
    main()
