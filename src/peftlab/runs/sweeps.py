"""Multirun bookkeeping: an index of a sweep's jobs, and failures that do not stop the sweep.

``SweepIndex`` (a Hydra callback, set in ``conf/hydra/default.yaml``) keeps ``index.jsonl`` in
the sweep folder: one line per job start and end, with its number, overrides, folder and status.
In a multirun, a job that raises is recorded in its folder's ``failed.json`` and the sweep goes on;
the sweep ends with a non-zero exit when any job failed.
"""

from __future__ import annotations

import json
import logging
import time
import traceback
from pathlib import Path
from typing import Any

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


class SweepIndex(Callback):
    def __init__(self) -> None:
        self.failed: list[str] = []

    @staticmethod
    def _append(config: DictConfig, row: dict[str, Any]) -> None:
        sweep = Path(config.hydra.sweep.dir)
        sweep.mkdir(parents=True, exist_ok=True)
        with open(sweep / "index.jsonl", "a") as f:
            f.write(json.dumps(row) + "\n")

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
        if status == "failed":
            self.failed.append(run_dir.name)
        self._append(config, {"job": config.hydra.job.num, "event": "end", "status": status,
                              "time": time.strftime("%Y-%m-%dT%H:%M:%S"), "run_dir": str(run_dir)})

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep = config.hydra.sweep.dir
        if self.failed:
            log.error("%d job(s) of the sweep failed: %s (see failed.json in each); report: peftlab-report %s",
                      len(self.failed), ", ".join(self.failed), sweep)
            raise SystemExit(1)
        log.info("sweep finished; report: peftlab-report %s", sweep)
