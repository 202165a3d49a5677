"""Config system: schemas, their ConfigStore registration, and ``validate()``."""

from __future__ import annotations

from pathlib import Path

from hydra.core.config_store import ConfigStore

from peftlab.config.schema import (
    DataSchema,
    EvalSchema,
    HardwareSchema,
    MergeSchema,
    ModelSchema,
    OptimSchema,
    ParamsSchema,
    PathsSchema,
    PrecisionSchema,
    ReportSchema,
    TrainerSchema,
    TrainSchema,
)
from peftlab.config.validate import validate

_REPO_CONF = Path(__file__).resolve().parents[3] / "conf"
_PACKAGE_CONF = Path(__file__).resolve().parents[1] / "conf"
CONF_DIR = _REPO_CONF if _REPO_CONF.is_dir() else _PACKAGE_CONF


def register_schemas() -> None:
    """Register every schema under ``schema/<group>/<name>`` for the YAML files to extend."""
    from peftlab.methods import METHODS

    cs = ConfigStore.instance()
    for name, spec in METHODS.items():
        cs.store(group="schema/method", name=name, node=spec.schema)
    for group, node in (("model", ModelSchema), ("data", DataSchema), ("optim", OptimSchema),
                        ("precision", PrecisionSchema), ("hardware", HardwareSchema),
                        ("trainer", TrainerSchema), ("paths", PathsSchema)):
        cs.store(group=f"schema/{group}", name="base", node=node)
    cs.store(name="schema_train", node=TrainSchema)
    cs.store(name="schema_eval", node=EvalSchema)
    cs.store(name="schema_params", node=ParamsSchema)
    cs.store(name="schema_merge", node=MergeSchema)
    cs.store(name="schema_report", node=ReportSchema)


register_schemas()

__all__ = ["CONF_DIR", "validate", "register_schemas"]
