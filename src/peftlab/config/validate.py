"""``validate()``: the first call of every entry point.

Three steps, every problem reported with its full key and bad value:
1. re-merge each group into its schema strictly: catches keys added with ``+`` that Hydra accepts;
2. ``OmegaConf.to_object``: builds the dataclasses, so their ``__post_init__`` range checks run;
3. cross-field checks, collected and raised once.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import math
import re
from typing import Any, Type, TypeVar

from omegaconf import MISSING, DictConfig, OmegaConf
from omegaconf.errors import ConfigKeyError, MissingMandatoryValue, OmegaConfBaseException

from peftlab.config.commands import TrainSchema
from peftlab.config.instantiate import disallowed_targets
from peftlab.config.plugins import method_schema, model_serves
from peftlab.config.user_plugins import check_loaded
from peftlab.errors import ConfigError

T = TypeVar("T")

_CONVERT = re.compile(r"Value '(?P<value>.*?)' (?:of type '\w+' )?could not be converted to (?P<type>\w+)")
_UNKNOWN = re.compile(r"Key '[^']+' (?:is )?not in")
_ARTICLE = {"Integer": "an integer", "Float": "a number", "Boolean": "a boolean (true/false)", "String": "a string"}


def _schema_of(group: str, node: Any, field_type: Any) -> Any:
    if group == "method":
        return method_schema(node.get("name") if isinstance(node, DictConfig) else None)
    import typing

    if typing.get_origin(field_type) is typing.Union:  # Optional[Schema]: an optional group (rl, preference)
        found = [t for t in typing.get_args(field_type) if dataclasses.is_dataclass(t)]
        field_type = found[0] if len(found) == 1 else None
    return field_type if dataclasses.is_dataclass(field_type) else None


def _field_names(schema: Any) -> list[str]:
    return [f.name for f in dataclasses.fields(schema)]


def omegaconf_message(err: OmegaConfBaseException, prefix: str = "") -> str:
    """One line for an OmegaConf error: the full key and what is wrong with its value."""
    key = getattr(err, "full_key", None) or getattr(err, "key", None) or ""
    key = f"{prefix}.{key}" if prefix and key else (prefix or str(key))
    text = str(err).splitlines()[0] if str(err) else type(err).__name__
    if isinstance(err, ConfigKeyError) or _UNKNOWN.search(text):
        owner = getattr(err, "object_type", None)
        known = f" (known keys: {', '.join(_field_names(owner))})" if dataclasses.is_dataclass(owner) else ""
        return f"{key}: unknown key{known}"
    if isinstance(err, MissingMandatoryValue):
        return f"{key}: missing value (set it with {key}=...)"
    m = _CONVERT.search(text)
    if m:
        kind = _ARTICLE.get(m.group("type"), m.group("type").lower())
        return f"{key} must be {kind}, got {m.group('value')!r}"
    return f"{key}: {text}"


def _strict_merge(group: str, schema: Any, node: Any) -> DictConfig:
    base = OmegaConf.structured(schema)  # dataclass nodes reject unknown keys; Dict fields stay open
    try:
        # merge plain values: a node that Hydra force-added keys to (`+method.rr=4`) keeps its type
        # but would merge without complaint
        return OmegaConf.merge(base, OmegaConf.to_container(node, resolve=True))
    except ConfigKeyError as err:
        bad = err.full_key or err.key
        known = ", ".join(n for n in _field_names(schema) if n != "name")
        owner = f" for {group} '{node.get('name')}'" if isinstance(node, DictConfig) and "name" in node else ""
        raise ConfigError(f"{group}.{bad}: unknown key{owner} (known keys: {known})") from None
    except OmegaConfBaseException as err:
        raise ConfigError(omegaconf_message(err, group)) from None


def validate(cfg: DictConfig, schema: Type[T] = TrainSchema) -> T:
    """Check ``cfg`` against ``schema`` and return the typed config object."""
    known = _field_names(schema)
    errors = [f"{key}: unknown key (known top-level keys: {', '.join(known)})" for key in cfg.keys()
              if key not in known]
    groups = _typed_groups(cfg, schema, errors)
    values = _typed_scalars(cfg, schema, set(groups), errors)
    if errors:
        raise ConfigError("; ".join(errors))
    missing = [f.name for f in dataclasses.fields(schema)
               if f.default == MISSING and f.name not in groups and f.name not in values]
    if missing:
        raise ConfigError("; ".join(f"{n}: missing (pick one with {n}=<name>)" for n in missing))
    try:
        obj = schema(**groups, **values)
    except OmegaConfBaseException as err:
        raise ConfigError(omegaconf_message(err)) from None
    check_loaded(getattr(obj, "plugins", None))  # loaded from the command line before composing, never from here
    _cross_checks(obj)
    return obj


def _typed_groups(cfg: DictConfig, schema: Any, errors: list[str]) -> dict[str, Any]:
    """Each config group as its typed object (or a plain dict for a Dict field); problems go to ``errors``."""
    hints = _resolved_hints(schema)
    groups: dict[str, Any] = {}
    for name in _field_names(schema):
        node = cfg._get_node(name) if name in cfg else None
        if not isinstance(node, DictConfig):
            continue
        if node._is_none():  # an optional group left out (preference: null)
            groups[name] = None
            continue
        try:
            sub = _schema_of(name, node, hints.get(name))
            groups[name] = OmegaConf.to_object(_strict_merge(name, sub, node) if sub else node)
        except ConfigError as err:
            errors.append(str(err))
        except OmegaConfBaseException as err:
            errors.append(omegaconf_message(err, name))
    return groups


def _typed_scalars(cfg: DictConfig, schema: Any, groups: set[str], errors: list[str]) -> dict[str, Any]:
    """The top-level values that are not groups, type-checked against the schema."""
    scalars = {name: cfg._get_node(name) for name in _field_names(schema)
               if name in cfg and name not in groups and not isinstance(cfg._get_node(name), DictConfig)}
    try:
        top = OmegaConf.merge(OmegaConf.structured(schema), scalars)
        return {k: _value(top, k) for k in scalars}
    except OmegaConfBaseException as err:
        errors.append(omegaconf_message(err))
        return {}


def _value(cfg: DictConfig, name: str) -> Any:
    value = cfg[name]
    return OmegaConf.to_object(value) if OmegaConf.is_config(value) else value


def _resolved_hints(schema: Any) -> dict:
    import typing

    try:
        return typing.get_type_hints(schema)
    except Exception:  # pragma: no cover - forward refs that cannot resolve
        return {}


def _has_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def _cross_checks(obj: Any) -> None:
    """Checks that involve more than one field; every problem is collected, then raised once."""
    errors = [*_non_finite(obj), *_precision_checks(obj), *_fit_checks(obj), *_target_checks(obj)]
    if errors:
        raise ConfigError("; ".join(errors))


def _non_finite(obj: Any, key: str = "") -> list[str]:
    """No number in any group may be inf or nan: a schema's own range checks name most, this names
    the rest (a scaling, a weight decay, a clipping value)."""
    errors = []
    for f in dataclasses.fields(obj):
        value, full = getattr(obj, f.name), f"{key}{f.name}"
        if dataclasses.is_dataclass(value):
            errors += _non_finite(value, full + ".")
        elif isinstance(value, float) and not math.isfinite(value):
            errors.append(f"{full} must be a finite number, got {value}")
    return errors


def _precision_checks(obj: Any) -> list[str]:
    precision, hardware = getattr(obj, "precision", None), getattr(obj, "hardware", None)
    errors: list[str] = []
    if precision is not None and hardware is not None:
        if precision.trainer.startswith("16") and hardware.accelerator == "cpu":
            errors.append(f"precision.trainer={precision.trainer} needs a GPU (hardware.accelerator=cpu); "
                          "use precision=bf16 or precision=fp32 on CPU")
        if precision.quantize and hardware.strategy == "fsdp":
            errors.append(f"precision={precision.name} does not combine with hardware.strategy=fsdp: a quantized "
                          "base is already small; use hardware=ddp")
        if precision.split and hardware.strategy == "fsdp":
            errors.append(f"precision={precision.name} does not combine with hardware.strategy=fsdp: FSDP2 gathers "
                          f"each layer's weights as one buffer of one dtype, and this layout keeps {precision.dtype} "
                          f"and {precision.trainable_dtype} weights in every layer; use hardware=ddp")
    if precision is not None and precision.split and precision.quantize:
        errors.append(f"precision={precision.name} stores the base in {precision.dtype} and precision.quantize="
                      f"{precision.quantize} in {precision.quantize}: choose one (a 4-bit base multiplies in bf16 "
                      "with precision=nf4 precision.compute_dtype=bfloat16)")
    if precision is not None and precision.quantize and importlib.util.find_spec("bitsandbytes") is None:
        errors.append(f"precision={precision.name} needs the bitsandbytes package (pip install -e '.[quant]'; make "
                      "installs it)")
    if hardware is not None and hardware.accelerator in ("gpu", "cuda") and not _has_cuda():
        errors.append(f"hardware.accelerator={hardware.accelerator}: this machine has no CUDA device "
                      "(torch.cuda.is_available() is False); use hardware=cpu")
    return errors


def _fit_checks(obj: Any) -> list[str]:
    """The model serves the data's task type, and the method accepts the rest (its own refusals)."""
    model, data, method = getattr(obj, "model", None), getattr(obj, "data", None), getattr(obj, "method", None)
    errors: list[str] = []
    if model is not None and data is not None and not model_serves(model.tasks, data.task_type):
        errors.append(f"data.task_type={data.task_type} (data={data.name}) does not fit model={model.name}, "
                      f"which serves {', '.join(model.tasks)}")
    if method is not None:
        errors += method.check(obj)  # the method's own refusals (peftlab.methods)
    return errors


def _target_checks(obj: Any) -> list[str]:
    """Callbacks, loggers and the optimizer name only targets peftlab allows (config/instantiate.py)."""
    errors: list[str] = []
    for group in ("callbacks", "logger"):
        for name, node in (getattr(obj, group, None) or {}).items():
            if node is not None and (not isinstance(node, dict) or "_target_" not in node):
                errors.append(f"{group}.{name}: must be null or a node with a _target_, got {node!r}")
            errors += disallowed_targets(node, f"{group}.{name}")
    optim = getattr(obj, "optim", None)
    if optim is not None:
        errors += disallowed_targets(optim.optimizer, "optim.optimizer")
    return errors
