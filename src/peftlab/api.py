"""peftlab from Python (a notebook, a script): the commands, on Hydra's compose API.

    import peftlab
    run = peftlab.train(["model=tiny_llama", "trainer.max_steps=20"])   # peftlab-train ...
    peftlab.evaluate(run["run_dir"])                                     # peftlab-eval run_dir=...
    peftlab.merge(run["run_dir"])                                        # peftlab-merge run_dir=...
    peftlab.report([run["run_dir"]])                                     # peftlab-report <folder>
    peftlab.combine([run_a["run_dir"], run_b["run_dir"]], ["combination_type=ties"])   # peftlab-combine
    peftlab.generate(run["run_dir"], ["3rd of March, 1998"])             # peftlab-generate ...

Each call composes the command's config with the same overrides, validates it as the command does,
runs the same code, writes the same folder (``.hydra/`` included, so ``peftlab-train resume=``
works on a folder a notebook started) and returns the dictionary the command writes
(metrics.json, eval.json, merge_report.json, report.json, combine.json) with the folder under ``run_dir`` (or
``out_dir``). Mistakes raise peftlab's own errors (``peftlab.errors.ConfigError``, ``DataError``...)
with the commands' one-line messages. Calls can follow one another in one process: Hydra's global
state is set for a call and cleared after it. One run at a time (sweeps: ``peftlab-train -m``).
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from pathlib import Path
from typing import Any, Callable, Iterator, Optional, Sequence

from omegaconf import DictConfig, OmegaConf, open_dict

from peftlab.errors import ConfigError, PeftlabError

Overrides = Optional[Sequence[str]]


def compose(command: str, overrides: Overrides = None) -> DictConfig:
    """The config ``peftlab-<command>`` would run with these overrides, with its ``hydra`` block
    (``command``: train, eval, merge, combine, params, report or generate). Raises ConfigError for what the command
    would refuse while composing (an unknown option, a mistyped key)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    import peftlab.methods  # noqa: F401  (registers the method plug-ins)
    import peftlab.tasks  # noqa: F401  (registers the task plug-ins)
    from hydra_plugins.peftlab_sweeps import register
    from peftlab.config import CONF_DIR
    from peftlab.config.messages import describe, unchosen_group, user_errors
    from peftlab.config.user_plugins import load

    overrides = list(overrides or [])
    register()  # the plug-ins' config folders on the search path
    load(overrides)  # the user's own plug-ins: installed entry points, plugins=[...]
    if any(o in ("-m", "--multirun") for o in overrides):
        raise ConfigError("overrides: sweeps run from the command line (peftlab-train -m ...), one run per call here")
    GlobalHydra.instance().clear()  # what an earlier call (or a cell stopped half-way) left
    try:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3", job_name=command):
            return hydra_compose(config_name=command, overrides=overrides, return_hydra_config=True)
    except PeftlabError:
        raise
    except Exception as err:
        if isinstance(err, user_errors()) or unchosen_group(err, overrides):
            raise ConfigError(describe(err, overrides)) from None
        raise


def train(overrides: Overrides = None) -> dict[str, Any]:
    """``peftlab-train <overrides>`` (one run; ``resume=<run_dir>`` continues a killed one): the
    run's metrics.json as a dictionary, with ``run_dir``."""
    from peftlab.engine.train import resume_command_line, train_from_config
    from peftlab.runs.locks import folder_lock

    def work(cfg: DictConfig, out: Path, save_hydra: Callable[[], None]) -> dict[str, Any]:
        with folder_lock(out):
            save_hydra()
            return train_from_config(cfg, out)

    from peftlab.config.user_plugins import check_loaded, command_line_plugins, load

    load(list(overrides or []))  # the caller's own plug-ins; a resumed run's are checked, never loaded
    prepared = resume_command_line(list(overrides or []))
    check_loaded(command_line_plugins(prepared), "resume: the run's plugins")
    metrics, out = _call("train", prepared, work)
    return {**metrics, "run_dir": str(out)}


