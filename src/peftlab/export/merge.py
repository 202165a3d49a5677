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
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from peftlab.errors import ConfigError, PeftlabError
from peftlab.export.card import merged_card
from peftlab.export.gguf import check_format
from peftlab.export.gguf_verify import export_gguf, summary_lines
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
    forward_ms,
    iter_logits,
    problems,
    reduction_length,
    same_predictions,
    score_split,
    tolerance,
)
from peftlab.methods.serving import COLUMN, serving_verdict
from peftlab.models import DTYPES
from peftlab.runs.config import check_adapter_files, read_adapter_config
from peftlab.runs.files import atomic_path, remove_stale_temps, write_json
from peftlab.runs.memory import peak_rss_mb, reset_peak_rss

log = logging.getLogger("peftlab.merge")


class VerificationError(PeftlabError):
    """The merged model does not reproduce the adapter model within tolerance."""


def check_mergeable(run_dir: Path, run) -> None:
    if not run.method.capabilities.mergeable:
        raise ConfigError(f"run_dir: method={run.method.name} cannot be merged: {run.method.not_mergeable}; the "
                          f"adapter folder {run_dir / 'adapter'} is the deployable artefact")


def folder_mb(path: Path) -> float:
    return round(sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file()) / 2**20, 2)


@dataclass(frozen=True)
class MergeOptions:
    """How a merge is made and checked (peftlab-merge's options; training's merge takes the defaults)."""

    dtype: Optional[str] = None  # the merged model's dtype; None: the dtype the run trained in
    cache_dir: Optional[str] = None  # where the base model is cached; None: the run's paths.cache_dir
    verify_batches: int = 2  # validation batches whose logits are compared
    max_test_examples: Optional[int] = None  # None: the whole test split for the prediction check
    min_top1: Optional[float] = None  # top-1 agreement required; None: 1.0 for fp32, 0.99 for bf16/fp16
    format: str = "safetensors"  # or gguf: one .gguf file (export/gguf.py), merged and checked in float32 first
    gguf_type: str = "f16"  # format=gguf: the precision of the file's matrices
    dequantize: bool = False  # format=gguf of a run on an 8/4-bit base: merge into the full-precision base


def merge_run(run_dir: Path, run, out_dir: Path, options: MergeOptions = MergeOptions(),
              report_dir: Optional[Path] = None, adapter_test: Optional[Evaluation] = None) -> dict[str, Any]:
    """Merge ``run_dir``'s adapter into its base, verify, and write the merged model to ``out_dir``;
    returns merge_report.json (also written to ``report_dir`` when given, passed or not).

    ``adapter_test``: the adapter model's test metrics and predictions when the caller has just
    measured them on the same weights (training does), so the test split is not evaluated twice."""
    job = MergeJob(Path(run_dir), run, Path(out_dir), options, adapter_test)
    try:
        return job.run()
    finally:
        if report_dir is not None and "checks" in job.report:
            write_json(Path(report_dir) / "merge_report.json", job.report)


