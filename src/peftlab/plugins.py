"""What a plug-in module of your own imports to add to peftlab without a fork (docs/guides/plugins.md).

A plug-in is a module of your own package, loaded by every command when the package declares it as
an entry point (``[project.entry-points."peftlab.plugins"] mylab = "mylab.plugin"``), or by the
command lines that name it (``peftlab-train plugins=[mylab.plugin] ...``). As it is imported it
registers what it brings::

    from peftlab.plugins import reward

    @reward("brevity")
    def brevity(prompts, completions, **kwargs):
        return [1.0 / (1 + len(c.split())) for c in completions]

    peftlab-train data=date_prompts rl=grpo plugins=[mylab.plugin] 'rl.rewards={brevity: 0.5, date_exact: 1.0}'

- ``register_method``: a method (its schema dataclass, builder and capabilities, as peftlab's own
  in ``peftlab/methods/``); ``method=<name>`` then works with no YAML file (the schema's defaults
  are the method's defaults);
- ``register_task``: a task type (a ``Task`` subclass; ``data.task_type=<name>``);
- ``register_objective``: a training objective (an ``Objective`` subclass, such as ``OnlineRL`` with
  one named step overridden; ``training_objective=<name>``: docs/guides/objectives.md);
- ``reward``: a reward function for online RL, TRL's calling convention;
- ``preference_loss``: a preference loss (``preference.loss=<name>``);
- ``register_data_format``: a record format (``data.format=<name>``); ``reads_every_format``: a task
  type of one's own (a ``CausalLMTask`` subclass) trains on conversations too;
- ``register_config_dir``: a folder of configs (``model/``, ``data/``, ``experiment/`` ...) whose
  options sit beside peftlab's;
- callbacks and optimizers: any class of a loaded plug-in's package may be named in a ``_target_``.

``peftlab init <folder>`` writes a project with one of each, ready to install.
"""

from __future__ import annotations

from typing import Any, Callable, Optional

from peftlab.config.plugins import Capabilities, MethodSchema
from peftlab.config.user_plugins import register_config_dir
from peftlab.data.formats import reads_every_format, register_data_format
from peftlab.methods.base import BuildContext, MethodHooks, MethodSpec
from peftlab.objectives.base import Objective, register_objective
from peftlab.objectives.online_rl import OnlineRL
from peftlab.tasks.base import Task, register_task
from peftlab.tasks.causal_lm import CausalLMTask
from peftlab.tasks.preference_losses import PairLogps, preference_loss
from peftlab.tasks.rewards import reward

__all__ = ["BuildContext", "CausalLMTask", "Capabilities", "MethodHooks", "MethodSchema", "Objective", "OnlineRL",
           "PairLogps", "Task", "preference_loss", "reads_every_format", "register_config_dir", "register_data_format",
           "register_method", "register_objective", "register_task", "reward"]


def register_method(name: str, schema: type[MethodSchema], build: Optional[Callable], trains: str,
                    capabilities: Capabilities, **kwargs: Any) -> MethodSpec:
    """Add ``method=<name>``: as ``peftlab.methods.register_method``, and the schema stored as the
    option itself, so that no YAML file is needed (one source of defaults: the schema's)."""
    from hydra.core.config_store import ConfigStore

    from peftlab.methods.base import register_method as register

    spec = register(name, schema, build, trains, capabilities, **kwargs)
    ConfigStore.instance().store(group="method", name=name, node=schema, provider="peftlab-plugin")
    return spec
