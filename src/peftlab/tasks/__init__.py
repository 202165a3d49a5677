"""Tasks as plug-ins: one module per task type, each registering a ``Task`` subclass.

Every module of this package but the shared helpers is imported here, so a new task type is one
new module. The helpers (the sparse head, generation, metrics) load torch; the task modules load
them only when a job runs, so that validating a config stays light.
"""

from __future__ import annotations

import importlib
import pkgutil

from peftlab.tasks.base import TASKS, Task, make_task, register_task, task_class

HELPERS = {"base", "generation", "heads", "metrics", "reference", "rewards", "reward_scorer"}
for _module in pkgutil.iter_modules(__path__):
    if _module.name not in HELPERS:
        importlib.import_module(f"{__name__}.{_module.name}")

__all__ = ["TASKS", "Task", "make_task", "register_task", "task_class"]
