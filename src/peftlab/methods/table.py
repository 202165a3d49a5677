"""The capability table of every registered method, generated from the registry (so it cannot drift
from the code): ``peftlab-methods`` prints it, and ``python scripts/update_docs.py`` writes it into
the README and the docs between their markers; a test compares them."""

from __future__ import annotations

from peftlab.config.plugins import served_task_types
from peftlab.methods.base import METHODS

COLUMNS = ("method", "what trains", "task types", "merges", "combines", "8/4-bit base", "bf16 base (`auto`)",
           "counts on meta device", "per-step hook", "DPO `adapter_off`")


def _yes(flag: bool) -> str:
    return "yes" if flag else "no"


def _bf16(c) -> str:
    """Whether the method trains on a bf16 base (precision=bf16_base), and whether precision=auto
    chooses that for it (its quality shown equivalent to fp32)."""
    if not c.bf16_base:
        return "no"
    return "yes (auto)" if c.bf16_auto else "yes"


def _combines(c) -> str:
    """The peftlab-combine types its adapters take."""
    from peftlab.config.commands import COMBINATION_TYPES

    if not c.combinations:
        return "no"
    return "every type" if set(c.combinations) == set(COMBINATION_TYPES) else ", ".join(c.combinations)


def tuner_table() -> str:
    """What the capability probe found for every tuner peft ships (``method=peft``), one row each."""
    from peftlab.methods.generic import probe_results

    results = probe_results()
    kinds = sorted({t for r in results.values() for t in r["tasks"]})
    head = ["`method.peft_type`", *(f"`{k}`" for k in kinds), "merges", "fresh = base", "options the probe gave"]
    rows = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, r in results.items():
        found = r["tasks"]
        passed = [found[k] for k in kinds if found.get(k, {}).get("passed")]
        cells = ["pass" if found.get(k, {}).get("passed") else f"no: {found.get(k, {}).get('reason', 'not probed')}"
                 for k in kinds]
        merges = "n/a" if not passed else ("yes" if all(p.get("merges") for p in passed) else "no")
        options = {k: v for p in found.values() for k, v in p.get("options", {}).items() if k != "token_indices"}
        shown = ", ".join(f"`{k}={v}`" for k, v in options.items())
        rows.append("| " + " | ".join([f"`{name}`", *(c.replace("|", "/") for c in cells), merges,
                                      _yes(bool(passed) and all(p.get("starts_as_base") for p in passed)),
                                      shown]) + " |")
    return "\n".join(rows)


def capability_table() -> str:
    """The registry as a Markdown table, one row per method, in name order."""
    rows = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for name in sorted(METHODS):
        spec = METHODS[name]
        c = spec.capabilities
        tasks = ", ".join(f"`{t}`" for t in served_task_types(c))
        rows.append("| " + " | ".join([
            f"`{name}`", spec.trains, tasks, _yes(c.mergeable), _combines(c), _yes(c.quantized_base), _bf16(c),
            _yes(c.meta_device),
            _yes(c.per_step_hook), _yes(c.adapter and c.starts_as_base)]) + " |")
    return "\n".join(rows)
