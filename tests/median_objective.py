"""An objective of one's own, as a plug-in module: GRPO whose advantage is each reward less its
group's median, not scaled (a baseline one outlier cannot move). One named step is overridden;
sampling, scoring, the reference and the loss are OnlineRL's."""

from peftlab.plugins import OnlineRL, register_objective


@register_objective
class MedianBaseline(OnlineRL):
    name = "grpo_median"

    def advantages(self, rewards):
        groups = rewards.view(-1, self.settings.num_generations)
        return (groups - groups.median(dim=1, keepdim=True).values).view(-1)
