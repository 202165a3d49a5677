"""The task's own loss on its labelled examples: SFT's token loss, classification's cross-entropy,
the preference losses (against the task's reference), the reward model's pair loss."""

from __future__ import annotations

from peftlab.objectives.base import Objective, register_objective


@register_objective
class TaskLoss(Objective):
    name = "task_loss"
    steps = ("loss",)

    def loss(self, model, batch):
        return self.task.loss(model, batch)
