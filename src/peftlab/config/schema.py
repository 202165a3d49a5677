"""Typed schemas of every config group.

Each YAML file under ``conf/<group>/`` extends one of these dataclasses (its defaults list starts
with ``/schema/<group>/<name>@_here_``). ``validate()`` re-merges every group into its schema
strictly and instantiates the dataclasses, so ``__post_init__`` range checks run on every config
that reaches training. Range checks raise :class:`ConfigError` with the full key and the bad value.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from omegaconf import MISSING

from peftlab.config.checks import check as _check
from peftlab.config.checks import one_of as _one_of
from peftlab.config.data import DataSchema  # noqa: F401  (one of the groups; its own module)
from peftlab.config.plugins import task_types
from peftlab.config.trainer import TrainerSchema  # noqa: F401  (one of the groups; its own module)

log = logging.getLogger("peftlab.config")
LR_WARN = 1.0  # learning rates above this get a warning


# --------------------------------------------------------------------------------------- model
@dataclass
class ModelSchema:
    """Where the backbone comes from.

    source:
      ``package_gguf``   a GGUF file inside an installed pip package (``package``, ``file``),
                         converted once into ``paths.cache_dir``;
      ``package_folder`` an HF model folder inside an installed pip package (``package``, ``file``);
      ``random``         random init from ``arch`` (a transformers config), saved once into the cache;
      ``meta``           architecture only (``arch``), built on the meta device: parameter counts;
      ``hub``            ``name_or_path``: ``hf://<hub id>`` (network) or a local folder.
    Setting ``name_or_path`` on any model loads that hub model or folder instead.
    """

    name: str = MISSING
    source: str = "hub"
    name_or_path: Optional[str] = None
    package: Optional[str] = None
    file: Optional[str] = None
    arch: Dict[str, Any] = field(default_factory=dict)
    tokenizer: Optional[str] = None  # for `random`: "bytes" (a byte-level tokenizer built offline)
    chat_template: Optional[str] = None  # for `random`: a jinja chat template to attach
    revision: Optional[str] = None
    trust_remote_code: bool = False
    # a hub model (hf://<id>) from the local cache only, never the network: set for a model a run
    # folder names (eval, merge, generate read it as data)
    local_files_only: bool = False
    init_seed: int = 0
    # the task types this backbone serves: causal_lm (generation), seq_cls (classification)
    tasks: List[str] = field(default_factory=lambda: ["causal_lm"])
    gradient_checkpointing: bool = False

    def __post_init__(self) -> None:
        _one_of("model.source", self.source, ("package_gguf", "package_folder", "random", "meta", "hub"))
        for t in self.tasks:
            _one_of("model.tasks", t, task_types())
        if self.name_or_path is None:
            if self.source in ("package_gguf", "package_folder"):
                _check(bool(self.package and self.file), "model.package/model.file", "must be set", None)
            if self.source in ("random", "meta"):
                _check("model_type" in self.arch, "model.arch.model_type", "must be set", None)
            if self.source == "hub":
                _check(False, "model.name_or_path", "must name hf://<hub id> or a local folder", None)


# ----------------------------------------------------------------------------------- preference
@dataclass
class PreferenceSchema:
    """Preference training on (prompt, chosen, rejected) pairs: DPO, IPO, KTO, and the reference-free
    SimPO and ORPO (the losses: tasks/preference_losses.py).

    reference: what the policy is compared with
      ``adapter_off``    the same weights with the adapter switched off: the base (a fresh adapter);
      ``frozen_adapter`` a frozen copy of the adapter the run starts from (``init_adapter``: SFT
                         then DPO), loaded as a second, inactive adapter on the same base;
      ``precomputed``    the log-probabilities of the model as the run starts (its fresh or starting
                         adapter on), computed once before training and kept with the data;
      ``separate``       a second full copy of the model: the way without PEFT (and full fine-tuning);
      ``none``           no reference (simpo, orpo).
    """

    name: str = MISSING
    loss: str = "sigmoid"  # a registered loss (tasks/preference_losses.py): sigmoid (DPO), ipo, kto, simpo, orpo
    beta: float = 0.1  # DPO/IPO/SimPO's beta; ORPO's lambda (the odds-ratio term's weight)
    label_smoothing: float = 0.0  # sigmoid only: conservative DPO's assumed share of flipped labels
    # weight of the chosen answers' own loss (mean NLL per token) added to the DPO loss (RPO, Pang et al.,
    # 2024): keeps the chosen answers likely while the margin grows; 0 is plain DPO
    sft_weight: float = 0.0
    gamma: Optional[float] = None  # simpo only: the target reward margin (its file: 0.5)
    desirable_weight: Optional[float] = None  # kto only: lambda_D, the desirable answers' weight (its file: 1.0)
    undesirable_weight: Optional[float] = None  # kto only: lambda_U, the undesirable answers' weight (its file: 1.0)
    reference: str = "adapter_off"  # none: the reference-free losses (simpo, orpo)

    def __post_init__(self) -> None:
        from peftlab.config.plugins import PREFERENCE_LOSSES

        if PREFERENCE_LOSSES:  # registered with the task plug-ins; a bare config check has none
            _one_of("preference.loss", self.loss, tuple(PREFERENCE_LOSSES))
        spec = PREFERENCE_LOSSES.get(self.loss)
        _check(self.beta > 0 and math.isfinite(self.beta), "preference.beta", "must be a finite number > 0", self.beta)
        _check(0.0 <= self.label_smoothing < 0.5, "preference.label_smoothing", "must be in [0, 0.5)",
               self.label_smoothing)
        _check(self.label_smoothing == 0 or self.loss == "sigmoid", "preference.label_smoothing",
               "applies to preference.loss=sigmoid only", self.label_smoothing)
        _check(self.sft_weight >= 0 and math.isfinite(self.sft_weight), "preference.sft_weight",
               "must be a finite number >= 0", self.sft_weight)
        _check(self.sft_weight == 0 or self.loss != "orpo", "preference.sft_weight",
               "does not apply to preference.loss=orpo, whose loss holds the chosen answers' NLL already",
               self.sft_weight)
        for key in ("gamma", "desirable_weight", "undesirable_weight"):  # each read by one loss only
            value, reads = getattr(self, key), spec is not None and key in spec.reads
            _check(value is None or reads, f"preference.{key}", f"does not apply to preference.loss={self.loss}",
                   value)
            _check(not reads or (value is not None and math.isfinite(value) and value >= 0), f"preference.{key}",
                   f"must be a finite number >= 0 for preference.loss={self.loss}", value)
        if self.desirable_weight is not None and self.undesirable_weight is not None:  # kto: each answer weighs one
            _check(self.desirable_weight > 0 or self.undesirable_weight > 0, "preference.desirable_weight",
                   "and preference.undesirable_weight must not both be 0 (each answer's loss is weighted by one of "
                   "them: every loss would be 0, no gradient)", (self.desirable_weight, self.undesirable_weight))
        _one_of("preference.reference", self.reference,
                ("adapter_off", "frozen_adapter", "precomputed", "separate", "none"))
        if spec is not None and spec.needs_reference:
            _check(self.reference != "none", "preference.reference",
                   f"cannot be none for preference.loss={self.loss}, which compares the policy with a reference",
                   self.reference)
        elif spec is not None:
            _check(self.reference == "none", "preference.reference",
                   f"must be none for preference.loss={self.loss}, which uses no reference", self.reference)


# --------------------------------------------------------------------------------------- optim
@dataclass
class OptimSchema:
    """The optimizer (a ``_target_`` leaf, built over the trainable parameters only; AdamW by default)
    and its schedule (a linear warmup, then cosine decay by default)."""

    lr: float = 2e-3  # LoRA's rate on the date task (experiment=method_comparison); a recipe states its method's
    weight_decay: float = 0.0
    optimizer: Dict[str, Any] = field(
        default_factory=lambda: {"_target_": "torch.optim.AdamW", "betas": [0.9, 0.999], "eps": 1e-8}
    )
    scheduler: str = "cosine"  # cosine | linear | constant (transformers.get_scheduler, with warmup)
    warmup_ratio: float = 0.1
    min_lr_ratio: float = 0.0  # cosine only: the learning rate decays to this share of optim.lr

    def __post_init__(self) -> None:
        _check(self.lr > 0 and math.isfinite(self.lr), "optim.lr", "must be a finite number > 0", self.lr)
        if self.lr > LR_WARN:
            log.warning("optim.lr=%g is above %g: Adam-type optimizers diverge at such rates (the run stops at the "
                        "first non-finite loss)", self.lr, LR_WARN)
        _check(self.weight_decay >= 0, "optim.weight_decay", "must be >= 0", self.weight_decay)
        _check("_target_" in self.optimizer, "optim.optimizer._target_", "must be set", None)
        _one_of("optim.scheduler", self.scheduler, ("cosine", "linear", "constant"))
        _check(0.0 <= self.warmup_ratio < 1.0, "optim.warmup_ratio", "must be in [0, 1)", self.warmup_ratio)
        _check(0.0 <= self.min_lr_ratio < 1.0, "optim.min_lr_ratio", "must be in [0, 1)", self.min_lr_ratio)
        _check(self.min_lr_ratio == 0.0 or self.scheduler == "cosine", "optim.min_lr_ratio",
               f"applies to optim.scheduler=cosine only (optim.scheduler={self.scheduler})", self.min_lr_ratio)


# ------------------------------------------------------------------------------------ precision
@dataclass
class PrecisionSchema:
    """``trainer`` is Lightning's precision flag; ``dtype`` the dtype the base weights load in;
    ``trainable_dtype`` the dtype the trained weights (and so their gradients and optimizer state)
    are kept in, when it differs from ``dtype`` (``bf16_base``: a bf16 base, fp32 adapters, bf16
    matmuls under autocast); ``quantize`` loads the frozen base in 8 or 4 bits with bitsandbytes
    (int8, nf4, fp4), for methods that train on a quantized base.

    ``precision=auto`` (``name: auto``) is resolved before a run starts (engine/precision.py): its
    config becomes the chosen precision's, with ``auto`` saying why it was chosen."""

    name: str = MISSING
    trainer: str = "32-true"
    dtype: str = "float32"
    trainable_dtype: Optional[str] = None  # null: the trained weights stay in ``dtype``
    quantize: Optional[str] = None  # null | int8 | nf4 | fp4
    double_quant: bool = True  # 4-bit: quantize the quantization constants too (QLoRA's double quantization)
    compute_dtype: str = "float32"  # 4-bit: the dtype its matmuls run in (bfloat16 on GPUs)
    auto: Optional[str] = None  # set by precision=auto: why this precision was chosen

    def __post_init__(self) -> None:
        _one_of("precision.trainer", self.trainer,
                ("auto", "32-true", "32", "bf16-mixed", "16-mixed", "bf16-true", "16-true", "64-true"))
        _one_of("precision.dtype", self.dtype, ("float32", "bfloat16", "float16", "float64"))
        if self.trainable_dtype is not None:
            _one_of("precision.trainable_dtype", self.trainable_dtype, ("float32", "bfloat16", "float16", "float64"))
            _check(self.trainable_dtype == self.dtype or self.trainer.endswith("-mixed"), "precision.trainable_dtype",
                   f"differs from precision.dtype={self.dtype}, so the matmuls mix dtypes: it needs an autocast "
                   f"precision.trainer (bf16-mixed or 16-mixed; precision.trainer={self.trainer})",
                   self.trainable_dtype)
        if self.quantize is not None:
            _one_of("precision.quantize", self.quantize, ("int8", "nf4", "fp4"))
        _one_of("precision.compute_dtype", self.compute_dtype, ("float32", "bfloat16", "float16"))

    @property
    def split(self) -> bool:
        """The base stored in one dtype, the trained weights in another (``bf16_base``)."""
        return self.trainable_dtype is not None and self.trainable_dtype != self.dtype


