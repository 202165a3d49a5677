"""Merge a run's adapter into its base model, verify it, export it: the library behind
``peftlab-merge`` and ``merge_after``.

The merge runs in fp32 and casts once. Before anything is kept, the merged model is checked
against the adapter model (``verify.py``); the saved folder is reloaded with plain transformers
and checked again; only then is it renamed into place. A failed check raises
``VerificationError`` and leaves nothing behind.
"""

from __future__ import annotations

import gc
import logging
from pathlib import Path
from typing import Any, Optional

from peftlab.errors import ConfigError, PeftlabError
from peftlab.export.references import (
    QUANTIZATION_SLACK,
    TIMING,
    RunModels,
    head,
    measure_quantized,
    measure_reference,
    quantization_gap,
)
from peftlab.export.verify import (
    Evaluation,
    compare,
    evaluate_split,
    forward_ms,
    iter_logits,
    problems,
    same_predictions,
    tolerance,
)
from peftlab.memory import peak_rss_mb, reset_peak_rss
from peftlab.models import DTYPES
from peftlab.outputs import atomic_path, remove_stale_temps, write_json

log = logging.getLogger("peftlab.merge")


class VerificationError(PeftlabError):
    """The merged model does not reproduce the adapter model within tolerance."""


def check_mergeable(run_dir: Path, run) -> None:
    schema = type(run.method)
    if not schema.capabilities.mergeable:
        raise ConfigError(f"run_dir: method={run.method.name} cannot be merged: {schema.not_mergeable}; the "
                          f"adapter folder {run_dir / 'adapter'} is the deployable artefact")


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


def merge_run(run_dir: Path, run, out_dir: Path, dtype: Optional[str] = None, cache_dir: Optional[str] = None,
              verify_batches: int = 2, report_dir: Optional[Path] = None, max_test_examples: Optional[int] = None,
              min_top1: Optional[float] = None, adapter_test: Optional[Evaluation] = None) -> dict[str, Any]:
    """Merge ``run_dir``'s adapter into its base, verify, and write the merged model to ``out_dir``.

    ``adapter_test``: the adapter model's test metrics and predictions when the caller has just
    measured them on the same weights (training does), so the test split is not evaluated twice.

    What is checked, and where: the merged model in memory against the adapter on one chunk of
    validation examples (a cheap early failure before a whole model is written); the saved folder,
    reloaded with plain transformers, against the adapter on every verification batch (logits, in
    float64 too for fp32 exports), and on the whole test split (every prediction, and the metric)."""
    gc.collect()  # what the caller (a training job) has let go
    reset_peak_rss()
    run_dir, out_dir = Path(run_dir), Path(out_dir)
    check_mergeable(run_dir, run)
    if out_dir.exists():
        raise ConfigError(f"out_dir: {out_dir} already exists; it is never overwritten")
    remove_stale_temps(out_dir.parent, out_dir.name)  # what a killed merge left (a whole model)
    check_adapter_file(run_dir / "adapter")
    dtype = dtype or run.precision.dtype
    quantized = bool(run.precision.quantize)
    r = RunModels(run_dir, run, dtype, cache_dir, max_test_examples, quantized=quantized)
    batches = [b for _, b in zip(range(verify_batches), r.data.val_dataloader(), strict=False)]
    timing = head(batches[0], TIMING)
    quant: dict[str, Any] = {}
    if quantized:  # QLoRA: the adapter as trained, on the quantized base; then the full-precision base it merges into
        ref_q, base_q = measure_quantized(r, batches, adapter_test)
        r.adapter_model(dtype)
        with r.model.disable_adapter():
            quant = {"base": run.precision.quantize, "min_top1": quantization_gap(base_q, list(
                iter_logits(r.model, r.task, batches)))}
    ref = measure_reference(r, batches, dtype, None if quantized else adapter_test)
    if quantized:  # the metric the run tested (reported); the predictions the export must reproduce (fp adapter's)
        ref.test = Evaluation(ref_q.test.metrics, ref.test.predictions)
    report: dict[str, Any] = {"run_dir": str(run_dir), "out_dir": str(out_dir), "method": run.method.name,
                              "base_model": r.backbone.path, "dtype": dtype, "probe_name": r.task.probe_name}
    merged = unwrap_saved_modules((r.adapter_model("float32") if dtype != "float32" else r.model).merge_and_unload())
    merged = merged.to(DTYPES[dtype])  # merged in fp32 (in place: no second copy of the weights), cast once
    tokenizer = r.backbone.tokenizer
    checks = {"in_memory": compare(ref.logits[:1], iter_logits(merged, r.task, [timing]))}
    latency = {**ref.latency, "merged_ms": forward_ms(merged, timing, repeats=2, warm=True)}
    tol = tolerance(dtype, r.data.sizes()["test"], min_top1, quantized)
    compared = r.task.merge_metrics()
    try:
        # exact exports (fp32) must agree everywhere, so one chunk can fail them; a lossy dtype's
        # agreement share is judged over every batch, after the reload
        early = [] if tol.max_abs is None else problems(
            {"checks": checks, "metrics": {"adapter": {}, "merged": {}}}, tol, compared[0])
        if early:  # the merge itself is wrong: stop before a whole model is written
            report.update(tolerance=tol.__dict__, checks=checks, passed=False)
            raise VerificationError("merge verification failed: " + "; ".join(early))
        out_dir.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(out_dir) as tmp:
            merged.save_pretrained(tmp)
            tokenizer.save_pretrained(tmp)
            del merged
            r.model = r.backbone.model = None
            gc.collect()  # peft models hold reference cycles: free the merged weights before the reload
            reloaded = r.task.auto_class().from_pretrained(tmp, dtype=DTYPES[dtype], local_files_only=True,
                                                           **r.task.model_kwargs()).eval()
            checks["reloaded"] = compare(ref.logits, iter_logits(reloaded, r.task, batches))
            if ref.logits64 is not None:
                checks["reloaded"]["max_abs_error_fp64"] = compare(
                    ref.logits64, iter_logits(reloaded.double(), r.task, [timing]))["max_abs_error"]
                reloaded.float()
            merged_test = evaluate_split(reloaded, r.task, tokenizer, r.data.test_dataloader())
            checks["reloaded"].update(same_predictions(merged_test, ref.test))
            if quantized:  # what the export changes against the adapter model the run tested
                quant["vs_quantized_adapter"] = {**compare(ref_q.logits, iter_logits(reloaded, r.task, batches)),
                                                 **same_predictions(merged_test, ref_q.test)}
            report.update(
                tolerance=tol.__dict__, checks=checks,
                metrics={"adapter": _only(ref.test.metrics, compared), "merged": _only(merged_test.metrics, compared)},
                sizes_mb={"adapter": folder_mb(r.adapter), "merged": folder_mb(tmp)},
                latency=latency | {"merged_over_base": round(latency["merged_ms"] / latency["base_ms"], 3)},
                peak_rss_mb=round(peak_rss_mb(), 1),
                chat_template=bool(getattr(tokenizer, "chat_template", None)),
                **({"quantization": quant} if quant else {}),
            )
            found = problems(report, tol, compared[0])
            if quant and not quant["vs_quantized_adapter"]["top1_agreement"] >= quant["min_top1"]:
                found.append(f"vs the adapter on the {quant['base']} base: top-1 agreement "
                             f"{quant['vs_quantized_adapter']['top1_agreement']:.4f} < {quant['min_top1']:.4f}")
            report["passed"] = not found
            if found:
                raise VerificationError("merge verification failed: " + "; ".join(found))
            write_json(tmp / "merge_report.json", report)
    finally:
        if report_dir is not None and "checks" in report:
            write_json(Path(report_dir) / "merge_report.json", report)
    log.info("merged and verified\n%s", summary(report, compared[0]))
    return report


