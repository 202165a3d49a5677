"""A reward a random tiny model can earn, as a plug-in module (``plugins=[ascii_reward]`` with this
folder on PYTHONPATH): the share of its answer's characters that are ASCII."""

from peftlab.plugins import reward


@reward("ascii_share")
def ascii_share(prompts, completions, **kwargs):
    return [sum(ord(ch) < 128 for ch in c) / max(1, len(c)) for c in completions]
