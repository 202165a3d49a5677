"""Multirun bookkeeping: an index of a sweep's jobs, and failures that do not stop the sweep.

``SweepIndex`` (a Hydra callback, set in ``conf/hydra/default.yaml``) keeps ``index.jsonl`` in
the sweep folder: one line per job start and end, with its number, overrides, folder and status.
In a multirun, a job that raises is recorded in its folder's ``failed.json`` and the sweep goes on;
the sweep ends with a non-zero exit when any job failed. The index is the record: jobs may run in
processes of their own (``hydra/launcher=process``), so the sweep's end reads failures from it.
"""

from __future__ import annotations

import json
import logging
import time
import traceback
from pathlib import Path
from typing import Any, Optional

from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from peftlab.runs.files import write_json

log = logging.getLogger("peftlab.sweeps")


def in_multirun() -> bool:
    return HydraConfig.initialized() and HydraConfig.get().mode.name == "MULTIRUN"


def record_failure(run_dir: Path, err: BaseException) -> None:
    """Write ``failed.json`` so that reports show the job as failed, with its error."""
    run_dir.mkdir(parents=True, exist_ok=True)
    overrides = list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else []
    write_json(run_dir / "failed.json", {"error": f"{type(err).__name__}: {err}".splitlines()[0],
                                         "overrides": overrides, "traceback": traceback.format_exc()})


def record_lost_job(sweep_config: DictConfig, run_dir: Path, err: BaseException) -> None:
    """A job whose process died before it could report: ``failed.json`` and its index line, written
    by the launcher on the job's behalf."""
    run_dir.mkdir(parents=True, exist_ok=True)
    overrides = list(sweep_config.hydra.overrides.task)
    write_json(run_dir / "failed.json", {"error": str(err), "overrides": overrides, "traceback": ""})
    _append_index(Path(str(sweep_config.hydra.sweep.dir)),
                  {"job": sweep_config.hydra.job.num, "event": "end", "status": "failed",
                   "time": time.strftime("%Y-%m-%dT%H:%M:%S"), "run_dir": str(run_dir)})


def job_folder(ret: Any) -> Optional[Path]:
    """The folder a Hydra job ran in, from the job's return (run_job records it in the job's config)."""
    hydra_cfg = getattr(ret, "hydra_cfg", None)
    if hydra_cfg is not None:
        return Path(hydra_cfg.hydra.runtime.output_dir)
    working_dir = getattr(ret, "working_dir", None)
    return Path(working_dir) if working_dir else None


def _append_index(sweep: Path, row: dict[str, Any]) -> None:
    sweep.mkdir(parents=True, exist_ok=True)
    with open(sweep / "index.jsonl", "a") as f:
        f.write(json.dumps(row) + "\n")


def failed_jobs(sweep: Path) -> list[str]:
    """The folders of the jobs the index records as failed since the sweep last started there."""
    index = sweep / "index.jsonl"
    rows = []
    for line in index.read_text().splitlines() if index.exists() else []:
        try:
            rows.append(json.loads(line))
        except ValueError:  # a line cut short by a killed process
            continue
    starts = [i for i, r in enumerate(rows) if r.get("event") == "sweep start"]
    rows = rows[starts[-1] + 1:] if starts else rows
    return [Path(r["run_dir"]).name for r in rows if r.get("event") == "end" and r.get("status") == "failed"]


class SweepIndex(Callback):
    @staticmethod
    def _append(config: DictConfig, row: dict[str, Any]) -> None:
        _append_index(Path(config.hydra.sweep.dir), row)

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        self._append(config, {"event": "sweep start", "time": time.strftime("%Y-%m-%dT%H:%M:%S")})

    def on_job_start(self, config: DictConfig, **kwargs: Any) -> None:
        if config.hydra.mode.name != "MULTIRUN":
            return
        job = config.hydra.job
        self._append(config, {"job": job.num, "event": "start", "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
                              "overrides": list(config.hydra.overrides.task),
                              "run_dir": config.hydra.runtime.output_dir})

    def on_job_end(self, config: DictConfig, job_return: Any, **kwargs: Any) -> None:
        if config.hydra.mode.name != "MULTIRUN":
            return
        run_dir = Path(config.hydra.runtime.output_dir)
        status = "failed" if (run_dir / "failed.json").exists() or job_return.status.name == "FAILED" else "finished"
        self._append(config, {"job": config.hydra.job.num, "event": "end", "status": status,
                              "time": time.strftime("%Y-%m-%dT%H:%M:%S"), "run_dir": str(run_dir)})

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep = config.hydra.sweep.dir
        failed = failed_jobs(Path(sweep))
        if failed:
            log.error("%d job(s) of the sweep failed: %s (see failed.json in each); report: peftlab-report %s",
                      len(failed), ", ".join(failed), sweep)
            raise SystemExit(1)
        log.info("sweep finished; report: peftlab-report %s", sweep)
