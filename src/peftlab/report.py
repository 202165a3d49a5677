"""``peftlab-report``: turn a sweep (or any run folders) into the tables and plots of a paper.

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
from typing import Any

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from peftlab.cli import run_app
from peftlab.config import CONF_DIR, validate
from peftlab.config.commands import ReportSchema
from peftlab.errors import ConfigError
from peftlab.reporting import write_report


def report_cfg(cfg: DictConfig) -> dict[str, Any]:
    conf = validate(cfg, ReportSchema)
    if not conf.inputs:
        raise ConfigError("inputs: name at least one sweep or run folder (peftlab-report outputs/multiruns/<stamp>)")
    inputs = [Path(p) for p in conf.inputs]
    if conf.out_dir:
        out = Path(conf.out_dir)
    elif len(inputs) == 1:
        out = inputs[0] / "report"
    else:
        out = Path(HydraConfig.get().runtime.output_dir)
    return write_report(inputs, out, conf.plots, conf.overwrite)


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="report")
def _hydra_main(cfg: DictConfig) -> None:
    report_cfg(cfg)


def positional_to_inputs(argv: list[str]) -> list[str]:
    """``peftlab-report a b k=v`` -> ``peftlab-report inputs=[a,b] k=v``: folders may be given bare."""
    bare = [a for a in argv if "=" not in a and not a.startswith("-")]
    rest = [a for a in argv if a not in bare]
    if not bare:
        return argv
    quoted = ",".join("'" + a.replace("'", "\\'") + "'" for a in bare)
    return [f"inputs=[{quoted}]", *rest]


def main() -> None:
    sys.argv[1:] = positional_to_inputs(sys.argv[1:])
    run_app(_hydra_main, "peftlab-report")


if __name__ == "__main__":
    main()
