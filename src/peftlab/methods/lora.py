"""LoRA (Hu et al., 2021) and its variants that peft exposes as switches: DoRA, rsLoRA; its
initialisations (``method.init``); and LoRA+ (Hayou et al., 2024: B learns ``loraplus_lr_ratio``
times faster than A), through the optimizer's parameter groups.

Initialisations:
  default   A Kaiming-uniform, B zero (peft's default, Microsoft's reference code)
  gaussian  A normal with std 1/r, B zero
  pissa     A and B from the principal singular vectors of W, the rest of W stays as the base
            (Meng et al., 2024); ``init_svd_niter``: randomised SVD with that many iterations
  olora     A and B from W's QR decomposition, the rest of W stays as the base (Büyükakyüz, 2024)
  eva       A from the singular vectors of the layer's inputs on a few training batches, ranks
            redistributed by explained variance (Paischer et al., 2024); B zero

pissa and olora move part of each weight into the adapter, so the base the adapter trains on is
not the original: the saved adapter is converted back (peft's ``path_initial_model_for_weight_
conversion``: rank 2r, for the original base, the same function), and switching the adapter off
does not give the original model (preference training refuses ``reference=adapter_off``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, List, Optional

from peftlab.config.checks import check, one_of
from peftlab.config.commands import COMBINATION_TYPES
from peftlab.config.plugins import Capabilities
from peftlab.errors import ConfigError
from peftlab.methods.base import BuildContext, MethodHooks, register_method
from peftlab.methods.shared import TargetedSchema, peft_kwargs

INITS = ("default", "gaussian", "pissa", "olora", "eva")
MOVES_THE_BASE = ("pissa", "olora")  # initialisations that take part of W into the adapter
def combine_refusal_of(use_dora: bool, use_rslora: bool) -> str:
    """What LoRA's switches rule out in peft's add_weighted_adapter ("" when nothing)."""
    if use_dora:
        return "method.use_dora=true: peft's add_weighted_adapter combines B and A but not DoRA's magnitudes"
    if use_rslora:
        return ("method.use_rslora=true: peft's add_weighted_adapter gives the combination lora_alpha = r, which "
                "rsLoRA scales by sqrt(r) instead of 1")
    return ""


@dataclass
class LoraSchema(TargetedSchema):
    """Low-rank adapters: W + (lora_alpha / r) B·A on the targeted layers; DoRA and rsLoRA as switches."""

    name: str = "lora"
    r: int = 8
    lora_alpha: float = 16.0
    lora_dropout: float = 0.0
    bias: str = "none"
    use_rslora: bool = False
    use_dora: bool = False
    modules_to_save: Optional[List[str]] = None
    init: str = "default"  # one of INITS (the module's docstring)
    init_svd_niter: Optional[int] = None  # pissa: null, the exact SVD; n, a randomised one with n iterations
    eva_rho: float = 2.0  # eva: a layer may take up to rho x r ranks (1: every layer keeps r)
    init_batches: int = 8  # eva: the training batches it looks at (drawn apart from the training order)
    loraplus_lr_ratio: Optional[float] = None  # LoRA+: B's learning rate over A's (the paper: 16); null: equal

    def __post_init__(self) -> None:
        super().__post_init__()
        check(self.r > 0, "method.r", "must be > 0", self.r)
        one_of("method.init", self.init, INITS)
        check(self.init_svd_niter is None or self.init_svd_niter > 0, "method.init_svd_niter", "must be null or > 0",
              self.init_svd_niter)
        check(self.eva_rho >= 1.0, "method.eva_rho", "must be >= 1", self.eva_rho)
        check(self.init_batches > 0, "method.init_batches", "must be > 0", self.init_batches)
        check(self.loraplus_lr_ratio is None or self.loraplus_lr_ratio > 0, "method.loraplus_lr_ratio",
              "must be null or > 0", self.loraplus_lr_ratio)
        check(self.lora_alpha > 0, "method.lora_alpha", "must be > 0", self.lora_alpha)
        check(0.0 <= self.lora_dropout < 1.0, "method.lora_dropout", "must be in [0, 1)", self.lora_dropout)
        one_of("method.bias", self.bias, ("none", "all", "lora_only"))

    def adapter_off_differs(self) -> str:
        if self.init in MOVES_THE_BASE:
            return f"method.init={self.init} moves part of every targeted weight into the adapter"
        return super().adapter_off_differs()

    def combine_refusal(self, combination_type: str, weights: list[float]) -> str:
        return super().combine_refusal(combination_type, weights) or combine_refusal_of(self.use_dora,
                                                                                          self.use_rslora)

    def check(self, run: Any) -> list[str]:
        problems = super().check(run)
        if self.init in MOVES_THE_BASE and getattr(getattr(run, "precision", None), "quantize", None):
            problems.append(f"method.init={self.init} cannot start from a quantized base (it rewrites the base "
                            "weights from their SVD / QR)")
        if self.init != "default" and self.use_dora:
            problems.append(f"method.init={self.init} with method.use_dora=true: peft starts DoRA from its "
                            "default initialisation only")
        return problems


PEFT_INIT = {"default": True, "gaussian": "gaussian", "pissa": "pissa", "olora": "olora", "eva": "eva"}
EXTRA_FIELDS = ("init", "init_svd_niter", "eva_rho", "init_batches", "loraplus_lr_ratio")


def build(cfg: LoraSchema, ctx: BuildContext) -> Any:
    from peft import EvaConfig, LoraConfig

    cfg.check_targets(ctx.model)
    init: Any = PEFT_INIT[cfg.init]
    if cfg.init == "pissa" and cfg.init_svd_niter:
        init = f"pissa_niter_{cfg.init_svd_niter}"
    if ctx.meta:  # counting parameters: no weights to decompose (eva's ranks are counted before redistribution)
        init = True
    if cfg.init == "eva" and not ctx.meta and ctx.batches is None:
        raise ConfigError("method.init=eva looks at training batches, and this command has none")
    eva = EvaConfig(rho=cfg.eva_rho) if cfg.init == "eva" else None
    return LoraConfig(task_type=ctx.task.peft_task_type, init_lora_weights=init, eva_config=eva,
                      **peft_kwargs(cfg, drop=EXTRA_FIELDS))


def initialise(model: Any, cfg: LoraSchema, ctx: BuildContext) -> None:
    """eva: A from the training batches' activations. pissa / olora: keep the starting adapter (in a
    temporary folder, with peft's plain initialisation recorded) for the conversion at saving."""
    if ctx.meta:  # counting parameters: nothing to initialise
        return
    if cfg.init == "eva":
        from peft import initialize_lora_eva_weights

        inputs = [{"input_ids": b["input_ids"], "attention_mask": b["attention_mask"]}
                  for b in ctx.batches(cfg.init_batches)]
        initialize_lora_eva_weights(model, inputs, gather_distributed_inputs=False, show_progress_bar=False)
    elif cfg.init in MOVES_THE_BASE:
        import tempfile

        folder = tempfile.TemporaryDirectory(prefix="peftlab-lora-init-")
        config = model.peft_config[model.active_adapter]
        chosen, config.init_lora_weights = config.init_lora_weights, True
        try:
            model.save_pretrained(folder.name)
        finally:
            config.init_lora_weights = chosen
        model.peftlab_initial_adapter = folder  # removed with the model


