"""The work of ``peftlab-train`` and ``peftlab.train()``: validate the config, check everything that
can be checked before any work, hold the run folder, run the job (engine/job.py), record it in
metrics.json, and merge and verify right after training.

The libraries that train (torch, Lightning, transformers, peft) load once the config is valid, so
a bad override fails within a second.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Optional

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

import peftlab.methods  # noqa: F401  (registers the method plug-ins)
from peftlab.config import validate
from peftlab.config.commands import TrainSchema
from peftlab.engine.distributed import SECONDARY
from peftlab.engine.forgetting import text_path
from peftlab.engine.precision import resolve_auto
from peftlab.errors import ConfigError, PeftlabError, SweepRefused
from peftlab.objectives import make_objective
from peftlab.runs.folders import check_fresh_run_dir, discard_unstarted_run_dir
from peftlab.runs.locks import folder_lock
from peftlab.runs.metrics import write_metrics
from peftlab.runs.resume import resume_args
from peftlab.runs.sweeps import in_multirun
from peftlab.tasks import Task, make_task

log = logging.getLogger("peftlab.train")

# numbers every run reports, whatever its task (dotted metrics.json keys)
RUN_NUMBERS = ("train.steps", "train.wall_s", "train.tokens_per_s", "memory.peak_rss_mb", "params.trainable",
               "params.total", "params.trainable_pct")


def train_from_config(cfg: DictConfig, run_dir: Path) -> dict[str, Any]:
    """Run one training job from a composed config into ``run_dir``; returns its metrics.json."""
    run_dir = Path(run_dir)
    as_recorded(cfg)
    if SECONDARY:  # a second process of a distributed run: it computes with the first, which writes
        conf, task, objective = checked(cfg)
        return _job(conf, cfg, run_dir, task, objective)
    with folder_lock(run_dir):  # outside the clean-up below: a folder another command holds is never touched
        try:
            conf, task, objective = checked(cfg)
            check_run_folder(conf, run_dir)
            metrics = _job(conf, cfg, run_dir, task, objective)
        except PeftlabError:
            discard_unstarted_run_dir(run_dir)
            raise
        if "status" not in metrics:  # a smoke test (fast_dev_run), or a process that does not write
            return metrics
        write_metrics(run_dir, metrics)
        log.info("done\n%s", summary(metrics, task, run_dir))
        # after the job has returned, so that the training model, optimizer and trainer are freed: the
        # merge loads the saved adapter afresh
        if conf.merge_after and metrics.get("adapter") and conf.method.capabilities.mergeable:
            metrics["merge"] = merge_after(conf, run_dir, metrics)
            write_metrics(run_dir, metrics)
    return metrics


def as_recorded(cfg: DictConfig) -> None:
    """``cfg`` as the run records it (the dry run checks it so too): naming every plug-in it runs
    with, entry points too, and a local data file named from this folder by its absolute path."""
    from omegaconf import OmegaConf, open_dict

    from peftlab.config.user_plugins import loaded

    with open_dict(cfg):  # the run's config names every plug-in it ran with: entry points too
        cfg.plugins = sorted(loaded())
        local = Path(str(OmegaConf.select(cfg, "data.path", default="") or "")).expanduser()
        if str(local) and not local.is_absolute() and local.exists():  # a local file named from this folder:
            cfg.data.path = str(local.resolve())  # the run's config names it wherever it is read from


def resume_command_line(argv: list[str]) -> list[str]:
    """``resume=<folder>`` as the command line that continues the run (runs/resume.py), checked
    before Hydra writes anything: the data files its checkpoint was trained on are unchanged."""
    resumed = resume_args(argv)
    if resumed is not argv:
        from peftlab.data.sources import file_sha256
        from peftlab.engine.checkpoints import read_checkpoint
        from peftlab.runs.resume import check_same_data

        checkpoint = next(a.split("=", 1)[1] for a in resumed if a.startswith("resume_from="))
        saved = read_checkpoint(checkpoint).get("data_fingerprint") or {}
        check_same_data(saved, {p: file_sha256(p) for p in saved if Path(p).is_file()})
    return resumed


def checked(cfg: DictConfig) -> tuple[TrainSchema, Task, str]:
    """The validated config, its task and the objective key, once everything about the run that can
    be checked before any work has been: every problem found is in the one error."""
    conf = validate(resolve_auto(cfg), TrainSchema)
    task = make_task(conf.data, run=conf)
    problems = [*one_process_per_job(conf), *task.check(conf), *make_objective(task, conf).check(conf),
                *validation_problems(conf)]
    if conf.forgetting is not None:
        try:
            text_path(conf.forgetting.text)
        except ConfigError as err:
            problems.append(str(err))
    if problems:
        raise ConfigError("; ".join(problems))
    objective = objective_key(conf, task)
    if in_multirun():
        from hydra.core.hydra_config import HydraConfig

        refused = tuning_on_test(objective, conf.tune_on_test, str(HydraConfig.get().sweeper.get("_target_", "")))
        if refused:
            raise ConfigError(refused)
    return conf, task, objective


def check_run_folder(conf: TrainSchema, run_dir: Path) -> bool:
    """The run folder holds no finished run; resuming in place (returned: whether the run continues
    in its own folder), an adapter a kill left is allowed."""
    in_place = bool(conf.resume_from) and Path(conf.resume_from).resolve().is_relative_to(Path(run_dir).resolve())
    check_fresh_run_dir(run_dir, resuming=in_place)
    return in_place


def _job(conf: TrainSchema, cfg: DictConfig, run_dir: Path, task: Task, objective: str) -> dict[str, Any]:
    from peftlab.engine.callbacks import Diverged
    from peftlab.engine.job import TrainingJob  # the heavy libraries, once the config is valid

    try:
        return TrainingJob(conf, cfg, run_dir, task, objective).run()
    except Diverged as err:
        if err.record is not None:
            write_metrics(run_dir, err.record)
        raise Diverged(err.step, f"{err.what}; {err.note}") from None


def objective_key(conf: TrainSchema, task: Task) -> str:
    """The metrics.json key a sweeper optimises: ``objective``, or the task's primary validation
    metric (its test metric where validation is off)."""
    validated = conf.trainer.limit_val_batches != 0
    if conf.objective is None:
        return f"{'val' if validated else 'test'}.{task.primary_metric}"
    splits = [s for s, on in (("val", validated), ("test", conf.test), ("zero_shot", conf.zero_shot)) if on]
    known = [f"{s}.{m}" for s in splits for m in task.metric_names] + list(RUN_NUMBERS)
    if conf.objective not in known:
        raise ConfigError(f"objective: {conf.objective!r} is not a number this run reports "
                          f"(known: {', '.join(known)})")
    return conf.objective


# sweepers that never choose a setting by the objective: Hydra's grid, and the seed budget (which
# decides how many seeds to run by its own metric, under a rule that keeps its intervals honest)
GRID_SWEEPERS = ("BasicSweeper", "SeedBudgetSweeper")


def tuning_on_test(objective: str, allowed: bool, sweeper_target: str) -> Optional[str]:
    """A sweeper that chooses (optuna, tune_then_test, any but a grid) must not choose by the test
    split: the test figures of what it chose would be optimistic. ``tune_on_test=true`` (``allowed``)
    lets it, said in metrics.json and on every report."""
    sweeper = sweeper_target.rsplit(".", 1)[-1]
    if allowed or not objective.startswith(("test.", "zero_shot.")) or sweeper in GRID_SWEEPERS:
        return None
    return (f"objective={objective}: the sweeper ({sweeper}) would choose by the test split, so the test "
            "figures of what it chooses would be optimistic; optimise a validation metric (the default, val.<primary "
            "metric>), or set tune_on_test=true to do it anyway (said in metrics.json and on every report)")


class SweepObjectiveCheck(Callback):
    """Before the first job of a sweep (a Hydra callback, set in conf/train.yaml): a sweeper that
    chooses is not handed a test.* objective, and a seed budget's settings are checked. Each job
    checks its own composed config again."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        objective = config.get("objective")
        if objective is None and config.trainer.get("limit_val_batches") == 0:
            objective = "test.<primary metric> (the default where validation is off)"
        sweeper = str(config.hydra.sweeper.get("_target_", ""))
        refused = tuning_on_test(str(objective or ""), bool(config.get("tune_on_test")), sweeper)
        if refused:  # Hydra would turn a ConfigError from a callback into a warning and start the sweep
            raise SweepRefused(ConfigError(refused))
        if sweeper.endswith(".SeedBudgetSweeper"):  # its budget, grid, seeds and metric, before its sweep folder
            from hydra_plugins.peftlab_sweeps.seed_budget_sweeper import check_before_sweep

            try:
                check_before_sweep(config)
            except ConfigError as err:
                raise SweepRefused(err) from None


