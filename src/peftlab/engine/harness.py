"""The work of ``peftlab-harness``: lm-evaluation-harness's Hugging Face model (``HFLM``) on a run's
base with the run's adapter (lm-eval's own ``peft=`` loading), or on a merged folder, scoring any
installed lm-eval task and peftlab's own tasks exported as lm-eval configs (engine/harness_tasks.py).

Written into the command's own folder: ``eval.json`` (one row per run and task, the form
``peftlab-report scores=`` reads), ``harness.md``, ``samples/<run>-<task>.jsonl`` (every document's
response and score) and ``tasks/<run>/`` (the exported configs, which ``lm-eval --include_path``
reads as well). peftlab's own tasks read local files only; an installed lm-eval task reads its data
where lm-eval's config says (usually the hub: naming it is asking for the network)."""

from __future__ import annotations

import contextlib
import importlib
import logging
import math
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

import peftlab.methods  # noqa: F401  (registers the method schemas a run folder's config names)
from peftlab.config import validate
from peftlab.config.harness import OWN_TASKS, HarnessSchema
from peftlab.errors import ConfigError
from peftlab.runs.config import read_run_config
from peftlab.runs.files import atomic_path, write_json, write_jsonl
from peftlab.runs.folders import fresh_output_folder
from peftlab.runs.metrics import versions

log = logging.getLogger("peftlab.harness")
INSTALL = "pip install 'peftlab[harness]' (lm-eval 0.4.x)"


def require_lm_eval() -> Any:
    """The installed ``lm_eval`` package, or one line saying what to install."""
    try:
        return importlib.import_module("lm_eval")
    except ImportError:
        raise ConfigError(f"tasks: peftlab-harness runs lm-evaluation-harness, which is not installed: {INSTALL}") \
            from None


def harness_sources(conf: HarnessSchema) -> list[tuple[Path, Any]]:
    """(run folder, its config) for every run scored, every folder read and checked and every task
    name looked up before any model loads."""
    from peftlab.engine.adapters import expand_runs

    require_lm_eval()
    key = "run_dir" if conf.run_dir is not None else "runs"
    folders = [Path(conf.run_dir)] if conf.run_dir is not None else expand_runs(conf.runs)
    runs = [read_run_config(d, trust_remote_code=conf.trust_remote_code, key=key) for d in folders]
    for folder, run in zip(folders, runs, strict=True):
        weights(conf, folder, run)
    if conf.model_dir is not None and not (Path(conf.model_dir) / "config.json").is_file():
        raise ConfigError(f"model_dir: {conf.model_dir} is not a model folder (no config.json): give a merged folder "
                          "(peftlab-merge's out_dir, or <run_dir>/merged)")
    check_task_names(conf.tasks)
    return list(zip(folders, runs, strict=True))


def check_task_names(names: list[str]) -> None:
    """Every name that is not peftlab's own must be a task or group of the installed lm-eval (its
    whole task index is read for that, a few seconds)."""
    others = [n for n in names if n not in OWN_TASKS]
    if not others:
        return
    from lm_eval.tasks import TaskManager

    known = set(TaskManager().all_tasks)
    for name in others:
        if name not in known:
            raise ConfigError(f"tasks: lm-eval {require_lm_eval().__version__} has no task {name!r} (its tasks: "
                              f"lm-eval ls tasks; peftlab's own: {', '.join(OWN_TASKS)})")


def weights(conf: HarnessSchema, run_dir: Path, run: Any) -> dict[str, str]:
    """What lm-eval loads for a run, checked without building anything: ``peft=<adapter>`` on
    the run's base, ``{"pretrained": <folder>}`` for the whole model a full fine-tuning run saved,
    or ``model_dir=`` (a merged folder)."""
    key = "run_dir" if conf.run_dir is not None else "runs"
    if conf.model_dir is not None:
        return {"pretrained": str(Path(conf.model_dir).resolve())}
    if run.precision.quantize:
        raise ConfigError(f"{key}: {run_dir} trained on a {run.precision.quantize}-quantized base, which lm-eval's "
                          "peft= loading does not rebuild: score its merged folder (model_dir=<run_dir>/merged)")
    adapter = run_dir / "adapter"
    if (adapter / "adapter_config.json").is_file():
        return dict(peft=str(adapter.resolve()))
    if (adapter / "config.json").is_file():  # method=full: the whole fine-tuned model
        return {"pretrained": str(adapter.resolve())}
    raise ConfigError(f"{key}: {adapter} holds neither a peft adapter (adapter_config.json) nor a model "
                      "(config.json)")


