"""What plug-ins register with the config system, and the contract of a method's schema.

``peftlab.methods`` and ``peftlab.tasks`` fill these registries when they are imported; nothing in
``config/`` imports them (the dependency goes one way). ``validate()`` finds a method's schema here
by its name and checks its capabilities against the rest of the run.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING

from peftlab.errors import ConfigError


@dataclass(frozen=True)
class Capabilities:
    """What a method can do, declared as data: ``validate()`` refuses what a method cannot do, and
    ``peftlab-merge``, ``peftlab-params`` and the tests read these instead of method names."""

    mergeable: bool  # merge_and_unload folds the trained update into the base weights
    adapter: bool = True  # the run saves a peft adapter (False: the whole model is the artefact)
    meta_device: bool = True  # applies to a model on the meta device (counting with no weights)
    quantized_base: bool = False  # trains on an 8-bit / 4-bit base
    per_step_hook: bool = False  # needs a call after every optimizer step
    # a fresh adapter leaves the outputs unchanged, so switching it off gives the model the run starts
    # from (LoRA's zero B, IA3's ones); not so for virtual tokens (prefix, prompt, P-tuning)
    starts_as_base: bool = True
    task_types: Optional[tuple[str, ...]] = None  # None: every task type
    language_models_only: bool = False  # only the task types whose model generates text (a causal LM head)
    # trains with the frozen base stored in bf16 and its own weights in fp32 (precision=bf16_base)
    bf16_base: bool = True
    # bf16_base was shown equivalent in quality to fp32 (docs/results/precision.md): precision=auto
    # chooses it for this method where the hardware multiplies bf16 natively
    bf16_auto: bool = False
    # the ways peft's add_weighted_adapter combines several of its adapters (peftlab-combine); () : none
    combinations: tuple[str, ...] = ()


@dataclass
class MethodSchema:
    """The base of every method's schema. A method module subclasses it with its own fields and
    ``__post_init__`` range checks, and may extend ``check`` with refusals that involve other groups."""

    name: str = MISSING
    capabilities: ClassVar[Capabilities]  # set by peftlab.methods.register_method
    not_mergeable: ClassVar[str] = ""  # why, in a few words, for methods that cannot merge

    def adapter_off_differs(self) -> str:
        """Why switching this adapter off does not give the model the run starts from ("" when it
        does: preference training may then use the base as its reference)."""
        if self.capabilities.starts_as_base:
            return ""
        return f"a fresh method={self.name} adapter already changes the model"

    def combine_refusal(self, combination_type: str, weights: list[float]) -> str:
        """Why this run's adapter cannot take part in a ``combination_type`` combination with these
        ``weights`` ("" when it can); a method module extends it with what its own settings rule out."""
        allowed = self.capabilities.combinations
        if not allowed:
            return f"method={self.name} adapters cannot be combined (peft combines LoRA and IA3 adapters)"
        if combination_type not in allowed:
            return f"method={self.name} adapters combine by {', '.join(allowed)} only"
        return ""

    def check(self, run: Any) -> list[str]:
        """Problems with this method in ``run`` (a validated top-level config), one line each."""
        problems = []
        data, precision = getattr(run, "data", None), getattr(run, "precision", None)
        supported = served_task_types(self.capabilities)
        if data is not None and data.task_type not in supported:
            problems.append(f"method={self.name} does not serve data.task_type={data.task_type} "
                            f"(it serves {', '.join(supported)})")
        if precision is not None and precision.quantize and not self.capabilities.quantized_base:
            problems.append(f"method={self.name} cannot train on a quantized base (precision={precision.name}): "
                            "it trains the base's own weights, which are 8- or 4-bit integers there")
        if precision is not None and precision.split and not self.capabilities.bf16_base:
            problems.append(f"method={self.name} cannot train at precision={precision.name} (a frozen base in "
                            f"{precision.dtype}, trained weights in {precision.trainable_dtype}): it trains the "
                            "base's own weights; use precision=bf16 (autocast) or precision=bf16_true")
        return problems


METHOD_SCHEMAS: dict[str, type[MethodSchema]] = {}
TASK_TYPES: list[str] = []
GENERATIVE_TASK_TYPES: set[str] = set()


def register_method_schema(name: str, schema: type[MethodSchema]) -> None:
    """Make ``schema`` what ``method=<name>`` validates against, and ``/schema/method/<name>`` for
    its YAML file to extend."""
    METHOD_SCHEMAS[name] = schema
    ConfigStore.instance().store(group="schema/method", name=name, node=schema)


def method_schema(name: Optional[str]) -> type[MethodSchema]:
    if name is None:
        raise ConfigError("method.name: missing (pick a method with method=<name>)")
    try:
        return METHOD_SCHEMAS[name]
    except KeyError:
        known = ", ".join(sorted(METHOD_SCHEMAS))
        raise ConfigError(f"method.name: unknown method {name!r} (known: {known})") from None


@dataclass(frozen=True)
class PreferenceLossSpec:
    """What the config checks need to know of a registered preference loss (tasks/preference_losses.py)."""

    needs_reference: bool
    reads: tuple[str, ...] = ()  # the settings beyond beta that only this loss reads


PREFERENCE_LOSSES: dict[str, PreferenceLossSpec] = {}


def register_preference_loss(name: str, needs_reference: bool, reads: tuple[str, ...] = ()) -> None:
    PREFERENCE_LOSSES[name] = PreferenceLossSpec(needs_reference, reads)


REWARDS: list[str] = []  # the reward functions' names (tasks/rewards.py): rl.rewards.<name>=<weight>


def register_reward(name: str) -> None:
    if name not in REWARDS:
        REWARDS.append(name)


TASK_MODELS: dict[str, str] = {}  # a task type -> the task type whose models serve it too (a plug-in's)
PEFT_TASKS: dict[str, str] = {}  # a task type -> peft's TaskType of its model (CAUSAL_LM, SEQ_CLS, ...)


def register_task_type(name: str, generative: bool = False, models_of: Optional[str] = None,
                       peft_task_type: Optional[str] = None) -> None:
    if name not in TASK_TYPES:
        TASK_TYPES.append(name)
    if peft_task_type:
        PEFT_TASKS[name] = peft_task_type
    if generative:
        GENERATIVE_TASK_TYPES.add(name)
    if models_of:
        TASK_MODELS[name] = models_of


def model_serves(tasks: list[str], task_type: str) -> bool:
    """A model whose config lists ``tasks`` serves ``task_type`` (or the task type it builds on)."""
    return task_type in tasks or TASK_MODELS.get(task_type) in tasks


def task_types() -> tuple[str, ...]:
    return tuple(TASK_TYPES)


def served_task_types(capabilities: Capabilities) -> tuple[str, ...]:
    """The task types a method with these capabilities serves: those it names, and the generative
    ones whose model is of the same peft TaskType as one it names (a tuner shown to train a causal
    LM trains the policy of online RL and a preference-trained model, causal LMs too)."""
    named = capabilities.task_types
    kinds = {PEFT_TASKS.get(t) for t in named or ()} - {None}
    return tuple(t for t in TASK_TYPES if (named is None or t in named or (t in GENERATIVE_TASK_TYPES and
                                                                           PEFT_TASKS.get(t) in kinds))
                 and (not capabilities.language_models_only or t in GENERATIVE_TASK_TYPES))