# ------------------------------------------------------------------------------------- hardware
@dataclass
class HardwareSchema:
    name: str = MISSING
    accelerator: str = "cpu"
    devices: Any = 1  # per node; under ddp/fsdp, one process per device
    strategy: str = "auto"  # auto | ddp | fsdp (FSDP2: every decoder layer sharded over the processes)
    num_nodes: int = 1
    threads: Optional[int] = None  # torch.set_num_threads; null leaves torch's default

    def __post_init__(self) -> None:
        _one_of("hardware.accelerator", self.accelerator, ("cpu", "gpu", "cuda", "mps", "auto"))
        _one_of("hardware.strategy", self.strategy, ("auto", "ddp", "fsdp"))
        _check(self.strategy != "fsdp" or isinstance(self.devices, int), "hardware.devices",
               "must be a number of devices with hardware.strategy=fsdp", self.devices)
        ok = self.devices == "auto" or (isinstance(self.devices, int) and self.devices > 0) or (
            isinstance(self.devices, (list, tuple)) and len(self.devices) > 0
        )
        _check(ok, "hardware.devices", "must be a positive integer, a list of ids or 'auto'", self.devices)
        _check(self.num_nodes > 0, "hardware.num_nodes", "must be > 0", self.num_nodes)
        _check(self.threads is None or self.threads > 0, "hardware.threads", "must be > 0 or null", self.threads)


# ---------------------------------------------------------------------------------------- paths
@dataclass
class PathsSchema:
    run_dir: str = MISSING
    cache_dir: str = MISSING


