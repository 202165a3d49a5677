"""``peftlab-harness``: lm-evaluation-harness on runs' adapters (engine/harness.py does the work).

    peftlab-harness run_dir=outputs/runs/<stamp>                        # the run's task through lm-eval
    peftlab-harness run_dir=outputs/runs/<stamp> 'tasks=[peftlab,peftlab_text,arc_easy]'
    peftlab-harness run_dir=outputs/runs/<stamp> model_dir=outputs/runs/<stamp>/merged
    peftlab-harness 'runs=[outputs/multiruns/<stamp>]'                  # every finished run of a sweep

Writes eval.json (what ``peftlab-report scores=`` reads), harness.md, samples/ and tasks/ into its
own folder (outputs/harness/<stamp>/). Needs the ``harness`` extra: pip install 'peftlab[harness]'.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import hydra
from omegaconf import DictConfig

from peftlab.commands.cli import CONF_DIR, output_dir, run_app


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="harness")
def _hydra_main(cfg: DictConfig) -> Optional[float]:
    from peftlab.engine.harness import harness_from_config

    harness_from_config(cfg, output_dir())
    return None


def _plan(cfg: DictConfig, out: Path) -> list[tuple[str, str]]:
    """``--dry-run``: the command's checks, and what it would do."""
    from peftlab.engine.harness import harness_plan

    return harness_plan(cfg, out)


def main() -> None:
    run_app(_hydra_main, "peftlab-harness", plan=_plan)


if __name__ == "__main__":
    main()
