"""Tasks as plug-ins: one module per task type, each registering a ``Task`` subclass.

Every module of this package is imported here, so a new task type is one new module.
"""

from __future__ import annotations

import importlib
import pkgutil

from peftlab.tasks.base import TASKS, Task, make_task, register_task, task_class

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")

__all__ = ["TASKS", "Task", "make_task", "register_task", "task_class"]
