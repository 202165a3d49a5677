"""The weight updates a saved adapter makes, read from its files alone (no base model, no code run):
``adapter_config.json`` is read as JSON and ``adapter_model.safetensors`` as tensors.

For the methods whose update is a product of factors saved in the adapter:
- LoRA: ΔW = s·B·A, s = alpha/r (alpha/√r with use_rslora), per module with rank_pattern and
  alpha_pattern. With DoRA the update is this low-rank part (the magnitude rescaling needs the base).
- LoHa: ΔW = s·(W1a·W1b) ⊙ (W2a·W2b), s = alpha/r.
- LoKr: ΔW = s·(W1 ⊗ W2), each factor saved whole or as a product of two, s = alpha/r.
``tests/test_adapter_analysis.py`` checks each against peft's own ``get_delta_weight``.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

from peftlab.errors import ConfigError

if TYPE_CHECKING:  # torch loads when an analysis runs, not when reporting is imported
    import torch

ANALYSED = ("LORA", "LOHA", "LOKR")


@dataclass
class ModuleUpdate:
    """One adapted module: its name (``model.layers.3.self_attn.q_proj``), the factor A whose rows
    span the update's input directions (LoRA only), and the update ΔW (out × in)."""

    name: str
    rank: int
    delta: torch.Tensor
    a: Optional[torch.Tensor] = None
    b: Optional[torch.Tensor] = None  # with a: ΔW = scale·B·A (LoRA)
    scale: float = 1.0

    @property
    def kind(self) -> str:
        """The module's own name (q_proj, v_proj, ...)."""
        return self.name.rsplit(".", 1)[-1]

    def output_directions(self) -> torch.Tensor:
        """The top ``rank`` left-singular vectors of ΔW (rows: directions in the module's output)."""
        import torch

        if self.a is None or self.b is None:
            return torch.linalg.svd(self.delta, full_matrices=False).U[:, : self.rank].T
        q, r = torch.linalg.qr(self.b)  # ΔW = Q·(scale·R·A): its left-singular vectors are Q times the small one's
        return (q @ torch.linalg.svd(self.scale * (r @ self.a), full_matrices=False).U[:, : self.rank]).T

    def compact(self) -> torch.Tensor:
        """A matrix with ΔW's singular values and right-singular vectors: for LoRA the r × in matrix
        scale·R·A, where B = QR (ΔW = Q·(scale·R·A) and Q has orthonormal columns), a small SVD in
        place of a large one; ΔW itself otherwise."""
        if self.a is None or self.b is None:
            return self.delta
        import torch

        return self.scale * (torch.linalg.qr(self.b).R @ self.a)


def adapter_folder(run_dir: Path) -> Path:
    return run_dir / "adapter"


def read_config(run_dir: Path) -> dict[str, Any]:
    path = adapter_folder(run_dir) / "adapter_config.json"
    if not path.is_file():
        raise ConfigError(f"{run_dir}: no adapter (adapter/adapter_config.json) to analyse")
    try:
        config = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise ConfigError(f"{path}: not readable as JSON ({err})") from None
    if not isinstance(config, dict):
        raise ConfigError(f"{path}: not an adapter config (a {type(config).__name__})")
    return config


