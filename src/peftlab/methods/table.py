"""The capability table of every registered method, generated from the registry (so it cannot drift
from the code): ``peftlab-methods`` prints it, and ``python scripts/update_docs.py`` writes it into
the README and the docs between their markers; a test compares them."""

from __future__ import annotations

import dataclasses
import logging
from functools import lru_cache
from typing import Any

from peftlab.config.plugins import GENERATIVE_TASK_TYPES, served_task_types
from peftlab.methods.base import METHODS, BuildContext, MethodSpec
from peftlab.methods.serving import COLUMN, LARGEST_RANK, serving_refusal

COLUMNS = ("method", "what trains", "task types", "merges", "combines", "8/4-bit base", "bf16 base (`auto`)",
           "counts on meta device", "per-step hook", "DPO `adapter_off`", COLUMN)
# schema fields a run fills from its own settings (AdaLoRA's total_step is ${trainer.max_steps}): the
# values the serving column builds a method's default adapter with
RUN_SET = {"total_step": 100}


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


class _Tokenizer:
    """All a builder asks of a tokenizer on the meta device: its special tokens (trainable_tokens)."""

    all_special_ids = [0]


@lru_cache(maxsize=None)
def _probe_model(task_type: str) -> tuple[Any, Any]:
    """(task, model): a two-layer Llama for ``task_type`` on the meta device, shapes and no weights."""
    import torch
    from transformers import LlamaConfig

    from peftlab.tasks import task_class

    logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)  # its note on optional kernels
    task = task_class(task_type)(data=None, labels=["label_0", "label_1"])
    config = LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, vocab_size=256, max_position_embeddings=1024,
                         tie_word_embeddings=False, pad_token_id=0, **task.model_kwargs())
    with torch.device("meta"):
        return task, task.auto_class().from_config(config)


@lru_cache(maxsize=None)
def served(name: str) -> str:
    """The serving column of a method: what vLLM and SGLang make of the adapter_config its defaults
    write (built on a language model where the method serves one, a Llama on the meta device)."""
    spec: MethodSpec = METHODS[name]
    if spec.build is None or not spec.capabilities.adapter:
        return f"no: {serving_refusal({})}"
    kinds = served_task_types(spec.capabilities)
    task_type = next((t for t in kinds if t in GENERATIVE_TASK_TYPES), kinds[0] if kinds else None)
    try:
        fields = {f.name for f in dataclasses.fields(spec.schema)}
        schema = spec.schema(**{k: v for k, v in RUN_SET.items() if k in fields})
        task, model = _probe_model(task_type)
        config = spec.build(schema, BuildContext(task, model, tokenizer=_Tokenizer(), meta=True)).to_dict()
    except Exception as err:  # noqa: BLE001  (a plug-in's builder that needs more than a meta model)
        return f"not derived ({str(err).splitlines()[0] if str(err) else type(err).__name__})"
    why = serving_refusal(config)
    return f"no: {why}" if why else f"yes: r ≤ {LARGEST_RANK}, without DoRA, modules_to_save or biases"


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
            _yes(c.per_step_hook), _yes(c.adapter and c.starts_as_base), served(name).replace("|", "/")]) + " |")
    return "\n".join(rows)
