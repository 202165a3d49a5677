"""The dry runs of ``peftlab-eval``, ``-merge``, ``-combine``, ``-report``, ``-generate`` and
``-params`` (``--dry-run``): each runs the function its command runs to check everything before its
work (``one_source`` / ``many_sources``, ``merge_target``, ``combine_sources``, ``report_target`` and
``findings``, ``generate_inputs``, ``count``), then says what the command would do. No weights are
loaded and nothing is written: a report is computed in memory, a tokenizer is read where a command
would read one (engine/plan.py has the training run's dry run)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from omegaconf import DictConfig

import peftlab.methods  # noqa: F401  (registers the method schemas a run folder's config names)
from peftlab.config import validate
from peftlab.engine.plan import Plan, data_line, folder_line, hardware_line, precision_line
from peftlab.runs.folders import check_fresh_run_dir


def _run_line(run_dir: Path, run: Any) -> str:
    from peftlab.models import display_name

    return f"{run_dir}: {display_name(run.model)} + {run.method.name} on {run.data.name} (seed {run.seed})"


def _model_line(model: Any, cache_dir: str) -> str:
    """The model a command loads, and where from: its tokenizer is read, as the command reads it first."""
    from peftlab.models import display_name, load_tokenizer

    return f"{display_name(model)} <- {load_tokenizer(model, cache_dir)[1]}"


def eval_plan(cfg: DictConfig, out: Path) -> Plan:
    """``peftlab-eval --dry-run``."""
    from peftlab.config.commands import EvalSchema
    from peftlab.engine.evaluate import many_sources, one_source

    conf = validate(cfg, EvalSchema)
    check_fresh_run_dir(out)  # what the command's own folder must not hold
    writes = ("eval folder", f"{folder_line(out)}: eval.json, ")
    if conf.runs is not None:
        folders, runs, tasks = many_sources(conf)
        plan = [(f"run {i}", f"{_run_line(folder, run)}, scored on {task.data.name}/{conf.split}")
                for i, (folder, run, task) in enumerate(zip(folders, runs, tasks, strict=True))]
        return [*plan, ("hardware", hardware_line(conf.hardware)),
                (writes[0], writes[1] + "eval.md, predictions/ (one file a run)")]
    from peftlab.data.datamodule import TaskDataModule
    from peftlab.models import display_name, load_tokenizer

    run_dir, model_cfg, data_cfg, method, task = one_source(conf)
    tokenizer, source = load_tokenizer(model_cfg, conf.paths.cache_dir)
    data = TaskDataModule(task, tokenizer, seed=conf.seed, test_split=conf.split, limits={"test": conf.limit_batches})
    data.setup()  # the split read and encoded as the evaluation reads it
    plan = [("model", f"{display_name(model_cfg)} <- {source}")]
    if run_dir is not None:
        plan.append(("adapter", f"{run_dir / 'adapter'} (method={method})"))
    return [*plan, ("data", f"{data_line(data_cfg, data.sizes())}; scored on {conf.split}"),
            ("precision", precision_line(conf.precision)), ("hardware", hardware_line(conf.hardware)),
            (writes[0], writes[1] + "predictions.jsonl")]


def merge_plan(cfg: DictConfig, out: Path) -> Plan:
    """``peftlab-merge --dry-run``."""
    from peftlab.export import merge_target
    from peftlab.export.gguf import check_format, file_name

    conf, run, target = merge_target(cfg)
    run_dir = Path(conf.run_dir)
    check_format(run, conf.format, conf.dequantize, conf.paths.cache_dir)  # format=gguf: what the writer maps
    gguf = conf.format == "gguf"
    dtype = "float32" if gguf else conf.dtype or (
        run.precision.trainable_dtype if run.precision.split else run.precision.dtype)
    checks = (f"{conf.verify_batches} validation batches' logits, then every test prediction"
              + (f" of the first {conf.max_test_examples}" if conf.max_test_examples else "")
              + (f"; top-1 agreement >= {conf.min_top1}" if conf.min_top1 else ""))
    plan = [("run", _run_line(run_dir, run)), ("base model", _model_line(run.model, conf.paths.cache_dir)),
            ("merges", f"{run_dir / 'adapter'} in float32, exported in {dtype}"), ("verifies", checks)]
    if gguf:
        plan.append(("gguf", f"{file_name(run, conf.gguf_type)} ({conf.gguf_type}) written from the verified merge, "
                     "read back by transformers: the same greedy answers on the test split"
                     + (" required" if conf.gguf_type in ("f32", "f16") else ", their difference reported")))
    return [*plan, ("merged model", folder_line(target)), ("report copy", f"{folder_line(out)}: merge_report.json")]


def combine_plan(cfg: DictConfig, out: Path) -> Plan:
    """``peftlab-combine --dry-run``."""
    from peftlab.config.commands import CombineSchema
    from peftlab.engine.combine import combine_sources
    from peftlab.export.combine import options_used

    conf = validate(cfg, CombineSchema)
    check_fresh_run_dir(out)
    sources = combine_sources(conf)
    options = ", ".join(f"{k}={v}" for k, v in options_used(conf).items() if v is not None)
    plan = [(f"run {i}", f"{_run_line(s.run_dir, s.run)}, weight {s.weight:g}") for i, s in enumerate(sources)]
    plan += [("base model", _model_line(sources[0].run.model, conf.paths.cache_dir)), ("combines", options)]
    if conf.evaluate:
        scored = ", ".join(dict.fromkeys(s.run.data.name for s in sources))
        forgetting = f", and the loss on {conf.forgetting.text}" if conf.forgetting is not None else ""
        plan.append(("scores", f"the base, each source alone and the combination on the test split of {scored}"
                     + forgetting))
    return [*plan, ("folder", f"{folder_line(out)}: adapter/, combine.json" + (", combine.md" if conf.evaluate
                                                                                 else ""))]


def report_plan(cfg: DictConfig, out: Path) -> Plan:
    """``peftlab-report --dry-run``: the whole report computed in memory, none of its files written."""
    from peftlab.reporting import findings, report_target
    from peftlab.reporting.html import HTML_FILE
    from peftlab.reporting.plots import PLOT_FILES

    conf, inputs, target = report_target(cfg, out)
    found, analyses = findings(inputs, target, conf)
    files = ["results.md", "results.csv", "results.tex", *([HTML_FILE] if conf.html else []),
             *(PLOT_FILES if conf.plots else []), "report.json"]
    extra = [name for name, on in (("spectra", conf.spectra), ("subspace", conf.subspace), ("compare", conf.compare),
                                   ("equivalence", conf.equivalence is not None)) if on]
    return [("inputs", ", ".join(str(p) for p in inputs)),
            ("runs", f"{len(found.runs)} runs in {len(found.groups)} groups; primary metric {found.metric}"),
            ("analyses", ", ".join(extra) or "the tables and plots only"),
            ("report folder", f"{folder_line(target)}: {', '.join(files)}"
             + (" (replacing the report there)" if conf.overwrite else ""))]


def generate_plan(cfg: DictConfig, out: Path) -> Plan:
    """``peftlab-generate --dry-run``."""
    from peftlab.config.commands import GenerateSchema
    from peftlab.engine.generate import generate_inputs

    conf = validate(cfg, GenerateSchema)
    run, prompts = generate_inputs(conf)
    run_dir = Path(conf.run_dir)
    model = (f"{run_dir / 'merged'} (the merged model)" if conf.merged
             else f"{run_dir / 'adapter'} on {_model_line(run.model, conf.paths.cache_dir)}")
    tokens = conf.max_new_tokens or run.data.max_new_tokens
    sampling = f"sampled (temperature {conf.temperature}, top_p {conf.top_p})" if conf.do_sample else "greedy"
    asked = "prompts typed at the terminal" if prompts is None else f"{len(prompts)} prompt(s)"
    answers = f"{conf.out} (would be written)" if conf.out else "standard output"
    return [("run", _run_line(run_dir, run)), ("model", model),
            ("answers", f"{asked}, {sampling}, up to {tokens} new tokens each -> {answers}")]


def params_plan(cfg: DictConfig, out: Path) -> Plan:
    """``peftlab-params --dry-run``: the count itself needs no weights; params.json is not written."""
    from peftlab.config.commands import ParamsSchema
    from peftlab.engine.params import count
    from peftlab.engine.plan import params_line

    row = count(validate(cfg, ParamsSchema))
    return [("model", f"{row['model']} ({row['task_type']})"), ("method", params_line(row["method"], row)),
            ("folder", f"{folder_line(out)}: params.json")]
