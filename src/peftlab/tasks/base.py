"""The task registry, and what a task type owns.

A task type (causal LM, classification, ...) owns what is trained on and how it is measured: the
transformers auto class and peft's task type, how a record becomes an example and examples a
batch, the loss of its labelled examples, evaluation and its metrics, the primary metric and its
direction, and what a merge verification compares. How a run trains is its objective's
(peftlab/objectives/: the task's own loss, or online RL). Everything else (the LightningModule, the
data module, training, evaluation, merge) asks the task and never branches on its name.
"""

from __future__ import annotations

from functools import cached_property
from typing import TYPE_CHECKING, Any, Callable, ClassVar, Optional

from peftlab.config.plugins import register_task_type
from peftlab.config.schema import DataSchema
from peftlab.errors import ConfigError

if TYPE_CHECKING:  # the registry is read when a config is validated: torch loads later, with the model
    import torch

    from peftlab.tasks.metrics import SplitMetrics


class Task:
    """One task type, bound to a run's data config. Subclasses set the class attributes and
    implement the methods below, then register with ``@register_task``."""

    name: ClassVar[str]  # data.task_type
    peft_task_type: ClassVar[str]  # peft's TaskType
    generative: ClassVar[bool]  # the model generates text (a causal LM head)
    primary_metric: ClassVar[str]  # what sweeps, reports and merge checks look at first
    greater_is_better: ClassVar[bool] = True
    metric_names: ClassVar[tuple[str, ...]]  # what evaluation reports on a test split
    probe_name: ClassVar[str]  # what ``probe`` returns, in words (merge reports)
    takes_preference: ClassVar[bool] = False  # trains with the run's preference settings
    takes_rl: ClassVar[bool] = False  # trains with the run's online RL settings
    # (tiny model, shipped data) the peft tuner probe (engine/probe.py) runs this task type on; None: not probed
    probe_setup: ClassVar[Optional[tuple[str, str]]] = None
    # a task type of one's own that builds on another (a plug-in's variant of causal_lm): every model
    # that serves that one serves this one too (model.tasks need not name it)
    models_of: ClassVar[Optional[str]] = None

    @classmethod
    def merge_metrics(cls) -> tuple[str, ...]:
        """The test metrics a merge compares, adapter against merged model; the first is held to a
        tolerance. Only what the model alone determines: every metric here, the primary first."""
        return (cls.primary_metric, *[m for m in cls.metric_names if m != cls.primary_metric])

    def __init__(self, data: DataSchema, labels: Optional[list[str]] = None, run: Any = None):
        self.data = data
        self._labels = labels
        self.run = run  # the run's whole validated config, for tasks that read more than the data
        self.run_dir: Any = None  # where a task may write records of its own (set by the training job)
        self.writes_records = True  # False on every process but the first

    def check(self, run: Any) -> list[str]:
        """Problems with this task in ``run`` (one line each), before any work."""
        if getattr(run, "preference", None) is not None and not self.takes_preference:
            return [f"preference={run.preference.name}: data.task_type={self.name} trains on no preference pairs"]
        if getattr(run, "rl", None) is not None and not self.takes_rl:
            return [f"rl={run.rl.name}: data.task_type={self.name} is not online RL (use data of task type rl, "
                    "e.g. data=date_prompts)"]
        return []

    def settings_record(self) -> dict[str, Any]:
        """What the task trained with beyond the data config, for metrics.json."""
        return {}

    def answer(self, model: Any, tokenizer: Any, prompts: list[str], options: Any,
               streamer: Any = None) -> list[dict[str, Any]]:
        """The model's answers to a user's prompts (peftlab-generate), one dict per prompt.
        ``options``: max_new_tokens, do_sample, temperature, top_p, batch_size."""
        raise NotImplementedError

    def length(self, example: dict[str, Any]) -> int:
        """The length of an encoded example as a batch pads it (``data.group_by_length`` sorts by it)."""
        return len(example["input_ids"])

    # ------------------------------------------------------------------------------ the job's hooks
    def before_wrapping(self, backbone: Any) -> None:
        """Called with the loaded backbone before the method wraps it."""

    def before_training(self, model: Any, data: Any) -> None:
        """Called with the wrapped model and the data module before the first step (and on resume)."""

    # ------------------------------------------------------------------------------- the model
    @classmethod
    def auto_class(cls) -> Any:
        """The transformers auto class that loads a model for this task."""
        raise NotImplementedError

    @classmethod
    def checkpoint_class(cls) -> Any:
        """The class a random-init backbone serving this task is saved with (heads that belong
        to the pretrained model are saved; task heads sized at load time are not)."""
        raise NotImplementedError

    @cached_property
    def labels(self) -> Optional[list[str]]:
        """Class names in id order, for tasks that have classes."""
        return self._labels

    def model_kwargs(self) -> dict[str, Any]:
        """Extra ``from_pretrained`` / config arguments (a classification head's size)."""
        return {}

    # -------------------------------------------------------------------------------- the data
    def encoder(self, tokenizer: Any) -> Callable[[dict[str, Any], str], dict[str, Any]]:
        """A function (record, where) -> example; ``where`` names the file and line for errors.
        Examples carry ``truncated`` (cut by data.max_length)."""
        raise NotImplementedError

    def collator(self, tokenizer: Any, evaluation: bool) -> Callable[[list[dict[str, Any]]], dict[str, Any]]:
        raise NotImplementedError

    def fields(self) -> dict[str, str]:
        """The fields every record must hold: data key -> field name."""
        return {"prompt_field": self.data.prompt_field, "response_field": self.data.response_field}

    def unusable(self, record: dict[str, Any], example: dict[str, Any]) -> Optional[str]:
        """Why an example would train or test nothing (a few words), or None when it is usable."""
        return None

    # ---------------------------------------------------------------------- training, evaluation
    def loss(self, model: torch.nn.Module, batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        """(summed loss, count it averages over) of one batch's labelled examples: what the
        ``task_loss`` objective trains on."""
        raise NotImplementedError

    def metrics(self, full: bool) -> SplitMetrics:
        """A split's metrics: ``full``, every metric the task reports (generation included: what the
        test split measures, and validation where a selection reads it); else the loss and what
        costs no more than the loss."""
        raise NotImplementedError

    def evaluate_batch(self, model: torch.nn.Module, tokenizer: Any, batch: dict[str, Any],
                 metrics: SplitMetrics) -> list[dict[str, Any]]:
        """Update ``metrics`` with one batch; returns its predictions (prediction, reference, correct)."""
        raise NotImplementedError

    # -------------------------------------------------------------------------- merge checks
    def verification_logits(self, model: torch.nn.Module, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        """fp32 logits a merge must reproduce: ``all`` (every real position) and ``answer`` (the
        positions the task is judged on), as (positions, classes) tensors."""
        raise NotImplementedError

    def probe(self, model: torch.nn.Module, tokenizer: Any, batch: dict[str, Any]) -> list[str]:
        """Discrete outputs a merge must reproduce exactly in fp32 (``probe_name``)."""
        raise NotImplementedError


TASKS: dict[str, type[Task]] = {}


def register_task(cls: type[Task]) -> type[Task]:
    """Class decorator: ``data.task_type=<cls.name>`` then uses ``cls``."""
    if cls.name in TASKS:
        raise ValueError(f"task type {cls.name!r} is registered twice")
    TASKS[cls.name] = cls
    register_task_type(cls.name, generative=cls.generative, models_of=cls.models_of,
                       peft_task_type=getattr(cls, "peft_task_type", None))
    return cls


def task_class(name: str) -> type[Task]:
    try:
        return TASKS[name]
    except KeyError:
        raise ConfigError(f"data.task_type must be one of {', '.join(TASKS)}, got {name!r}") from None


def make_task(data: DataSchema, labels: Optional[list[str]] = None, run: Any = None) -> Task:
    """The task object of a run's data config (``run``: the run's whole config, when there is one)."""
    return task_class(data.task_type)(data, labels, run)
