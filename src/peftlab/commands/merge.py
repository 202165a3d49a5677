"""``peftlab-merge``: merge a run's adapter into its base model, verify, then export (export/ does
the work: merge in fp32, cast once, verify against the adapter model, reload the saved folder with
plain transformers and verify again, then rename into place).

    peftlab-merge run_dir=outputs/runs/<stamp>                 # -> <run_dir>/merged/
    peftlab-merge run_dir=outputs/runs/<stamp> dtype=bfloat16 out_dir=exports/dates-bf16
"""

from __future__ import annotations

from pathlib import Path

import hydra
from omegaconf import DictConfig

from peftlab.commands.cli import CONF_DIR, output_dir, run_app


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="merge")
def _hydra_main(cfg: DictConfig) -> None:
    from peftlab.export import merge_from_config

    merge_from_config(cfg, output_dir())  # the command's own folder keeps a copy of the report


def _plan(cfg: DictConfig, out: Path) -> list[tuple[str, str]]:
    """``--dry-run``: the command's checks, and what it would do."""
    from peftlab.engine.command_plans import merge_plan

    return merge_plan(cfg, out)


def main() -> None:
    run_app(_hydra_main, "peftlab-merge", plan=_plan)


if __name__ == "__main__":
    main()