def evaluate(run_dir: Optional[str | Path] = None, overrides: Overrides = None) -> dict[str, Any]:
    """``peftlab-eval run_dir=<run_dir> <overrides>``: eval.json as a dictionary, with ``out_dir``
    (the command's own folder, outputs/evals/<stamp> unless ``hydra.run.dir=`` says otherwise)."""
    from peftlab.engine.evaluate import evaluate_from_config

    def work(cfg: DictConfig, out: Path, save_hydra: Callable[[], None]) -> dict[str, Any]:
        save_hydra()
        return evaluate_from_config(cfg, out)

    result, out = _call("eval", _with_run_dir(run_dir, overrides), work)
    return {**result, "out_dir": str(out)}


def harness(run_dir: Optional[str | Path] = None, overrides: Overrides = None) -> dict[str, Any]:
    """``peftlab-harness run_dir=<run_dir> <overrides>``: lm-evaluation-harness's scores (eval.json as
    a dictionary), with ``out_dir`` (the command's own folder, outputs/harness/<stamp>)."""
    from peftlab.engine.harness import harness_from_config

    def work(cfg: DictConfig, out: Path, save_hydra: Callable[[], None]) -> dict[str, Any]:
        save_hydra()
        return harness_from_config(cfg, out)

    result, out = _call("harness", _with_run_dir(run_dir, overrides), work)
    return {**result, "out_dir": str(out)}


def merge(run_dir: str | Path, overrides: Overrides = None) -> dict[str, Any]:
    """``peftlab-merge run_dir=<run_dir> <overrides>``: merge_report.json as a dictionary (its
    ``out_dir`` is the merged model's folder)."""
    from peftlab.export import merge_from_config

    def work(cfg: DictConfig, out: Path, save_hydra: Callable[[], None]) -> dict[str, Any]:
        save_hydra()  # the command's own folder (outputs/merges/<stamp>) keeps a copy of the report
        return merge_from_config(cfg, out)

    return _call("merge", _with_run_dir(run_dir, overrides), work)[0]


def combine(run_dirs: Sequence[str | Path], overrides: Overrides = None) -> dict[str, Any]:
    """``peftlab-combine runs=[<run_dirs>] <overrides>``: combine.json as a dictionary, with
    ``out_dir`` (the command's own folder, holding the combined adapter in ``adapter/``)."""
    from peftlab.engine.combine import combine_from_config

    def work(cfg: DictConfig, out: Path, save_hydra: Callable[[], None]) -> dict[str, Any]:
        save_hydra()
        return combine_from_config(cfg, out)

    runs = ["runs=[" + ",".join(str(r) for r in run_dirs) + "]"] if run_dirs else []  # or runs= in the overrides
    result, out = _call("combine", [*runs, *(overrides or [])], work)
    return {**result, "out_dir": str(out)}


def report(paths: Sequence[str | Path], overrides: Overrides = None) -> dict[str, Any]:
    """``peftlab-report <paths> <overrides>``: report.json as a dictionary (written to
    <path>/report for one folder, else ``out_dir=`` or outputs/reports/<stamp>)."""
    from peftlab.reporting import inputs_override, report_from_config

    args = [inputs_override([str(p) for p in paths]), *(overrides or [])] if paths else list(overrides or [])
    return _call("report", args, lambda cfg, out, save_hydra: report_from_config(cfg, out))[0]


def generate(run_dir: str | Path, prompts: Sequence[str], overrides: Overrides = None) -> list[dict[str, Any]]:
    """``peftlab-generate run_dir=<run_dir>`` on ``prompts``: one dict per prompt, its ``answer``
    (and, for classification, the label's ``probability``). Overrides as the command's
    (``merged=true``, ``do_sample=true``, ``max_new_tokens=``...)."""
    from peftlab.engine.generate import generate_from_config

    prompts = list(prompts)
    if not prompts or not all(isinstance(p, str) for p in prompts):
        raise ConfigError("prompts: give a non-empty list of strings")

    def work(cfg: DictConfig, out: Path, save_hydra: Callable[[], None]) -> dict[str, Any]:
        with open_dict(cfg):
            cfg.prompt = prompts[0]  # what the command would have been given; all of them are answered
        return {"answers": generate_from_config(cfg, prompts)}

    return _call("generate", _with_run_dir(run_dir, overrides), work)[0]["answers"]