def validation_problems(conf: TrainSchema) -> list[str]:
    """``validation.*`` settings that need validation checks, and what best-checkpoint selection cannot do."""
    v, problems = conf.validation, []
    if conf.trainer.limit_val_batches == 0:
        for key, value, default in (("metrics", v.metrics, "end"), ("select", v.select, "last")):
            if value != default:
                problems.append(f"validation.{key}={value} needs validation checks, which "
                                "trainer.limit_val_batches=0 switches off")
    if v.select == "best" and conf.hardware.strategy == "fsdp":
        problems.append("validation.select=best: hardware=fsdp shards the weights, which are not put back from the "
                        "best check's file; use validation.select=last (or hardware=ddp)")
    return problems


def one_process_per_job(conf: TrainSchema) -> list[str]:
    """A distributed job starts its own processes: Lightning re-runs the command line, which in a
    local sweep is the whole sweep. SLURM's launcher can host it: each job's processes are SLURM tasks.
    (The sweep's command line is refused before launching already: commands/cli.py; this is the job's
    own check, in the same words.)"""
    if not in_multirun():
        return []
    import dataclasses

    from hydra.core.hydra_config import HydraConfig

    from peftlab.runs.launcher import distributed_refusal

    hydra = HydraConfig.get()
    why = distributed_refusal(dataclasses.asdict(conf.hardware), hydra.runtime.choices.get("hydra/launcher", "?"),
                              str(hydra.launcher.get("_target_", "")))
    return [why] if why else []


