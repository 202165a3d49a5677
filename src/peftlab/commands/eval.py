"""``peftlab-eval``: evaluate a run folder's adapter, or a base model alone, on a task split
(engine/evaluate.py does the work).

    peftlab-eval run_dir=outputs/runs/<stamp>            # the run's adapter on the run's task
    peftlab-eval run_dir=outputs/runs/<stamp> split=val
    peftlab-eval model=smollm2_135m data=dates           # the untouched base model
    peftlab-eval runs=[outputs/multiruns/<stamp>] data=numbers   # every adapter of a sweep, one base load

Writes ``eval.json`` and ``predictions.jsonl`` into its own folder (outputs/evals/<stamp>/); with
``runs=``, eval.json and eval.md hold one row per run and predictions/ one file per run.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import hydra
from omegaconf import DictConfig

from peftlab.commands.cli import CONF_DIR, output_dir, run_app


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="eval")
def _hydra_main(cfg: DictConfig) -> Optional[float]:
    from peftlab.engine.evaluate import evaluate_from_config

    report = evaluate_from_config(cfg, output_dir())
    return report["metrics"].get(report["primary_metric"]) if "metrics" in report else None


def _plan(cfg: DictConfig, out: Path) -> list[tuple[str, str]]:
    """``--dry-run``: the command's checks, and what it would do."""
    from peftlab.engine.command_plans import eval_plan

    return eval_plan(cfg, out)


def main() -> None:
    run_app(_hydra_main, "peftlab-eval", plan=_plan)


if __name__ == "__main__":
    main()
