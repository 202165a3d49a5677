"""Training objectives as plug-ins: how a run trains its task (objectives/base.py). One module per
objective, each registering an ``Objective`` subclass; the helpers (the RL loss family, the
rollout, its records) load torch when a job runs."""

from __future__ import annotations

import importlib
import pkgutil

from peftlab.objectives.base import OBJECTIVES, Objective, make_objective, objective_name, register_objective

HELPERS = {"base", "rl_loss", "rl_records", "rl_rollout"}
for _module in pkgutil.iter_modules(__path__):
    if _module.name not in HELPERS:
        importlib.import_module(f"{__name__}.{_module.name}")

__all__ = ["OBJECTIVES", "Objective", "make_objective", "objective_name", "register_objective"]