def save(model: Any, folder: str, **kwargs: Any) -> None:
    """peft's save; an adapter started by pissa / olora is converted into one for the original base."""
    initial = getattr(model, "peftlab_initial_adapter", None)
    if initial is not None:
        kwargs["path_initial_model_for_weight_conversion"] = initial.name
    model.save_pretrained(folder, **kwargs)


def param_groups(model: Any, cfg: LoraSchema, lr: float) -> list[dict[str, Any]]:
    """LoRA+: B (``lora_B``, ``lora_embedding_B``) at ``loraplus_lr_ratio`` x lr, the rest at lr."""
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if cfg.loraplus_lr_ratio is None:
        return [{"params": [p for _, p in trainable]}]
    b = [p for n, p in trainable if "lora_B." in n or "lora_embedding_B." in n]
    rest = [p for n, p in trainable if not ("lora_B." in n or "lora_embedding_B." in n)]
    return [g for g in ({"params": rest}, {"params": b, "lr": lr * cfg.loraplus_lr_ratio}) if g["params"]]


register_method(
    "lora", LoraSchema, build,
    trains="low-rank updates B·A on the targeted layers (DoRA: plus a magnitude vector)",
    capabilities=Capabilities(mergeable=True, quantized_base=True, combinations=COMBINATION_TYPES),
    initialise=initialise,
    hooks=MethodHooks(param_groups=param_groups, save=save),
)
