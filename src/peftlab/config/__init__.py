"""Config system: schemas, their ConfigStore registration, and ``validate()``.

Methods and tasks are plug-ins: they register their schemas and names through
``peftlab.config.plugins`` when ``peftlab.methods`` / ``peftlab.tasks`` are imported.
"""

from __future__ import annotations

import importlib.resources
from pathlib import Path

from hydra.core.config_store import ConfigStore

from peftlab.config.commands import (
    CombineSchema,
    EvalSchema,
    GenerateSchema,
    MergeSchema,
    ParamsSchema,
    ReportSchema,
    TrainSchema,
)
from peftlab.config.harness import HarnessSchema
from peftlab.config.rl import RLSchema
from peftlab.config.schema import (
    DataSchema,
    HardwareSchema,
    ModelSchema,
    OptimSchema,
    PathsSchema,
    PrecisionSchema,
    PreferenceSchema,
    TrainerSchema,
)
from peftlab.config.validate import validate

# the YAML configs: the repository's top-level conf/, installed as the package data ``peftlab.conf``
CONF_DIR = Path(str(importlib.resources.files("peftlab.conf")))


def register_schemas() -> None:
    """Register every group schema under ``schema/<group>/base`` for the YAML files to extend, and
    the primary configs' schemas under ``schema_<command>``."""
    cs = ConfigStore.instance()
    for group, node in (("model", ModelSchema), ("data", DataSchema), ("optim", OptimSchema),
                        ("precision", PrecisionSchema), ("hardware", HardwareSchema),
                        ("trainer", TrainerSchema), ("paths", PathsSchema), ("preference", PreferenceSchema),
                        ("rl", RLSchema)):
        cs.store(group=f"schema/{group}", name="base", node=node)
    for name, node in (("train", TrainSchema), ("eval", EvalSchema), ("params", ParamsSchema),
                       ("merge", MergeSchema), ("report", ReportSchema), ("generate", GenerateSchema),
                       ("combine", CombineSchema), ("harness", HarnessSchema)):
        cs.store(name=f"schema_{name}", node=node)
    # hydra/launcher=process, hydra/sweeper=seed_budget and tune_then_test: their modules store their configs
    import hydra_plugins.peftlab_sweeps.process_launcher  # noqa: F401
    import hydra_plugins.peftlab_sweeps.seed_budget_sweeper  # noqa: F401
    import hydra_plugins.peftlab_sweeps.tune_then_test_sweeper  # noqa: F401


register_schemas()

__all__ = ["CONF_DIR", "validate", "register_schemas"]