def merge_after(conf: TrainSchema, run_dir: Path, metrics: dict[str, Any]) -> dict[str, Any]:
    """The verified merge of peftlab-merge, right after training; its outcome goes to metrics.json
    (a failed verification too, before the error goes on)."""
    from peftlab.export.merge import MergeOptions, VerificationError, merge_run
    from peftlab.export.verify import Evaluation

    # the test predictions the job has just written: the merged model must reproduce every one. A
    # test limited to some batches (trainer.limit_test_batches) covers less: the merge then
    # evaluates the adapter on the whole split itself
    predictions = [json.loads(line)["prediction"]
                   for line in (run_dir / "test_predictions.jsonl").read_text().splitlines() if line.strip()]
    # bf16_base: the run tested its adapter on the bf16 base; the export is checked against the same
    # adapter on the fp32 base it merges into, which the merge measures itself
    whole = len(predictions) == metrics["data"]["test"] and not conf.precision.split
    try:
        report = merge_run(run_dir, conf, run_dir / "merged", MergeOptions(), report_dir=run_dir,
                           adapter_test=Evaluation(metrics["test"], predictions) if whole else None)
    except VerificationError as err:
        write_metrics(run_dir, {**metrics, "merge": {"passed": False, "error": str(err)}})
        raise
    checks = report["checks"]["reloaded"]
    return {"passed": report["passed"], "out_dir": report["out_dir"], "max_abs_error": checks["max_abs_error"],
            "max_abs_error_fp64": checks.get("max_abs_error_fp64"),
            "top1_agreement": checks["top1_agreement"], "merged_test": report["metrics"]["merged"],
            "latency_merged_over_base": report["latency"]["merged_over_base"]}


def summary(m: dict[str, Any], task: Task, run_dir: Path) -> str:
    """The finished run in a few lines, for the log and the terminal."""
    p = m["params"]
    lines = [f"{m['model']} + {m['method']} on {m['task']} (seed {m['seed']})",
             f"  trainable parameters: {p['trainable']:,} of {p['total']:,} ({p['trainable_pct']:.3f}%)"]
    for key in task.metric_names:
        if key in (m["test"] or {}):
            before = f"zero-shot {m['zero_shot'][key]:.4f} -> " if m["zero_shot"] else ""
            lines.append(f"  test {key}: {before}fine-tuned {m['test'][key]:.4f}")
    if m.get("val"):
        chosen = m.get("selection") or {}
        primary = m["primary_metric"]
        where = (f"the best check, step {chosen['step']}" if chosen.get("select") == "best"
                 else f"step {chosen.get('step')}")
        lines.append(f"  validation {primary}: {m['val'].get(primary, float('nan')):.4f} ({where}; "
                     f"a sweep optimises {m['objective']})")
    if not m["test"]:
        lines.append("  test: not scored (test=false)")
    precision = m.get("precision") or {}
    lines.append(f"  precision: {precision.get('name')}" + (f" (auto: {precision['auto']})" if precision.get("auto")
                                                             else ""))
    lines.append(f"  training: {m['train']['steps']} steps in {m['train']['wall_s']} s "
                 f"({m['train']['tokens_per_s']} tokens/s), peak RSS {m['memory']['peak_rss_mb']} MiB")
    if m.get("forgetting"):
        f = m["forgetting"]
        spread = f" ± {f['delta_ci95']:.4f} over {f['windows']} windows" if f.get("delta_ci95") is not None else ""
        lines.append(f"  forgetting: loss on {f['text']} {f['loss_before']:.4f} -> {f['loss_after']:.4f} "
                     f"({f['delta']:+.4f}{spread})")
    if m["adapter"]:
        lines.append(f"  adapter: {m['adapter']}")
    lines.append(f"  metrics: {run_dir / 'metrics.json'}")
    return "\n".join(lines)