def model_args(conf: HarnessSchema, run_dir: Path, run: Any) -> dict[str, Any]:
    """HFLM's arguments for a run (the base folder is built into the cache on first use)."""
    import torch

    from peftlab.models import resolve_path

    args = weights(conf, run_dir, run)
    if "pretrained" not in args:
        args["pretrained"] = resolve_path(run.model, conf.paths.cache_dir)
    return {**args, "device": "cuda" if torch.cuda.is_available() else "cpu", "dtype": "float32",
            "batch_size": conf.batch_size, "trust_remote_code": conf.trust_remote_code}


def harness_from_config(cfg: DictConfig, out_dir: Path) -> dict[str, Any]:
    """Score into ``out_dir``; returns what eval.json holds."""
    conf = validate(cfg, HarnessSchema)
    sources = harness_sources(conf)
    with fresh_output_folder(out_dir) as folder:
        rows: list[dict[str, Any]] = []
        for index, (run_dir, run) in enumerate(sources):
            rows += score_run(conf, index, run_dir, run, folder)
        report = {"split": conf.split, "tasks": list(conf.tasks), "runs": rows,
                  "lm_eval": require_lm_eval().__version__, "versions": versions()}
        table = harness_table(rows)
        with atomic_path(folder / "harness.md", overwrite=True) as tmp:
            tmp.write_text(table + "\n")
        write_json(folder / "eval.json", report)
    log.info("lm-eval %s on %d run(s)\n%s", report["lm_eval"], len(sources), table)
    log.info("written: %s", out_dir / "eval.json")
    return report


def score_run(conf: HarnessSchema, index: int, run_dir: Path, run: Any, out_dir: Path) -> list[dict[str, Any]]:
    """One run's rows: its model loaded once by lm-eval, peftlab's task with the run's prompt format,
    the other tasks with lm-eval's defaults."""
    from lm_eval.models.huggingface import HFLM

    from peftlab.engine.harness_tasks import write_own_task, write_text_task
    from peftlab.models import display_name, ensure_pad_token, load_tokenizer

    tokenizer = load_tokenizer(run.model, conf.paths.cache_dir)[0]
    tasks_dir = out_dir / "tasks" / str(index)
    tasks_dir.mkdir(parents=True)
    (out_dir / "samples").mkdir(exist_ok=True)
    own = {}
    if "peftlab" in conf.tasks:
        own["peftlab"] = write_own_task(run, tokenizer, conf.split, tasks_dir)
    if "peftlab_text" in conf.tasks:
        own["peftlab_text"] = write_text_task(run, tokenizer, tasks_dir)
    args = model_args(conf, run_dir, run)
    log.info("run %d: %s + %s <- %s", index, display_name(run.model), run.method.name, run_dir)
    lm = HFLM(**args)
    ensure_pad_token(lm.tokenizer)
    results: dict[str, Any] = {"results": {}, "samples": {}}
    if "peftlab" in own:  # the run's prompt format: its chat template (applied by lm-eval) and system prompt
        task = own["peftlab"]
        lm.add_bos_token = False if task.chat else None  # a chat template writes its own special tokens
        _merge(results, _evaluate(conf, lm, [task.name], tasks_dir, chat=task.chat, system=task.system))
    rest = [own[n].name if n in own else n for n in conf.tasks if n != "peftlab"]
    if rest:
        lm.add_bos_token = None
        _merge(results, _evaluate(conf, lm, rest, tasks_dir, chat=False, system=None))
    rows = []
    for name, numbers in results["results"].items():
        samples = results["samples"].get(name, [])
        rows.append({"run_dir": str(run_dir), "model": display_name(run.model), "method": run.method.name,
                     "task": name, "metrics": _metrics(numbers), "documents": len(samples)})
        write_jsonl(out_dir / "samples" / f"{index}-{name}.jsonl", [_sample(s) for s in samples])
    return rows


