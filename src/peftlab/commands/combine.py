"""``peftlab-combine``: combine several runs' adapters of one base into one adapter (peft's
add_weighted_adapter: task arithmetic, TIES, DARE, SVD, ...), then score the base, each source
alone and the combination on every source task and on forgetting (engine/combine.py does the work).

    peftlab-combine runs=[outputs/runs/<dates>,outputs/runs/<numbers>] combination_type=ties density=0.5
    peftlab-combine runs=[outputs/runs/<dates>] weights=[-1]              # task negation
    peftlab-combine -m runs=[<a>,<b>] combination_type=linear,cat,svd,ties,dare_ties

Writes adapter/ (a plain peft adapter), combine.json and combine.md into its own folder.
"""

from __future__ import annotations

from pathlib import Path

import hydra
from omegaconf import DictConfig

from peftlab.commands.cli import CONF_DIR, output_dir, run_app


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="combine")
def _hydra_main(cfg: DictConfig) -> float:
    from peftlab.engine.combine import combine_from_config, objective

    return objective(combine_from_config(cfg, output_dir()))


def _plan(cfg: DictConfig, out: Path) -> list[tuple[str, str]]:
    """``--dry-run``: the command's checks, and what it would do."""
    from peftlab.engine.command_plans import combine_plan

    return combine_plan(cfg, out)


def main() -> None:
    run_app(_hydra_main, "peftlab-combine", plan=_plan)


if __name__ == "__main__":
    main()