# ----------------------------------------------------------------------------------------- the call
Work = Callable[[DictConfig, Path, Callable[[], None]], dict[str, Any]]


def _with_run_dir(run_dir: Optional[str | Path], overrides: Overrides) -> list[str]:
    return [*([f"run_dir={run_dir}"] if run_dir is not None else []), *(overrides or [])]


def _call(command: str, overrides: list[str], work: Work) -> tuple[dict[str, Any], Path]:
    """Compose, set Hydra's runtime state as a command's job has it, run ``work`` on the job's
    config and folder, and clear the state again. ``work`` calls its third argument to write
    ``.hydra/`` (once it knows the folder may be written)."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    from peftlab.runs.folders import check_claimable, discard_unstarted_run_dir, resuming_into

    full = compose(command, overrides)
    out = Path(str(full.hydra.run.dir))  # resolved once: the ${now:...} stamp
    with open_dict(full):
        full.hydra.run.dir = str(out)
        full.hydra.runtime.output_dir = str(out.absolute())
        full.hydra.job.num = 0
        full.hydra.mode = RunMode.RUN
    cfg = OmegaConf.masked_copy(full, [k for k in full if k != "hydra"])

    def save_hydra() -> None:  # what Hydra writes into a command's folder before its job
        folder = out / ".hydra"
        folder.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(cfg, folder / "config.yaml")
        OmegaConf.save(OmegaConf.create({"hydra": full.hydra}), folder / "hydra.yaml")
        OmegaConf.save(full.hydra.overrides.task, folder / "overrides.yaml")  # hydra.* ones go to hydra.yaml

    # a command with a folder of its own (not peftlab-generate, whose "folder" is where it was started)
    own_folder, fresh = full.hydra.output_subdir is not None, not out.exists()
    if own_folder:  # a new or empty folder (or a killed run's own, resumed): checked before any byte changes
        check_claimable(out, resuming=command == "train" and resuming_into(out, overrides))
    HydraConfig.instance().set_config(full)
    try:
        with _environment(dict(full.hydra.job.get("env_set") or {})), \
                _log_to(out / f"{command}.log" if own_folder else None):
            return work(cfg, out, save_hydra), out
    except PeftlabError:
        if own_folder and fresh:
            discard_unstarted_run_dir(out)  # what was written for a job that never started goes
        raise
    finally:
        HydraConfig.instance().cfg = None


@contextlib.contextmanager
def _environment(values: dict[str, Any]) -> Iterator[None]:
    """The command's ``hydra.job.env_set``, for the call; what the user has set wins."""
    added = {k: str(v) for k, v in values.items() if k not in os.environ}
    os.environ.update(added)
    try:
        yield
    finally:
        for k in added:
            os.environ.pop(k, None)


class _FolderLog(logging.FileHandler):
    """The command's log file in its folder, opened once the folder exists (as Hydra's is)."""

    def emit(self, record: logging.LogRecord) -> None:
        if self.stream is not None or Path(self.baseFilename).parent.is_dir():
            super().emit(record)


@contextlib.contextmanager
def _log_to(path: Optional[Path]) -> Iterator[None]:
    """peftlab's log lines to the folder's log file (``path``; None: none), and to the notebook or
    terminal where nothing else shows them."""
    logger = logging.getLogger("peftlab")
    handlers: list[logging.Handler] = []
    if path is not None:
        file = _FolderLog(path, delay=True)
        file.setFormatter(logging.Formatter("[%(asctime)s][%(name)s][%(levelname)s] - %(message)s"))
        handlers.append(file)
    if not logger.handlers and not logging.getLogger().handlers:
        console = logging.StreamHandler(sys.stdout)
        console.setFormatter(logging.Formatter("%(message)s"))
        handlers.append(console)
    level = logger.level
    logger.setLevel(logging.INFO)
    for h in handlers:
        logger.addHandler(h)
    try:
        yield
    finally:
        for h in handlers:
            logger.removeHandler(h)
            h.close()
        logger.setLevel(level)
