"""``peftlab-train``: validate, lock the run folder, run the job (training.py), merge, report.

    peftlab-train                         # SmolLM2-135M + LoRA on the date task
    peftlab-train method=lora method.r=4 trainer.max_steps=200
    peftlab-train -m method=lora,full seed=1,2,3
    peftlab-train resume=outputs/runs/<stamp>     # continue a killed run, exactly, in its own folder

The libraries that train (torch, Lightning, transformers, peft) load once the config is valid, so
a bad override fails within a second.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Optional

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

import peftlab.methods  # noqa: F401  (registers the method plug-ins)
from peftlab.cli import run_app
from peftlab.config import CONF_DIR, validate
from peftlab.config.commands import TrainSchema
from peftlab.distributed import SECONDARY
from peftlab.errors import ConfigError, PeftlabError
from peftlab.outputs import (
    check_fresh_run_dir,
    discard_unstarted_run_dir,
    folder_lock,
    metric_at,
    run_status,
    write_json,
)
from peftlab.sweeps import in_multirun, record_failure
from peftlab.tasks import Task, make_task

log = logging.getLogger("peftlab.train")

# numbers every run reports, whatever its task (dotted metrics.json keys)
RUN_NUMBERS = ("train.steps", "train.wall_s", "train.tokens_per_s", "memory.peak_rss_mb", "params.trainable",
               "params.total", "params.trainable_pct")
# what a resumed run may set besides resume=: how it shows progress and how many threads it uses
RESUME_MAY_SET = ("trainer.enable_progress_bar=", "hardware.threads=")


def objective_key(conf: TrainSchema, task: Task) -> str:
    """The metrics.json key a sweeper optimises: ``objective``, or the task's primary test metric."""
    if conf.objective is None:
        return f"test.{task.primary_metric}"
    splits = ("test", "zero_shot") if conf.zero_shot else ("test",)
    known = [f"{s}.{m}" for s in splits for m in task.metric_names] + ["val.loss", *RUN_NUMBERS]
    if conf.objective not in known:
        raise ConfigError(f"objective: {conf.objective!r} is not a number this run reports "
                          f"(known: {', '.join(known)})")
    return conf.objective


def check_one_process_per_job(conf: TrainSchema) -> None:
    """A distributed job starts its own processes (Lightning re-runs the command); a sweep whose
    launcher runs its jobs in the sweep's own process cannot host that. SLURM's launcher can: each
    job's processes are SLURM tasks."""
    if not in_multirun():
        return
    hw = conf.hardware
    several = hw.strategy in ("ddp", "fsdp") or hw.num_nodes > 1 or (isinstance(hw.devices, int) and hw.devices > 1)
    launcher = str(HydraConfig.get().launcher.get("_target_", ""))
    if several and "SlurmLauncher" not in launcher:
        raise ConfigError(f"hardware={hw.name} under -m: this launcher runs every job in the sweep's own process, and "
                          "a distributed job starts processes of its own; use hydra/launcher=submitit_slurm (one "
                          "SLURM task per process), or run the jobs one by one without -m")


def resume_args(argv: list[str]) -> list[str]:
    """``resume=<run_dir>``: the command line that continues a killed run in its own folder, with
    the overrides it started with (read from the folder as data) and its last checkpoint."""
    import yaml

    given = [a for a in argv if a.startswith("resume=")]
    if not given:
        return argv
    folder = Path(given[-1].split("=", 1)[1]).expanduser()
    rest = [a for a in argv if not a.startswith("resume=")]
    extra = [a for a in rest if not a.startswith(RESUME_MAY_SET)]
    if extra:
        raise ConfigError(f"resume: {extra[0]}: a resumed run keeps the settings it started with; to train on "
                          f"with other settings, start a new run with resume_from={folder}/checkpoints/last.ckpt")
    overrides_file = folder / ".hydra" / "overrides.yaml"
    # the newest checkpoint (checkpoints are written whole, then renamed: a kill between a step's
    # checkpoint and last.ckpt leaves the step's the newest)
    last = max((folder / "checkpoints").glob("*.ckpt"), key=lambda p: p.stat().st_mtime_ns, default=None)
    if run_status(folder):
        raise ConfigError(f"resume: {folder} has ended ({run_status(folder)}, see its metrics.json); "
                          "nothing to resume")
    if not overrides_file.is_file():
        raise ConfigError(f"resume: {folder} is not a peftlab-train run folder (no .hydra/overrides.yaml)")
    if last is None:
        raise ConfigError(f"resume: {folder} has no checkpoint yet ({folder / 'checkpoints'}); start it again "
                          "instead")
    try:
        original = yaml.safe_load(overrides_file.read_text()) or []
    except yaml.YAMLError as err:
        raise ConfigError(f"resume: {overrides_file} is not readable ({str(err).splitlines()[0]})") from None
    if not isinstance(original, list) or not all(isinstance(o, str) for o in original):
        raise ConfigError(f"resume: {overrides_file} is not a list of overrides")
    for o in original:  # data, not code: nothing that configures Hydra itself
        if o.lstrip("+~").startswith("hydra") or o.startswith("-"):
            raise ConfigError(f"resume: {overrides_file}: {o!r} is not an override a run folder may hold")
    kept = [o for o in original if not o.startswith(("resume_from=", *RESUME_MAY_SET))]
    return [*kept, *rest, f"hydra.run.dir={folder}", f"resume_from={last}"]