class MergeJob:
    """A merge as named steps: check what can be checked first, load the adapter model, measure it
    once, merge in fp32 and check the merge in memory on one chunk (a cheap early failure before a
    whole model is written), then export, reload with plain transformers and check again on every
    verification batch (logits, in float64 too for fp32 exports) and on the whole test split (every
    prediction, and the metric), and only then rename the export into place."""

    def __init__(self, run_dir: Path, run, out_dir: Path, options: MergeOptions, adapter_test: Optional[Evaluation]):
        self.run_dir, self.conf, self.out_dir = run_dir, run, out_dir
        self.options, self.adapter_test = options, adapter_test
        # bf16_base: the export is the fp32 base with the fp32 adapter merged in (merge.dtype=bfloat16 for a bf16 one)
        self.dtype = options.dtype or (run.precision.trainable_dtype if run.precision.split else run.precision.dtype)
        self.gguf = options.format == "gguf"
        if self.gguf:  # the GGUF is written from the float32 merge, verified first as every merge is
            self.dtype = "float32"
        self.quantized = bool(run.precision.quantize)
        self.report: dict[str, Any] = {}
        self.quant: dict[str, Any] = {}

    def run(self) -> dict[str, Any]:
        gc.collect()  # what the caller (a training job) has let go
        reset_peak_rss()
        self.check()
        self.load()
        self.measure_adapter()
        merged = self.merge_in_memory()
        self.export(merged)
        log.info("merged and verified\n%s", summary(self.report, self.compared[0]))
        return self.report

    def check(self) -> None:
        check_mergeable(self.run_dir, self.conf)
        if self.out_dir.exists():
            raise ConfigError(f"out_dir: {self.out_dir} already exists; it is never overwritten")
        check_format(self.conf, self.options.format, self.options.dequantize, self.options.cache_dir)
        remove_stale_temps(self.out_dir.parent, self.out_dir.name)  # what a killed merge left (a whole model)
        check_adapter_files(self.run_dir / "adapter", "run_dir")

    def load(self) -> None:
        o = self.options
        self.r = RunModels(self.run_dir, self.conf, self.dtype, o.cache_dir, o.max_test_examples,
                           quantized=self.quantized)
        self.batches = [b for _, b in zip(range(o.verify_batches), self.r.data.val_dataloader(), strict=False)]
        self.timing = head(self.batches[0], TIMING)
        self.tol = tolerance(self.dtype, self.r.data.sizes()["test"], o.min_top1, self.quantized)
        self.compared = self.r.task.merge_metrics()
        self.report = {"run_dir": str(self.run_dir), "out_dir": str(self.out_dir), "method": self.conf.method.name,
                       "base_model": self.r.backbone.path, "dtype": self.dtype, "probe_name": self.r.task.probe_name,
                       # whether vLLM / SGLang serve the run's adapter as a LoRA (methods/serving.py)
                       "served_as_lora": serving_verdict(read_adapter_config(self.run_dir / "adapter", "run_dir"))}

    def measure_adapter(self) -> None:
        """The reference, measured once. QLoRA: the adapter as trained, on the quantized base, then
        on the full-precision base it merges into (the predictions the export must reproduce)."""
        r = self.r
        if self.quantized:
            self.ref_q, base_q = measure_quantized(r, self.batches, self.adapter_test)
            r.adapter_model(self.dtype)
            with r.model.disable_adapter():
                self.quant = {"base": self.conf.precision.quantize, "min_top1": quantization_gap(base_q, list(
                    iter_logits(r.model, r.task, self.batches)))}
        self.ref = measure_reference(r, self.batches, self.dtype, None if self.quantized else self.adapter_test)
        if self.quantized:  # the metric the run tested (reported); the predictions the fp adapter makes
            self.ref.test = Evaluation(self.ref_q.test.metrics, self.ref.test.predictions)
        if self.ref.logits64 is not None:  # fp32 exports: the rounding allowed, for this model's size and logits
            scale = max(float(x["all"].abs().max()) for x in self.ref.logits64)
            own = compare(self.ref.logits64, iter(self.ref.logits[:1]))["max_abs_error"]  # the same chunk, in fp32
            self.tol = self.tol.at(reduction_length(r.model.config), scale, own)

    def merge_in_memory(self):
        """merge_and_unload in fp32 (in place: no second copy of the weights), cast once, checked on
        one chunk; an exact export (fp32) that fails here stops before a whole model is written."""
        r = self.r
        model = r.adapter_model("float32") if self.dtype != "float32" else r.model
        merged = unwrap_saved_modules(model.merge_and_unload()).to(DTYPES[self.dtype])
        self.checks = {"in_memory": compare(self.ref.logits[:1], iter_logits(merged, r.task, [self.timing]),
                                            tie=self.tol.top1_tie)}
        self.latency = {**self.ref.latency, "merged_ms": forward_ms(merged, self.timing, repeats=2, warm=True)}
        # a lossy dtype's agreement share is judged over every batch, after the reload
        early = [] if not self.tol.exact else problems(
            {"checks": self.checks, "metrics": {"adapter": {}, "merged": {}}}, self.tol, self.compared[0])
        if early:
            self.report.update(tolerance=self.tol.__dict__, checks=self.checks, passed=False)
            raise VerificationError("merge verification failed: " + "; ".join(early))
        return merged

    def export(self, merged) -> None:
        """Save into a temporary folder, reload it with plain transformers, verify, rename into place."""
        r, tokenizer = self.r, self.r.backbone.tokenizer
        self.out_dir.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(self.out_dir) as out:
            tmp = out / ".safetensors" if self.gguf else out  # format=gguf: the file is written from this folder
            merged.save_pretrained(tmp)
            tokenizer.save_pretrained(tmp)
            del merged
            r.model = r.backbone.model = None
            gc.collect()  # peft models hold reference cycles: free the merged weights before the reload
            reloaded = r.task.auto_class().from_pretrained(tmp, dtype=DTYPES[self.dtype], local_files_only=True,
                                                           **r.task.model_kwargs()).eval()
            merged_test = self.verify_reloaded(reloaded)
            self.report.update(
                tolerance=self.tol.__dict__, checks=self.checks,
                metrics={"adapter": _only(self.ref.test.metrics, self.compared),
                         "merged": _only(merged_test.metrics, self.compared)},
                sizes_mb={"adapter": folder_mb(r.adapter), "merged": folder_mb(tmp)},
                latency=self.latency | {"merged_over_base": round(self.latency["merged_ms"] / self.latency["base_ms"],
                                                                  3)},
                peak_rss_mb=round(peak_rss_mb(), 1),
                chat_template=bool(getattr(tokenizer, "chat_template", None)),
                **({"quantization": self.quant} if self.quant else {}),
            )
            found = problems(self.report, self.tol, self.compared[0])
            q = self.quant
            if q and not q["vs_quantized_adapter"]["top1_agreement"] >= q["min_top1"]:
                found.append(f"vs the adapter on the {q['base']} base: top-1 agreement "
                             f"{q['vs_quantized_adapter']['top1_agreement']:.4f} < {q['min_top1']:.4f}")
            if self.gguf and not found:  # the GGUF beside the safetensors export it is written from
                self.report["gguf"], more = export_gguf(reloaded, tokenizer, out, self)
                shutil.rmtree(tmp)
                found += more
            self.report["passed"] = not found
            if found:
                raise VerificationError("merge verification failed: " + "; ".join(found))
            write_json(out / "merge_report.json", self.report)
            merged_card(out, self.out_dir, self.conf, self.run_dir, self.report)  # README.md, the model card

    def verify_reloaded(self, reloaded) -> Evaluation:
        """The reloaded export against the reference: logits on every verification batch (float64 too
        for fp32 exports), and every test prediction; returns its test evaluation."""
        r, ref = self.r, self.ref
        checks = self.checks["reloaded"] = compare(ref.logits, iter_logits(reloaded, r.task, self.batches),
                                                   tie=self.tol.top1_tie)
        if ref.logits64 is not None:
            checks["max_abs_error_fp64"] = compare(
                ref.logits64, iter_logits(reloaded.double(), r.task, [self.timing]))["max_abs_error"]
            reloaded.float()
        merged_test = score_split(reloaded, r.task, r.backbone.tokenizer, r.data.test_dataloader())
        checks.update(same_predictions(merged_test, ref.test))
        if self.quantized:  # what the export changes against the adapter model the run tested
            self.quant["vs_quantized_adapter"] = {**compare(self.ref_q.logits, iter_logits(reloaded, r.task,
                                                                                         self.batches)),
                                                  **same_predictions(merged_test, self.ref_q.test)}
        return merged_test


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
        f"  {COLUMN}, the run's adapter: {r.get('served_as_lora', 'not stated')}",
        *(summary_lines(r, metric) if "gguf" in r else []),
        f"  merged model: {r['out_dir']}{'/' + r['gguf']['file'] if 'gguf' in r else ''} (model card: README.md)",
    ])
