"""One source of defaults: the schema. A group YAML that extends a schema (its defaults list names
``/schema/<group>/<name>@_here_``) states only what differs from it, under two rules:

1. No key restates its schema's default: the YAML would hide a later change of the schema and
   become a second source of truth that drifts from the first.
2. A group's ``default.yaml``, and a group's only file, is the schema itself in YAML: every run
   takes it, no other option makes its values "the point of this file", so it states only what a
   dataclass default cannot hold (a ``???`` for a field the schema leaves required, an ``${...}``
   interpolation). Any other value belongs in the schema: here it would contradict it unseen.

A named option (``model/tiny_llama.yaml``, ``precision/nf4.yaml``, ``preference/simpo.yaml``)
differs from its schema on purpose: those differences are what the option is.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from omegaconf import MISSING

from conftest import CONF, ROOT

SCHEMA_ENTRY = re.compile(r"^/schema/(?P<group>[\w/]+)/(?P<name>\w+)@_here_$")


def schema_of(path: Path) -> type | None:
    """The schema dataclass a group YAML extends (None: it extends none)."""
    from hydra.core.config_store import ConfigStore
    from omegaconf import OmegaConf

    import peftlab.config  # noqa: F401  (registers the group schemas)
    import peftlab.methods  # noqa: F401  (registers the method schemas)

    entries = (yaml.safe_load(path.read_text()) or {}).get("defaults", [])
    for entry in entries:
        found = SCHEMA_ENTRY.match(entry) if isinstance(entry, str) else None
        if found:
            node = ConfigStore.instance().repo["schema"]
            for part in found["group"].split("/"):
                node = node[part]
            return OmegaConf.get_type(node[f"{found['name']}.yaml"].node)
    return None


def schema_defaults(schema: type) -> dict[str, Any]:
    out = {}
    for f in dataclasses.fields(schema):
        if f.default is not dataclasses.MISSING:
            out[f.name] = f.default
        elif f.default_factory is not dataclasses.MISSING:
            out[f.name] = f.default_factory()
    return out


def same(a: Any, b: Any) -> bool:
    """Equal as a config value: ``true`` is not ``1``, ``1`` is ``1.0``, mappings and lists item by item."""
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return float(a) == float(b)
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    return type(a) is type(b) and a == b


def _schema_cannot_hold(value: Any, default: Any) -> bool:
    """What only a YAML file can state: a field the schema leaves required (``???``), an interpolation."""
    return (isinstance(default, str) and default == MISSING) or (isinstance(value, str) and "${" in value)


def _show(value: Any) -> str:
    if isinstance(value, (dict, list, tuple, bool)) or value is None:
        return yaml.safe_dump(value, default_flow_style=True, width=1000).strip().removesuffix("\n...")
    return str(value)


def _walk(values: dict, defaults: dict, prefix: str = ""):
    """(key, value, schema default) of every stated key; a mapping stated over a mapping default
    is merged key by key (OmegaConf's merge), so its keys are compared one by one."""
    for key, value in values.items():
        if key == "defaults" and not prefix:
            continue
        default = defaults.get(key, dataclasses.MISSING)
        if isinstance(value, dict) and isinstance(default, dict) and value and default:
            yield from _walk(value, default, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value, default


def problems(path: Path, schema: type, is_default: bool) -> list[str]:
    """What breaks the two rules in one group YAML, one line each, naming the file and the key."""
    from omegaconf import OmegaConf

    name = path.relative_to(ROOT) if path.is_relative_to(ROOT) else path
    values = OmegaConf.to_container(OmegaConf.load(path), resolve=False)
    found = []
    for key, value, default in _walk(values, schema_defaults(schema)):
        if default is dataclasses.MISSING:
            found.append(f"{name}: {key} is no field of {schema.__name__}")
        elif same(value, default):
            found.append(f"{name}: {key}: {_show(value)} restates {schema.__name__}'s default")
        elif is_default and not _schema_cannot_hold(value, default):
            found.append(f"{name}: {key}: {_show(value)} contradicts {schema.__name__}'s default {_show(default)} "
                         "(a group's default file states only what the schema cannot: move the value there)")
    return found


def group_files() -> list[tuple[Path, bool]]:
    """Every YAML under conf/<group>/ with whether it is its group's default (default.yaml, or the only file)."""
    out = []
    for group in sorted(p for p in CONF.iterdir() if p.is_dir()):
        files = sorted(group.rglob("*.yaml"))
        out += [(f, f.name == "default.yaml" or len(files) == 1) for f in files]
    return out


EXTENDING = [(p, d) for p, d in group_files() if schema_of(p) is not None]


def test_every_schema_group_is_checked():
    """The check sees the files it is meant to: each group's YAMLs that extend a schema."""
    groups = {p.parent.name for p, _ in EXTENDING}
    assert groups == {"data", "hardware", "method", "model", "optim", "paths", "precision", "preference", "rl",
                      "trainer"}
    assert {str(p.relative_to(CONF)) for p, d in EXTENDING if d} == {
        "optim/adamw.yaml", "paths/default.yaml", "trainer/default.yaml"}


@pytest.mark.parametrize("path,is_default", EXTENDING, ids=[str(p.relative_to(CONF)) for p, _ in EXTENDING])
def test_a_group_yaml_states_only_what_differs_from_its_schema(path, is_default):
    assert problems(path, schema_of(path), is_default) == []


@dataclasses.dataclass
class _Schema:
    name: str = MISSING
    steps: int = 100
    lr: float = 2e-4
    clip: Any = 1.0
    flag: bool = True
    target: Any = None
    optimizer: dict = dataclasses.field(default_factory=lambda: {"_target_": "torch.optim.AdamW", "eps": 1e-8})


def test_the_check_names_each_restated_or_contradicting_key(tmp_path):
    planted = tmp_path / "x.yaml"
    planted.write_text("defaults:\n  - /schema/trainer/base@_here_\n  - _self_\n\nname: x\nsteps: 100\nlr: 2e-3\n"
                       "clip: 1\nflag: 1\ntarget: ${x}\noptimizer:\n  _target_: torch.optim.AdamW\n  eps: 1e-6\n"
                       "typo: 3\n")
    assert problems(planted, _Schema, is_default=False) == [
        f"{planted}: steps: 100 restates _Schema's default",
        f"{planted}: clip: 1 restates _Schema's default",
        f"{planted}: optimizer._target_: torch.optim.AdamW restates _Schema's default",
        f"{planted}: typo is no field of _Schema",
    ]
    # in a default file a required field and an interpolation are what the schema cannot hold
    assert problems(planted, _Schema, is_default=True) == [
        f"{planted}: steps: 100 restates _Schema's default",
        f"{planted}: lr: 0.002 contradicts _Schema's default 0.0002 (a group's default file states only what the "
        "schema cannot: move the value there)",
        f"{planted}: clip: 1 restates _Schema's default",
        f"{planted}: flag: 1 contradicts _Schema's default true (a group's default file states only what the schema "
        "cannot: move the value there)",
        f"{planted}: optimizer._target_: torch.optim.AdamW restates _Schema's default",
        f"{planted}: optimizer.eps: 1e-06 contradicts _Schema's default 1e-08 (a group's default file states "
        "only what the schema cannot: move the value there)",
        f"{planted}: typo is no field of _Schema",
    ]
