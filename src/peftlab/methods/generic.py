"""Any tuner peft ships, built from its config class by name:

    peftlab-train method=peft method.peft_type=VBLORA method.options='{target_modules:[q_proj,v_proj]}'

What a tuner can do on each task type is not declared by hand: the capability probe
(engine/probe.py, run by ``python scripts/probe_peft_tuners.py``) trains each tuner a few steps on
the tiny models, saves it, reloads it with plain peft, merges it where peft offers a merge and
switches it off, and writes what it found to ``peft_tuners.json`` beside this file. A run's
capabilities (the task types it serves, whether it merges, whether switching it off gives the
base) are read from there; a tuner the probe did not pass on the run's task type is refused with
the probe's reason. The dedicated method modules stay for the methods that need more than a
config (hooks, initialisations, checks).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from peftlab.config.plugins import Capabilities, MethodSchema, served_task_types
from peftlab.errors import ConfigError
from peftlab.methods.base import BuildContext, register_method
from peftlab.methods.shared import plain
from peftlab.runs.adapters import keeps_the_base

PROBE_FILE = Path(__file__).with_name("peft_tuners.json")
DEFAULT_TYPE = "DELORA"
# what peftlab sets itself: a run's options may not
SET_BY_PEFTLAB = ("task_type", "peft_type", "base_model_name_or_path", "revision", "inference_mode")


@lru_cache(maxsize=None)
def probe_results() -> dict[str, Any]:
    """peft_type -> what the probe found (peft_tuners.json, written by scripts/probe_peft_tuners.py)."""
    return json.loads(PROBE_FILE.read_text())["tuners"] if PROBE_FILE.is_file() else {}


def config_class(peft_type: str) -> type:
    """peft's config class of ``peft_type`` (``method.peft_type``: unknown names fail with the list)."""
    from peft.mapping import PEFT_TYPE_TO_CONFIG_MAPPING

    known = {getattr(k, "value", k): v for k, v in PEFT_TYPE_TO_CONFIG_MAPPING.items()}
    if peft_type not in known:
        raise ConfigError(f"method.peft_type: unknown peft tuner {peft_type!r} "
                          f"(peft ships: {', '.join(sorted(known))})")
    return known[peft_type]


def probed_capabilities(peft_type: str) -> Capabilities:
    """What the probe found for ``peft_type``: the task types it passed, whether its merge
    reproduced it on every one, and whether a fresh one leaves the model as it was."""
    found = probe_results().get(peft_type, {}).get("tasks", {})
    passed = [t for t, r in found.items() if r.get("passed")]
    return Capabilities(
        mergeable=bool(passed) and all(found[t].get("merges") is True for t in passed),
        meta_device=False, bf16_base=False,
        starts_as_base=bool(passed) and all(found[t].get("starts_as_base") is True for t in passed),
        task_types=tuple(passed))


@dataclass
class PeftSchema(MethodSchema):
    """``peft_type``: the name of a peft tuner (peft's PeftType, e.g. DELORA, C3A, RANDLORA);
    ``options``: the fields of its config class (peft's documentation of that tuner)."""

    name: str = "peft"
    peft_type: str = DEFAULT_TYPE
    options: Any = None  # {field: value} of the config class; null: its defaults

    def __post_init__(self) -> None:
        self.peft_type = str(self.peft_type).upper()
        if self.options is not None and not isinstance(self.options, Mapping):
            raise ConfigError(f"method.options must be {{<option>: <value>, ...}} of peft's config class, "
                              f"got {self.options!r}")
        self.options = dict(self.options or {})
        cls = config_class(self.peft_type)
        fields = {f.name for f in dataclasses.fields(cls)}
        for key in self.options:
            if key in SET_BY_PEFTLAB:
                raise ConfigError(f"method.options.{key}: set by peftlab (from the task and the model), not an option")
            if key not in fields:
                raise ConfigError(f"method.options.{key}: not an option of peft's {cls.__name__} (its options: "
                                  f"{', '.join(sorted(fields - set(SET_BY_PEFTLAB)))})")
        self.capabilities = probed_capabilities(self.peft_type)  # this tuner's, not the default's
        init = self.options.get("init_lora_weights")
        if init is not None and not keeps_the_base(init):  # what method=lora refuses or converts, never silently
            raise ConfigError(f"method.options.init_lora_weights={init!r} rewrites the base's weights, and method=peft "
                              "saves the adapter of that changed base (method=lora method.init=pissa or olora converts "
                              "it to one of the original base)")

    def check(self, run: Any) -> list[str]:
        data = getattr(run, "data", None)
        if data is not None and data.task_type not in served_task_types(self.capabilities):
            found = probe_results().get(self.peft_type, {}).get("tasks", {}).get(data.task_type)
            why = found.get("reason", "failed") if found else "not probed"
            return [f"method.peft_type={self.peft_type} did not pass the capability probe on "
                    f"data.task_type={data.task_type} ({why}; scripts/probe_peft_tuners.py)"]
        return super().check(run)


def build(cfg: PeftSchema, ctx: BuildContext) -> Any:
    cls = config_class(cfg.peft_type)
    try:
        return cls(task_type=ctx.task.peft_task_type, **plain(dict(cfg.options)))
    except (TypeError, ValueError, ImportError) as err:
        raise ConfigError(f"method.options: peft's {cls.__name__} refuses them: {str(err).splitlines()[0]}") from None


register_method(
    "peft", PeftSchema, build,
    trains="any peft tuner by name (`method.peft_type`), as its config class builds it",
    capabilities=probed_capabilities(DEFAULT_TYPE),
    not_mergeable="the capability probe did not find that this tuner's merge reproduces it",
)
