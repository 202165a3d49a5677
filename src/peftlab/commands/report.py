"""``peftlab-report``: turn a sweep (or any run folders) into the tables and plots of a paper
(reporting/ does the work).

    peftlab-report outputs/multiruns/<stamp>
    peftlab-report outputs/runs/a outputs/runs/b out_dir=reports/ablation

Runs are grouped by their overrides other than the seed and aggregated over seeds: mean,
standard deviation, n and a 95% confidence interval (Student t). A run without a
``metrics.json`` (failed, or still running) is listed as such, never dropped. Writes
``results.md``, ``results.csv``, ``results.tex`` and PNG plots into ``out_dir``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

from peftlab.commands.cli import CONF_DIR, output_dir, run_app
from peftlab.reporting import inputs_override


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="report")
def _hydra_main(cfg: DictConfig) -> None:
    from peftlab.reporting import report_from_config

    report_from_config(cfg, output_dir())


# Hydra's options that take the next word as their value (``--cfg job``), and ``--info``'s topics
VALUED = ("--cfg", "-c", "--package", "-p", "--config-path", "-cp", "--config-name", "-cn", "--config-dir", "-cd",
          "--experimental-rerun")
INFO_TOPICS = ("all", "config", "defaults", "defaults-tree", "plugins", "searchpath")


def positional_to_inputs(argv: list[str]) -> list[str]:
    """``peftlab-report a b k=v`` -> ``peftlab-report inputs=[a,b] k=v``: folders may be given bare
    (the value of an option, ``--cfg job``, is not a folder)."""
    values = {i + 1 for i, a in enumerate(argv[:-1])
              if a in VALUED or (a in ("--info", "-i") and argv[i + 1] in INFO_TOPICS)}
    bare = [i for i, a in enumerate(argv) if i not in values and "=" not in a and not a.startswith("-")]
    rest = [a for i, a in enumerate(argv) if i not in bare]
    return [inputs_override([argv[i] for i in bare]), *rest] if bare else argv


def _plan(cfg: DictConfig, out: Path) -> list[tuple[str, str]]:
    """``--dry-run``: the command's checks, and what it would do."""
    from peftlab.engine.command_plans import report_plan

    return report_plan(cfg, out)


def main() -> None:
    sys.argv[1:] = positional_to_inputs(sys.argv[1:])
    run_app(_hydra_main, "peftlab-report", plan=_plan)


if __name__ == "__main__":
    main()
