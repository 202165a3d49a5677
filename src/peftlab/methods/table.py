"""The capability table of every registered method, generated from the registry (so it cannot drift
from the code): ``peftlab-methods`` prints it, and ``python scripts/update_docs.py`` writes it into
the README and the docs between their markers; a test compares them."""

from __future__ import annotations

from peftlab.config.plugins import served_task_types
from peftlab.methods.base import METHODS

COLUMNS = ("method", "what trains", "task types", "merges", "8/4-bit base", "bf16 base (`auto`)",
           "counts on meta device", "per-step hook", "DPO `adapter_off`")


def _yes(flag: bool) -> str:
    return "yes" if flag else "no"


def _bf16(c) -> str:
    """Whether the method trains on a bf16 base (precision=bf16_base), and whether precision=auto
    chooses that for it (its quality shown equivalent to fp32)."""
    if not c.bf16_base:
        return "no"
    return "yes (auto)" if c.bf16_auto else "yes"


def capability_table() -> str:
    """The registry as a Markdown table, one row per method, in name order."""
    rows = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for name in sorted(METHODS):
        spec = METHODS[name]
        c = spec.capabilities
        tasks = ", ".join(f"`{t}`" for t in served_task_types(c))
        rows.append("| " + " | ".join([
            f"`{name}`", spec.trains, tasks, _yes(c.mergeable), _yes(c.quantized_base), _bf16(c), _yes(c.meta_device),
            _yes(c.per_step_hook), _yes(c.adapter and c.starts_as_base)]) + " |")
    return "\n".join(rows)
