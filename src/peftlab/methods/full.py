"""Full fine-tuning: the baseline. Every weight trains and there is no peft wrapper; the run saves
the whole model in HF format instead of an adapter."""

from __future__ import annotations

from dataclasses import dataclass

from peftlab.config.plugins import Capabilities, MethodSchema
from peftlab.methods.base import register_method


@dataclass
class FullSchema(MethodSchema):
    name: str = "full"


register_method(
    "full", FullSchema, build=None,
    trains="every weight of the backbone (the baseline)",
    capabilities=Capabilities(mergeable=False, adapter=False, bf16_base=False),
    not_mergeable="it trains every weight, so there is no separate update to fold in",
)
