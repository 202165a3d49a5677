"""Methods as plug-ins: one module per method family, each ending with ``register_method(...)``.

Every module of this package is imported here, so a new method is one new module (its schema,
builder, checks and capabilities) and one ``conf/method/<name>.yaml`` (docs/adding-a-method.md).
"""

from __future__ import annotations

import importlib
import pkgutil

from peftlab.methods.base import (
    METHODS,
    BuildContext,
    MethodHooks,
    MethodSpec,
    apply_method,
    count_parameters,
    method_spec,
    peft_config_for,
    register_method,
    save_adapter,
    set_trainable,
    trainable_parameters,
)

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")

__all__ = ["METHODS", "BuildContext", "MethodHooks", "MethodSpec", "apply_method", "count_parameters", "method_spec",
           "peft_config_for", "register_method", "save_adapter", "set_trainable", "trainable_parameters"]