def module_updates(run_dir: Path) -> list[ModuleUpdate]:
    """Every adapted module's weight update, in float64, in the order the file lists them."""
    from safetensors.torch import load_file

    config = read_config(run_dir)
    kind = str(config.get("peft_type", "?"))
    if kind not in ANALYSED:
        raise ConfigError(f"{run_dir}: a {kind} adapter, whose weight update is not a product of saved factors "
                          f"(the analysis reads {', '.join(k.lower() for k in ANALYSED)} adapters)")
    path = adapter_folder(run_dir) / "adapter_model.safetensors"
    try:
        tensors = {k: v.double() for k, v in load_file(str(path)).items()}
    except Exception as err:  # a missing, truncated or foreign file
        raise ConfigError(f"{path}: not readable as safetensors ({type(err).__name__}: {err})") from None
    build = {"LORA": _lora, "LOHA": _loha, "LOKR": _lokr}[kind]
    updates = []
    for module, factors in _by_module(tensors).items():
        try:
            updates.append(build(module, factors, config))
        except (KeyError, RuntimeError) as err:
            raise ConfigError(f"{path}: module {module} has no complete {kind} factors ({err})") from None
        except (TypeError, ValueError, ZeroDivisionError) as err:  # a config value of the wrong kind
            raise ConfigError(f"{adapter_folder(run_dir) / 'adapter_config.json'}: cannot scale module {module} "
                              f"({type(err).__name__}: {err})") from None
    if not updates:
        raise ConfigError(f"{path}: holds no {kind} factors")
    return updates


def _by_module(tensors: dict[str, torch.Tensor]) -> dict[str, dict[str, torch.Tensor]]:
    """``base_model.model.<module>.<factor>[.weight]`` -> {module: {factor: tensor}}."""
    modules: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        found = re.match(r"(?:base_model\.model\.)?(.+?)\.((?:lora|hada|lokr)_\w+?)(?:\.weight)?$", key)
        if found:
            modules.setdefault(found.group(1), {})[found.group(2)] = value
    return modules


def _pattern(config: dict[str, Any], key: str, module: str, default: Any) -> Any:
    """A per-module value of ``rank_pattern`` / ``alpha_pattern`` (a key naming the end of the
    module's name, as peftlab writes them), else the adapter's own. Keys are matched as names, never
    run as regular expressions: a config file is data."""
    patterns = config.get(key) or {}
    if not isinstance(patterns, dict):
        raise TypeError(f"{key} must be a mapping, got {type(patterns).__name__}")
    for name, value in patterns.items():
        if not re.fullmatch(r"[\w.\-]+", str(name)):
            raise ValueError(f"{key} key {name!r} is a regular expression; the analysis matches module names")
        if module == name or module.endswith("." + name):
            return value
    return default


def _scale(config: dict[str, Any], module: str, rank: int, rslora: bool = False) -> float:
    alpha = _pattern(config, "alpha_pattern", module, config.get("lora_alpha", config.get("alpha", rank)))
    if not isinstance(alpha, (int, float)) or isinstance(alpha, bool) or not math.isfinite(alpha):
        raise TypeError(f"alpha must be a number, got {alpha!r}")
    return alpha / math.sqrt(rank) if rslora else alpha / rank


def _lora(module: str, f: dict[str, torch.Tensor], config: dict[str, Any]) -> ModuleUpdate:
    a, b = f["lora_A"], f["lora_B"]
    rank = a.shape[0]
    scale = _scale(config, module, rank, bool(config.get("use_rslora")))
    return ModuleUpdate(module, rank, scale * (b @ a), a, b, scale)


def _loha(module: str, f: dict[str, torch.Tensor], config: dict[str, Any]) -> ModuleUpdate:
    rank = f["hada_w1_b"].shape[0]
    delta = (f["hada_w1_a"] @ f["hada_w1_b"]) * (f["hada_w2_a"] @ f["hada_w2_b"])
    return ModuleUpdate(module, rank, _scale(config, module, rank) * delta)


def _lokr(module: str, f: dict[str, torch.Tensor], config: dict[str, Any]) -> ModuleUpdate:
    import torch

    w1 = f["lokr_w1"] if "lokr_w1" in f else f["lokr_w1_a"] @ f["lokr_w1_b"]
    w2 = f["lokr_w2"] if "lokr_w2" in f else f["lokr_w2_a"] @ f["lokr_w2_b"]
    rank = _pattern(config, "rank_pattern", module, config.get("r", 1))
    if not isinstance(rank, int) or isinstance(rank, bool) or rank < 1:
        raise TypeError(f"r must be a whole number > 0, got {rank!r}")
    return ModuleUpdate(module, rank, _scale(config, module, rank) * torch.kron(w1, w2))