def train(cfg: DictConfig) -> dict[str, Any]:
    """Run one training job from a composed config; returns what it writes to metrics.json."""
    run_dir = Path(HydraConfig.get().runtime.output_dir) if HydraConfig.initialized() else Path(cfg.paths.run_dir)
    if SECONDARY:  # a second process of a distributed run: it computes with the first, which writes
        conf = validate(cfg, TrainSchema)
        task = make_task(conf.data, run=conf)
        from peftlab.training import run_job

        return run_job(conf, cfg, run_dir, task, objective_key(conf, task))
    with folder_lock(run_dir):  # outside the clean-up below: a folder another command holds is never touched
        try:
            conf = validate(cfg, TrainSchema)
            check_one_process_per_job(conf)
            check_fresh_run_dir(run_dir)
            task = make_task(conf.data, run=conf)
            problems = task.check(conf)
            if problems:
                raise ConfigError("; ".join(problems))
            objective = objective_key(conf, task)
            from peftlab.training import run_job  # the heavy libraries, once the config is valid

            metrics = run_job(conf, cfg, run_dir, task, objective)
        except PeftlabError:
            discard_unstarted_run_dir(run_dir)
            raise
        # after the job has returned, so that the training model, optimizer and trainer are freed: the
        # merge loads the saved adapter afresh
        if conf.merge_after and metrics.get("adapter") and type(conf.method).capabilities.mergeable:
            metrics["merge"] = _merge_after(conf, run_dir, metrics["test"], metrics["data"]["test"])
            write_json(run_dir / "metrics.json", metrics)
    return metrics


def _merge_after(conf: TrainSchema, run_dir: Path, adapter_test: dict[str, float], test_size: int) -> dict[str, Any]:
    """The verified merge of peftlab-merge, right after training; its outcome goes to metrics.json."""
    from peftlab.export import VerificationError, merge_run
    from peftlab.export.verify import Evaluation

    # the test predictions the job has just written: the merged model must reproduce every one. A
    # test limited to some batches (trainer.limit_test_batches) covers less: the merge then
    # evaluates the adapter on the whole split itself
    predictions = [json.loads(line)["prediction"]
                   for line in (run_dir / "test_predictions.jsonl").read_text().splitlines() if line.strip()]
    whole = len(predictions) == test_size
    try:
        report = merge_run(run_dir, conf, run_dir / "merged", report_dir=run_dir,
                           adapter_test=Evaluation(adapter_test, predictions) if whole else None)
    except VerificationError as err:
        write_json(run_dir / "metrics.json", {**json.loads((run_dir / "metrics.json").read_text()),
                                              "merge": {"passed": False, "error": str(err)}})
        raise
    checks = report["checks"]["reloaded"]
    return {"passed": report["passed"], "out_dir": report["out_dir"], "max_abs_error": checks["max_abs_error"],
            "max_abs_error_fp64": checks.get("max_abs_error_fp64"),
            "top1_agreement": checks["top1_agreement"], "merged_test": report["metrics"]["merged"],
            "latency_merged_over_base": report["latency"]["merged_over_base"]}


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="train")
def _hydra_main(cfg: DictConfig) -> Optional[float]:
    """Returns the metric a sweeper optimises (``objective``). In a multirun a failing job is
    recorded (failed.json) and the sweep goes on; a single run fails as usual."""
    try:
        metrics = train(cfg)
    except Exception as err:
        if not in_multirun():
            raise
        log.exception("job failed: %s", err)
        record_failure(Path(HydraConfig.get().runtime.output_dir), err)
        return float("nan")  # optuna records a NaN as a failed trial and goes on
    return metric_at(metrics, metrics.get("objective") or "")


def main() -> None:
    run_app(_hydra_main, "peftlab-train", prepare_argv=resume_args)


if __name__ == "__main__":
    main()
