"""Whether vLLM and SGLang can serve an adapter as a LoRA, read from its ``adapter_config.json``:
the one rule behind the capability table's serving column, the merge report and the model cards.

What the two servers take, as their code says. vLLM: vllm/config/lora.py and
vllm/lora/peft_helper.py, 0.11 to 0.14 (the docs of 0.22 and later show the same fields).
SGLang: python/sglang/srt/lora/ (lora_config.py, lora.py, utils.py) on its main branch, whose
LoRA config reads r, lora_alpha, target_modules and rank_pattern, and whose layers apply A and B:
  - peft_type LORA only: both read LoRA configs (SGLang's loader asserts ``peft_type == "lora"``);
    any other tuner is no LoRA to them;
  - no DoRA: vLLM refuses ``use_dora`` ("vLLM does not yet support DoRA"); neither applies DoRA's
    magnitude vectors;
  - no ``modules_to_save``: vLLM refuses any ("vLLM only supports modules_to_save being None");
    whole trained layers (a task head, an embedding, the LM head) are not low-rank weights. Trained
    embedding rows (``trainable_token_indices``) and trained biases (``bias``, ``lora_bias``) are
    extra weights of the same kind (vLLM's ``PEFTHelper`` takes ``bias: "none"`` only);
  - a rank vLLM can hold: ``--max-lora-rank`` takes one of ``VLLM_MAX_LORA_RANKS``
    (``MaxLoRARanks``), and an adapter loads when its rank is at most the value chosen ("LoRA rank
    r is greater than max_lora_rank" otherwise), so r and every rank of ``rank_pattern`` must be at
    most 512. SGLang's ``--max-lora-rank`` is any integer (inferred from the adapters), so vLLM's
    bound is the one both keep.
"""

from __future__ import annotations

from typing import Any

VLLM_MAX_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)  # vllm/config/lora.py MaxLoRARanks
LARGEST_RANK = max(VLLM_MAX_LORA_RANKS)
COLUMN = "served as LoRA (vLLM/SGLang)"


def _kind(config: dict[str, Any]) -> str:
    kind = config.get("peft_type")
    return str(getattr(kind, "value", kind) or "")


def adapter_rank(config: dict[str, Any]) -> int:
    """The largest rank of a LoRA adapter: ``r``, or a larger one its ``rank_pattern`` gives a module."""
    ranks = [config.get("r") or 0, *(config.get("rank_pattern") or {}).values()]
    return max(int(r) for r in ranks)


def serving_refusal(config: dict[str, Any]) -> str:
    """Why vLLM and SGLang cannot serve the adapter of ``config`` (an adapter_config.json as a dict;
    {} for a folder that holds a whole model) as a LoRA, in a few words; "" when they can."""
    kind = _kind(config)
    if not kind:
        return "a whole model, not an adapter"
    if kind != "LORA":
        return f"{kind}, not LoRA"
    reasons = []
    if config.get("use_dora"):
        reasons.append("DoRA")
    saved = config.get("modules_to_save")
    if saved:
        reasons.append(f"modules_to_save={', '.join(map(str, saved))} (whole trained layers)")
    if config.get("trainable_token_indices"):
        reasons.append("trainable_token_indices (trained embedding rows)")
    if (config.get("bias") or "none") != "none":
        reasons.append(f"bias={config['bias']} (trained biases)")
    if config.get("lora_bias"):
        reasons.append("lora_bias=true (trained biases)")
    rank = adapter_rank(config)
    if rank > LARGEST_RANK:
        reasons.append(f"r={rank} above {LARGEST_RANK} (vLLM's largest --max-lora-rank)")
    return "; ".join(reasons)


def serving_verdict(config: dict[str, Any]) -> str:
    """One line for a report or a card: "yes" with the smallest ``--max-lora-rank`` vLLM needs for it,
    or "no: <why>"."""
    why = serving_refusal(config)
    if why:
        return f"no: {why}"
    needed = min(r for r in VLLM_MAX_LORA_RANKS if r >= adapter_rank(config))
    return f"yes (vLLM: --max-lora-rank {needed} or more)"
