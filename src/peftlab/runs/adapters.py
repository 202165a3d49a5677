"""Loading a saved adapter: the one way peftlab puts a saved adapter on a model (a run's adapter
for eval, merge and generate; ``init_adapter``; the frozen reference; a reward model beside the
policy; the adapter bank of ``peftlab-eval runs=`` and ``peftlab-combine``).

An adapter is data: peft re-runs the initialisation its ``adapter_config.json`` names when it loads
it, and some initialisations rewrite the base's weights (PiSSA, OLoRA, CorDA, LoftQ, ...). Those are
refused from the file, and after every load the base's weights are checked against a fingerprint
taken before it (the bytes of every base tensor), so that no initialisation peft adds later can
change a shared base unnoticed."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from peftlab.errors import ConfigError

# peft's init_lora_weights values that set only the adapter's own weights; any other (pissa, olora,
# corda, loftq, ...) rewrites the base's weights, also each time peft loads an adapter that names it
KEEPS_THE_BASE = ("true", "false", "gaussian", "eva", "orthogonal")


def keeps_the_base(init_lora_weights: Any) -> bool:
    return str(init_lora_weights).lower() in KEEPS_THE_BASE


def check_keeps_base(config: dict[str, Any], folder: Path, key: str) -> None:
    """Refuse an adapter whose saved config names an initialisation that rewrites the base's weights
    when peft loads it (PiSSA's residual base: an adapter of another base than the original)."""
    init = config.get("init_lora_weights", True)
    if not keeps_the_base(init):
        raise ConfigError(f"{key}: {Path(folder) / 'adapter_config.json'} says init_lora_weights={init!r}, which "
                          "rewrites the base's weights when the adapter is loaded; only an adapter of the original "
                          "base can share it (method=lora method.init=pissa saves one, converted)")


def base_fingerprint(model: Any) -> dict[str, tuple[Any, int]]:
    """Every base tensor of ``model`` (not those of its loaded adapters) with the CRC-32 of its bytes:
    a byte-exact record, cheap next to a forward pass, that holds the same on any CPU."""
    adapters = set(getattr(model, "peft_config", {}) or {})
    return {name: (p, _crc(p)) for name, p in model.named_parameters(remove_duplicate=False)
            if not adapters & set(name.split("."))}


def _crc(tensor: Any) -> int:
    import zlib

    data = tensor.detach()
    if data.device.type == "meta":
        return 0
    import torch

    return zlib.crc32(data.reshape(-1).contiguous().cpu().view(torch.uint8).numpy())


def check_base_unchanged(before: dict[str, tuple[Any, int]], folder: Path, key: str) -> None:
    moved = [name for name, (p, crc) in before.items() if _crc(p) != crc]
    if moved:
        raise ConfigError(f"{key}: loading {folder} changed the base's weights ({moved[0]}"
                          f"{f' and {len(moved) - 1} more' if len(moved) > 1 else ''}); it cannot share this base")


def load_adapter(model: Any, folder: Path, key: str, name: str = "default", trainable: bool = False) -> Any:
    """The saved adapter in ``folder`` on ``model`` as ``name``: a plain transformers model becomes a
    PeftModel, a PeftModel gets one more adapter (its active one stays active). Refused with one line
    naming ``key``: an unreadable config, an initialisation that rewrites the base, an adapter peft
    cannot load on this model, and any change the load made to the base's weights."""
    from peft import PeftModel
    from safetensors import SafetensorError

    from peftlab.runs.config import read_adapter_config

    folder = Path(folder).expanduser()
    check_keeps_base(read_adapter_config(folder, key), folder, key)
    before = base_fingerprint(model)
    try:
        if hasattr(model, "peft_config"):
            active = model.active_adapter
            model.load_adapter(folder, adapter_name=name, is_trainable=trainable)
            model.set_adapter(active)
        else:
            model = PeftModel.from_pretrained(model, folder, adapter_name=name, is_trainable=trainable)
    except (ValueError, KeyError, RuntimeError, TypeError, AttributeError, OSError, SafetensorError) as err:
        raise ConfigError(f"{key}: cannot load the adapter {folder} on this model: "
                          f"{str(err).splitlines()[0] if str(err) else type(err).__name__}") from None
    check_base_unchanged(before, folder, key)
    return model