def unwrap_saved_modules(model):
    """Put each trained copy of a ``modules_to_save`` layer (a classification head) in place of its
    wrapper. peft 0.21's LN tuning merge leaves the wrappers in the merged model, whose saved folder
    then loads with a fresh, random head (tests/test_pins.py tells when this can go)."""
    from peft.utils import ModulesToSaveWrapper

    for name, module in list(model.named_modules()):
        if isinstance(module, ModulesToSaveWrapper):
            parent, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent) if parent else model, child,
                    module.modules_to_save[module.active_adapter])
    return model


def _only(metrics: dict[str, float], names: tuple[str, ...]) -> dict[str, float]:
    return {k: metrics[k] for k in names if k in metrics}


def summary(r: dict[str, Any], metric: str) -> str:
    c, m, lat = r["checks"]["reloaded"], r["metrics"], r["latency"]
    return "\n".join([
        f"  {r['method']} adapter of {r['run_dir']} merged into {r['base_model']} ({r['dtype']})",
        f"  reloaded merged vs adapter: max logit error {c['max_abs_error']:.3g} (relative {c['rel_error']:.3g})"
        + (f", in a float64 forward {c['max_abs_error_fp64']:.3g}" if "max_abs_error_fp64" in c else "")
        + f"; top-1 agreement at the answer positions {c['top1_agreement']:.4f}, "
        f"test {r['probe_name']} identical {c['probes_identical']}/{c['probes']}",
        f"  test {metric}: adapter {m['adapter'][metric]:.4f}, merged {m['merged'][metric]:.4f}",
        *([f"  vs the adapter on the {q['base']} base it trained on: top-1 agreement "
           f"{q['vs_quantized_adapter']['top1_agreement']:.4f} (at least {q['min_top1']:.4f}: the base's own "
           f"quantization shift less {QUANTIZATION_SLACK}), "
           f"max logit error {q['vs_quantized_adapter']['max_abs_error']:.3g}"]
          if (q := r.get("quantization")) else []),
        f"  forward latency: base {lat['base_ms']} ms, adapter {lat['adapter_unmerged_ms']} ms, merged "
        f"{lat['merged_ms']} ms (merged/base {lat['merged_over_base']})",
        f"  size on disk: adapter {r['sizes_mb']['adapter']} MiB, merged {r['sizes_mb']['merged']} MiB; "
        f"peak RSS {r['peak_rss_mb']} MiB",
        f"  merged model: {r['out_dir']}",
    ])
