"""Many adapters on one base: the base model is loaded once and each adapter is added to it by
name, so N adapters cost one base's memory and one load (peftlab-combine, ``peftlab-eval runs=``).
Each is added with ``runs.adapters.load_adapter``, which leaves the shared base as it was.

``use(name)`` makes one adapter the active one (``None``: the base alone, every adapter off);
``mixed(names)`` runs each row of a batch through its own adapter (peft's mixed-adapter batches,
for the methods whose layers take ``adapter_names``)."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any, Iterator, Optional

from peftlab.config.schema import ModelSchema
from peftlab.errors import ConfigError
from peftlab.models import load_backbone
from peftlab.runs.adapters import load_adapter


class AdapterBank:
    def __init__(self, model_cfg: ModelSchema, cache_dir: str, task: Any, dtype: str = "float32"):
        self.backbone = load_backbone(model_cfg, cache_dir, task, dtype)
        self.tokenizer = self.backbone.tokenizer
        self.model: Any = None  # the PeftModel, once an adapter is added
        self.names: list[str] = []

    def add(self, name: str, folder: Path) -> None:
        """Load the peft adapter in ``folder`` as ``name`` (it must be of this base's kind)."""
        folder = Path(folder)
        if not (folder / "adapter_config.json").is_file():
            raise ConfigError(f"runs: {folder} holds no peft adapter (adapter_config.json); a run of a method "
                              "that saves a whole model cannot share a base")
        self.model = load_adapter(self.model if self.model is not None else self.backbone.model, folder, "runs",
                                  name).eval()
        self.names.append(name)

    @contextlib.contextmanager
    def use(self, name: Optional[str]) -> Iterator[Any]:
        """The model with adapter ``name`` active (``None``: the base, every adapter off)."""
        if name is None:
            if self.model is None:
                yield self.backbone.model
                return
            with self.model.disable_adapter():
                yield self.model
            return
        self.model.set_adapter(name)
        self.model.eval()  # set_adapter marks the adapter trainable; nothing trains here
        yield self.model

    def mixed_capable(self) -> bool:
        """Whether every adapter's layers take per-row ``adapter_names`` (peft's mixed-adapter batches)."""
        from peft.tuners.lora import LoraLayer

        return self.model is not None and all(
            self.model.peft_config[n].peft_type == "LORA" and not self.model.peft_config[n].use_dora
            for n in self.names) and any(isinstance(m, LoraLayer) for m in self.model.modules())

    @contextlib.contextmanager
    def mixed(self, names: list[str]) -> Iterator[Any]:
        """Every forward (and ``generate``) inside routes row i through adapter ``names[i]``
        ("__base__": no adapter). peft's PeftModel.forward and generate do this with their
        ``adapter_names`` argument; the task code calls them without it, so the same hooks are
        entered here (tests/test_many_adapters.py compares the result with one adapter at a time)."""
        with self.model._enable_peft_forward_hooks(adapter_names=list(names)):
            yield self.model


def adapter_rank(config: dict[str, Any]) -> tuple[int, dict[str, int]]:
    """A LoRA adapter's rank and per-module ranks, from its saved config."""
    return int(config.get("r") or 0), dict(config.get("rank_pattern") or {})
