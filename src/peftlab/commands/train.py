"""``peftlab-train``: train one run, or a sweep of them (engine/train.py does the work).

    peftlab-train                         # SmolLM2-135M + LoRA on the date task
    peftlab-train method=lora method.r=4 trainer.max_steps=200
    peftlab-train -m method=lora,full seed=1,2,3
    peftlab-train resume=outputs/runs/<stamp>     # continue a killed run, exactly, in its own folder
    peftlab-train --dry-run method.r=4            # every check, then the plan; no weights, nothing written
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Optional

import hydra
from omegaconf import DictConfig

from peftlab.commands.cli import CONF_DIR, output_dir, run_app
from peftlab.runs.metrics import metric_at
from peftlab.runs.sweeps import in_multirun, record_failure

log = logging.getLogger("peftlab.train")


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="train")
def _hydra_main(cfg: DictConfig) -> Optional[float]:
    """Returns the metric a sweeper optimises (``objective``). In a multirun a failing job is
    recorded (failed.json) and the sweep goes on; a single run fails as usual."""
    from peftlab.engine.train import train_from_config

    try:
        metrics = train_from_config(cfg, output_dir())
    except Exception as err:
        if not in_multirun():
            raise
        log.exception("job failed: %s", err)
        record_failure(output_dir(), err)
        return None  # optuna records a trial without a value as failed and goes on (a NaN stops its sweep)
    value = metric_at(metrics, metrics.get("objective") or "")
    return value if value is not None and math.isfinite(value) else None


def _plan(cfg: DictConfig, run_dir: Path) -> list[tuple[str, str]]:
    """``--dry-run``: the run's checks, on the meta device, and what it would do."""
    from peftlab.engine.plan import train_plan

    return train_plan(cfg, run_dir)


def _before_sweep(cfg: DictConfig) -> None:
    """``-m --dry-run``: what the sweep checks before its first job (conf/train.yaml's callback)."""
    from peftlab.engine.train import SweepObjectiveCheck

    SweepObjectiveCheck().on_multirun_start(config=cfg)


def main() -> None:
    from peftlab.engine.train import resume_command_line

    run_app(_hydra_main, "peftlab-train", prepare_argv=resume_command_line, plan=_plan, before_sweep=_before_sweep)


if __name__ == "__main__":
    main()
