"""Precision: what ``precision=auto`` chooses for this hardware and method, the trained weights kept
in their own dtype (``precision=bf16_base``), and the autocast that forwards outside the Trainer run
under. (A quantized base is a way of loading the model: peftlab/models/quantized.py.)

``auto`` is resolved once, before the run starts, into the run's config: config.yaml, metrics.json
and the summary say what was chosen and why, and a resume that would choose otherwise (another
machine) stops at the config check instead of continuing in another layout."""

from __future__ import annotations

import contextlib
import platform
from typing import Any, Callable, ContextManager, Optional

from omegaconf import DictConfig, OmegaConf, open_dict

AUTOCAST = {"bf16-mixed": "bfloat16", "16-mixed": "float16"}  # Lightning's mixed flags: the autocast dtype


def cpu_bf16() -> Optional[str]:
    """What makes this CPU multiply bf16 natively, or None: the torch build runs bf16 in oneDNN and
    the CPU has bf16 units (x86: AVX512-BF16 or AMX; arm64: oneDNN's own check covers the BF16
    extension). Without them oneDNN emulates bf16, slower than fp32."""
    import torch

    onednn = getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", None)
    if not torch.backends.mkldnn.is_available() or onednn is None or not onednn():
        return None
    if platform.machine().lower() in ("aarch64", "arm64"):
        return "an arm64 CPU with BF16 (oneDNN)"
    units = [name for name, probe in (("AVX512-BF16", "_is_avx512_bf16_supported"), ("AMX", "_is_amx_tile_supported"))
             if getattr(torch.cpu, probe, lambda: False)()]
    return f"a CPU with {' and '.join(units)} (oneDNN bf16)" if units else None


def cuda_bf16() -> Optional[str]:
    """The CUDA device with native bf16, or None."""
    import torch

    if torch.cuda.is_available() and torch.cuda.is_bf16_supported(including_emulation=False):
        return f"a CUDA GPU with bf16 ({torch.cuda.get_device_name()})"
    return None


def device_type(accelerator: str) -> str:
    """The torch device type a run on ``hardware.accelerator`` computes on."""
    if accelerator in ("gpu", "cuda"):
        return "cuda"
    if accelerator == "auto":
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"
    return accelerator


def choose(method: Any, accelerator: str) -> tuple[str, str]:
    """(the precision ``auto`` picks, why) for a method schema class on ``accelerator``."""
    device = device_type(accelerator)
    fast = cuda_bf16() if device == "cuda" else cpu_bf16() if device == "cpu" else None
    if fast is None:
        return "fp32", f"{device} without native bf16 matmuls"
    caps = method.capabilities
    if caps.bf16_base and caps.bf16_auto:
        return "bf16_base", f"{fast}; method={method.name} is shown equivalent to fp32 in this layout"
    why = "trains the base itself" if not caps.bf16_base else "is not shown equivalent to fp32 in bf16_base"
    if device == "cuda":  # autocast over fp32 weights, as on every GPU with bf16
        return "bf16", f"{fast}; method={method.name} {why}"
    return "fp32", f"{fast}, but method={method.name} {why}"


def resolve_auto(cfg: DictConfig) -> DictConfig:
    """``cfg`` with ``precision=auto`` replaced by the precision it chooses (conf/precision/<name>.yaml),
    ``precision.auto`` saying why; any other precision is left as it is."""
    from peftlab.config import CONF_DIR
    from peftlab.config.plugins import METHOD_SCHEMAS

    precision = cfg.get("precision")
    method = METHOD_SCHEMAS.get(OmegaConf.select(cfg, "method.name", default=None))
    if precision is None or precision.get("name") != "auto" or method is None:
        return cfg  # an unknown method: validate() names it
    name, why = choose(method, OmegaConf.select(cfg, "hardware.accelerator", default="cpu"))
    from peftlab.config.schema import PrecisionSchema

    # the chosen option over its schema, as Hydra composes it: the file states only what differs
    own = OmegaConf.load(CONF_DIR / "precision" / f"{name}.yaml")
    chosen = OmegaConf.merge(OmegaConf.structured(PrecisionSchema), {k: v for k, v in own.items() if k != "defaults"})
    with open_dict(cfg):
        for key in ("name", "trainer", "dtype"):
            cfg.precision[key] = chosen[key]
        cfg.precision.trainable_dtype = chosen.get("trainable_dtype")
        cfg.precision.auto = why
    return cfg


def trainer_precision(precision: Any, hardware: Any) -> str:
    """Lightning's precision flag. A config whose ``auto`` was never resolved (one written before
    precision=auto chose per method) keeps the choice of then: bf16-mixed on a CUDA device with
    bf16, fp32 elsewhere."""
    if precision.trainer != "auto":
        return precision.trainer
    if hardware.accelerator in ("gpu", "cuda", "auto") and cuda_bf16():
        return "bf16-mixed"
    return "32-true"


def keep_trained_weights(model: Any, precision: Any) -> None:
    """Put every trainable floating-point parameter in ``precision.trainable_dtype`` (bf16_base: the
    adapters, heads and prompt encoders in fp32 on a bf16 base, so gradients and the optimizer state
    are fp32 too)."""
    if not precision.split:
        return
    import torch

    dtype = getattr(torch, precision.trainable_dtype)
    for param in model.parameters():
        if param.requires_grad and param.is_floating_point() and param.dtype != dtype:
            param.data = param.data.to(dtype)


def precision_record(precision: Any) -> dict[str, Any]:
    """metrics.json's ``precision``: what the run trained in, and why when ``auto`` chose it."""
    return {"name": precision.name, "trainer": precision.trainer, "dtype": precision.dtype,
            "trainable_dtype": precision.trainable_dtype or precision.dtype, "quantize": precision.quantize,
            "auto": precision.auto}


def autocast(precision: Any, hardware: Any) -> Callable[[], ContextManager]:
    """The autocast a forward outside the Trainer (forgetting, a merge's checks) needs to run as
    training does: Lightning's mixed precisions autocast; every other precision runs as stored."""
    dtype = AUTOCAST.get(trainer_precision(precision, hardware))
    if dtype is None:
        return contextlib.nullcontext
    import torch

    device = device_type(hardware.accelerator)
    return lambda: torch.autocast(device, getattr(torch, dtype))
