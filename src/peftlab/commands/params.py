"""``peftlab-params``: trainable and total parameters of any model x method, with no weights
(engine/params.py does the work, on the meta device).

    peftlab-params model=roberta_base "method.target_modules=[query,value]"
    peftlab-params -m model=gpt2_medium method=lora,prefix,prompt,ptuning,ia3,full
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import hydra
from omegaconf import DictConfig

from peftlab.commands.cli import CONF_DIR, output_dir, run_app


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="params")
def _hydra_main(cfg: DictConfig) -> Optional[int]:
    from peftlab.engine.params import params_from_config

    return params_from_config(cfg, output_dir())["trainable"]


def _plan(cfg: DictConfig, out: Path) -> list[tuple[str, str]]:
    """``--dry-run``: the command's checks, and what it would do."""
    from peftlab.engine.command_plans import params_plan

    return params_plan(cfg, out)


def main() -> None:
    run_app(_hydra_main, "peftlab-params", plan=_plan)


if __name__ == "__main__":
    main()
