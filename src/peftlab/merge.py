"""``peftlab-merge``: merge a run's LoRA-style adapter into its base model, verify, then export.

    peftlab-merge run_dir=outputs/runs/<stamp>                 # -> <run_dir>/merged/
    peftlab-merge run_dir=outputs/runs/<stamp> dtype=bfloat16 out_dir=exports/dates-bf16

The work is done by ``peftlab.export`` (merge in fp32, cast once, verify against the adapter model,
reload the saved folder with plain transformers and verify again, then rename into place).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

import peftlab.methods  # noqa: F401  (registers the method schemas a run folder's config names)
import peftlab.tasks  # noqa: F401  (registers the task types)
from peftlab.cli import run_app
from peftlab.config import CONF_DIR, validate
from peftlab.config.commands import MergeSchema
from peftlab.outputs import folder_lock, load_run_config


def merge_cfg(cfg: DictConfig) -> dict[str, Any]:
    conf = validate(cfg, MergeSchema)
    run_dir = Path(conf.run_dir)
    # the run folder says which model and task; never whether to run remote code
    run = load_run_config(run_dir, trust_remote_code=conf.trust_remote_code)
    out_dir = Path(conf.out_dir) if conf.out_dir else run_dir / "merged"
    report_dir = Path(HydraConfig.get().runtime.output_dir) if HydraConfig.initialized() else None
    from peftlab.cli import quiet_libraries
    from peftlab.export import merge_run  # the heavy libraries, once the config is valid

    quiet_libraries()
    with folder_lock(run_dir, key="run_dir"):  # no training or other merge of this run meanwhile
        return merge_run(run_dir, run, out_dir, conf.dtype, conf.paths.cache_dir, conf.verify_batches, report_dir,
                         conf.max_test_examples, conf.min_top1)


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="merge")
def _hydra_main(cfg: DictConfig) -> None:
    merge_cfg(cfg)


def main() -> None:
    run_app(_hydra_main, "peftlab-merge")


if __name__ == "__main__":
    main()