def _evaluate(conf: HarnessSchema, lm: Any, tasks: list[str], tasks_dir: Path, chat: bool, system: Any) -> dict:
    import lm_eval
    from lm_eval.tasks import TaskManager

    from peftlab.data.sources import hub_offline

    own = {p.stem for p in tasks_dir.glob("*.yaml")}
    manager = TaskManager(include_path=str(tasks_dir), include_defaults=not set(tasks) <= own)
    options = dict(model=lm, tasks=tasks, task_manager=manager, num_fewshot=conf.num_fewshot, limit=conf.limit,
                   apply_chat_template=chat, system_instruction=system, log_samples=True, bootstrap_iters=0,
                   random_seed=conf.seed, numpy_random_seed=conf.seed, torch_random_seed=conf.seed,
                   fewshot_random_seed=conf.seed)
    with hub_offline() if set(tasks) <= own else contextlib.nullcontext():  # peftlab's own: local files only
        return lm_eval.simple_evaluate(**options)


def _merge(into: dict[str, Any], results: dict[str, Any]) -> None:
    into["results"].update(results["results"])
    into["samples"].update(results.get("samples", {}))


def _metrics(numbers: dict[str, Any]) -> dict[str, float]:
    """lm-eval's ``<metric>,<filter>`` keys as ``<metric>`` (filter none) or ``<metric>/<filter>``."""
    out = {}
    for key, value in numbers.items():
        if "," not in key or not isinstance(value, (int, float)) or isinstance(value, bool):
            continue
        metric, filt = key.split(",", 1)
        if math.isfinite(value):
            out[metric if filt == "none" else f"{metric}/{filt}"] = float(value)
    return out


def _sample(sample: dict[str, Any]) -> dict[str, Any]:
    """A document's record: its target, the response after lm-eval's filters, and its scores."""
    skip = {"doc", "arguments", "resps", "filtered_resps", "doc_hash", "prompt_hash", "target_hash", "filter"}
    response = sample.get("filtered_resps")
    row = {"doc_id": sample.get("doc_id"), "target": sample.get("target"),
           "response": response[0] if isinstance(response, list) and len(response) == 1 else response}
    row.update({k: v for k, v in sample.items() if k not in skip and k not in row and not isinstance(v, (dict, list))})
    return row


def harness_table(rows: list[dict[str, Any]]) -> str:
    from peftlab.reporting.escape import md  # what a run folder names is text, never markup

    lines = ["| run | method | task | metric | value |", "|---|---|---|---|---:|"]
    for r in rows:
        for metric, value in r["metrics"].items():
            if not metric.endswith("_stderr"):
                lines.append(f"| {md(r['run_dir'])} | {md(r['method'])} | {md(r['task'])} | {md(metric)} | "
                             f"{value:.4f} |")
    return "\n".join(lines)


def harness_plan(cfg: DictConfig, out: Path) -> list[tuple[str, str]]:
    """``peftlab-harness --dry-run``: every check the command makes before a model loads, then what it
    would score and write."""
    from peftlab.engine.plan import folder_line
    from peftlab.models import display_name
    from peftlab.runs.folders import check_fresh_run_dir

    conf = validate(cfg, HarnessSchema)
    check_fresh_run_dir(out)
    plan = []
    for i, (run_dir, run) in enumerate(harness_sources(conf)):
        args = weights(conf, run_dir, run)
        loads = args.get("pretrained") or f"the base ({display_name(run.model)}) with peft={args['peft']}"
        plan.append((f"run {i}", f"{run_dir}: {run.method.name} on {run.data.name}; lm-eval loads {loads}"))
    return [*plan, ("tasks", ", ".join(conf.tasks) + f" (split {conf.split}" + (f", at most {conf.limit} documents"
                                                                                 if conf.limit else "") + ")"),
            ("harness folder", f"{folder_line(out)}: eval.json, harness.md, samples/, tasks/")]
