"""The registry of training objectives, and what an objective owns.

A task says *what* a run trains on: the data, how a record becomes a batch, the metrics and the
evaluation. An objective (a recipe, in torchtune's word) says *how* it trains: what one training
step computes from a batch, what it keeps between steps, what it measures while training and what
it needs beside the policy (a reference, a reward model). ``task_loss`` trains on the task's own
loss of its labelled examples (SFT's token loss, classification's cross-entropy, the preference
losses, the reward model's pair loss); ``online_rl`` samples from the policy and trains on the
rewards of its own answers.

A training step is a sequence of named steps (``Objective.steps``), each a method: an objective of one's
own subclasses one and overrides the step it changes (docs/guides/objectives.md). The LightningModule
and the training job call the hooks below and never ask which objective it is.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, ClassVar

from peftlab.errors import ConfigError

if TYPE_CHECKING:  # the registry is read when a config is checked: torch loads later, with the model
    import torch

    from peftlab.tasks.base import Task


class Objective:
    """How one run trains its task. Subclasses set ``name`` and ``steps``, implement ``loss`` from
    their named steps, and register with ``@register_objective``."""

    name: ClassVar[str]  # training_objective=<name>
    steps: ClassVar[tuple[str, ...]]  # the named steps of one training step, in order: each a method

    def __init__(self, task: Task, run: Any = None):
        self.task = task
        self.run = run  # the run's whole validated config
        self.step = 0  # the optimizer step a training batch belongs to (set by the LightningModule)

    @property
    def run_dir(self) -> Any:  # where an objective may write records of its own: the task's (the training job sets it)
        return self.task.run_dir

    @property
    def writes_records(self) -> bool:  # False on every process but the first
        return self.task.writes_records

    def check(self, run: Any) -> list[str]:
        """Problems with training ``run`` this way (one line each), before any work."""
        return []

    # ------------------------------------------------------------------------------ the job's hooks
    def before_wrapping(self, backbone: Any) -> None:
        """Called with the loaded backbone before the method wraps it (a separate reference copies it)."""

    def before_training(self, model: Any, data: Any) -> None:
        """Called with the wrapped model and the data module before the first step (and on resume)."""

    def loss(self, model: torch.nn.Module, batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        """(summed loss, the count it averages over) of one training batch, from the named steps."""
        raise NotImplementedError

    def step_logs(self) -> dict[str, float]:
        """What the last training step measured beyond its loss, for the loggers (train/<key>)."""
        return {}

    def settings_record(self) -> dict[str, Any]:
        """What the run trained with beyond the configs, for metrics.json."""
        return {}

    def checkpoint_state(self) -> dict[str, Any]:
        """What the next steps still need, for a checkpoint (plain tensors and numbers)."""
        return {}

    def load_checkpoint_state(self, state: dict[str, Any]) -> None:
        """Put back what ``checkpoint_state`` saved."""


OBJECTIVES: dict[str, type[Objective]] = {}


def register_objective(cls: type[Objective]) -> type[Objective]:
    """Class decorator: ``training_objective=<cls.name>`` then uses ``cls``."""
    if cls.name in OBJECTIVES:
        raise ValueError(f"objective {cls.name!r} is registered twice")
    missing = [s for s in cls.steps if not callable(getattr(cls, s, None))]
    if missing:
        raise ValueError(f"objective {cls.name!r} names steps it has no method for: {', '.join(missing)}")
    OBJECTIVES[cls.name] = cls
    return cls


def objective_name(run: Any, task: Task) -> str:
    """The objective a run trains with: ``training_objective`` where it names one, else online RL for ``rl=...``
    or prompts of an online RL task type, and the task's own loss for everything else."""
    name = getattr(run, "training_objective", None)
    if name:
        return name
    return "online_rl" if getattr(run, "rl", None) is not None or task.takes_rl else "task_loss"


def make_objective(task: Task, run: Any = None) -> Objective:
    """The objective of a run (``run``: its validated config, or None)."""
    name = objective_name(run, task)
    if name not in OBJECTIVES:
        raise ConfigError(f"training_objective must be one of {', '.join(OBJECTIVES)}, got {name!r}")
    return OBJECTIVES[name](task, run)


class Clock:
    """Adds each call's wall time to its phase in ``seconds`` (where a step's time goes)."""

    def __init__(self, seconds: dict[str, float]):
        self.seconds = seconds

    def __call__(self, phase: str, fn: Callable, *args: Any) -> Any:
        import time

        import torch

        start = time.perf_counter()
        try:
            return fn(*args)
        finally:
            if torch.cuda.is_available():  # the phase's kernels, not only their launch
                torch.cuda.synchronize()
            self.seconds[phase] += time.perf_counter() - start
