"""Typed schemas of every config group.

Each YAML file under ``conf/<group>/`` extends one of these dataclasses (its defaults list starts
with ``/schema/<group>/<name>@_here_``). ``validate()`` re-merges every group into its schema
strictly and instantiates the dataclasses, so ``__post_init__`` range checks run on every config
that reaches training. Range checks raise :class:`ConfigError` with the full key and the bad value.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from omegaconf import MISSING

from peftlab.errors import ConfigError


def _check(ok: bool, key: str, requirement: str, value: Any) -> None:
    if not ok:
        raise ConfigError(f"{key} {requirement}, got {value!r}")


def _one_of(key: str, value: Any, choices: tuple) -> None:
    _check(value in choices, key, "must be one of " + ", ".join(map(str, choices)), value)


TASK_TYPES = ("causal_lm", "seq_cls")


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
      ``hub``            ``name_or_path``: a hub id (network) or a local folder.
    Setting ``name_or_path`` on any model loads that hub id or folder instead.
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
    init_seed: int = 0
    # the task types this backbone serves: causal_lm (generation), seq_cls (classification)
    tasks: List[str] = field(default_factory=lambda: ["causal_lm"])
    gradient_checkpointing: bool = False

    def __post_init__(self) -> None:
        _one_of("model.source", self.source, ("package_gguf", "package_folder", "random", "meta", "hub"))
        for t in self.tasks:
            _one_of("model.tasks", t, TASK_TYPES)
        if self.name_or_path is None:
            if self.source in ("package_gguf", "package_folder"):
                _check(bool(self.package and self.file), "model.package/model.file", "must be set", None)
            if self.source in ("random", "meta"):
                _check("model_type" in self.arch, "model.arch.model_type", "must be set", None)
            if self.source == "hub":
                _check(False, "model.name_or_path", "must name a hub id or a local folder", None)


# -------------------------------------------------------------------------------------- method
@dataclass
class MethodSchema:
    name: str = MISSING


@dataclass
class LoraSchema(MethodSchema):
    """Low-rank adapters (Hu et al., 2021); DoRA and rsLoRA as switches."""

    name: str = "lora"
    r: int = 8
    lora_alpha: float = 16.0
    lora_dropout: float = 0.05
    target_modules: Any = "all-linear"  # "all-linear", or a list of module names
    bias: str = "none"
    use_rslora: bool = False
    use_dora: bool = False
    modules_to_save: Optional[List[str]] = None

    def __post_init__(self) -> None:
        _check(self.r > 0, "method.r", "must be > 0", self.r)
        _check(self.lora_alpha > 0, "method.lora_alpha", "must be > 0", self.lora_alpha)
        _check(0.0 <= self.lora_dropout < 1.0, "method.lora_dropout", "must be in [0, 1)", self.lora_dropout)
        _one_of("method.bias", self.bias, ("none", "all", "lora_only"))
        tm = self.target_modules
        ok = isinstance(tm, str) and tm != "" or (
            isinstance(tm, (list, tuple)) and len(tm) > 0 and all(isinstance(t, str) and t for t in tm)
        )
        _check(ok, "method.target_modules", "must be 'all-linear' or a non-empty list of module names", tm)


@dataclass
class IA3Schema(MethodSchema):
    """(IA)^3 (Liu et al., 2022): learned vectors that rescale keys, values and feed-forward
    activations. null target/feed-forward modules take peft's defaults for the architecture."""

    name: str = "ia3"
    target_modules: Any = None
    feedforward_modules: Any = None

    def __post_init__(self) -> None:
        for key in ("target_modules", "feedforward_modules"):
            v = getattr(self, key)
            ok = v is None or (isinstance(v, str) and v != "") or (
                isinstance(v, (list, tuple)) and len(v) > 0 and all(isinstance(t, str) and t for t in v))
            _check(ok, f"method.{key}", "must be null, 'all-linear' or a non-empty list of module names", v)
        _check((self.target_modules is None) == (self.feedforward_modules is None), "method.feedforward_modules",
               "must be set together with method.target_modules (or both null)", self.feedforward_modules)


def _check_virtual_tokens(n: int) -> None:
    _check(n > 0, "method.num_virtual_tokens", "must be > 0", n)


@dataclass
class PrefixSchema(MethodSchema):
    """Prefix tuning (Li & Liang, 2021): trained key/value prefixes in every layer; with
    ``prefix_projection`` an MLP (hidden ``encoder_hidden_size``) produces them during training."""

    name: str = "prefix"
    num_virtual_tokens: int = 20
    prefix_projection: bool = False
    encoder_hidden_size: Optional[int] = None  # null: the model's hidden size
    init: str = "random"  # random | text: the keys and values the frozen model computes on init_text
    init_text: Optional[str] = None

    def __post_init__(self) -> None:
        _check_virtual_tokens(self.num_virtual_tokens)
        h = self.encoder_hidden_size
        _check(h is None or h > 0, "method.encoder_hidden_size", "must be > 0 or null", h)
        _one_of("method.init", self.init, ("random", "text"))
        if self.init == "text":
            _check(bool(self.init_text and self.init_text.strip()), "method.init_text",
                   "must be a non-empty text when method.init=text", self.init_text)
            _check(not self.prefix_projection, "method.prefix_projection",
                   "must be false when method.init=text (with the projection an MLP makes the prefixes)",
                   self.prefix_projection)


@dataclass
class PromptSchema(MethodSchema):
    """Prompt tuning (Lester et al., 2021): trained virtual-token embeddings before the input,
    initialised at random or from the embeddings of ``init_text``."""

    name: str = "prompt"
    num_virtual_tokens: int = 20
    init: str = "random"  # random | text
    init_text: Optional[str] = None

    def __post_init__(self) -> None:
        _check_virtual_tokens(self.num_virtual_tokens)
        _one_of("method.init", self.init, ("random", "text"))
        if self.init == "text":
            _check(bool(self.init_text and self.init_text.strip()), "method.init_text",
                   "must be a non-empty text when method.init=text", self.init_text)


@dataclass
class PtuningSchema(MethodSchema):
    """P-tuning (Liu et al., 2021): virtual-token embeddings produced by a trained MLP or LSTM
    prompt encoder (peft's PromptEncoder)."""

    name: str = "ptuning"
    num_virtual_tokens: int = 20
    encoder_reparameterization_type: str = "MLP"  # MLP | LSTM
    encoder_hidden_size: int = 128
    encoder_num_layers: int = 2
    encoder_dropout: float = 0.0

    def __post_init__(self) -> None:
        _check_virtual_tokens(self.num_virtual_tokens)
        _one_of("method.encoder_reparameterization_type", self.encoder_reparameterization_type, ("MLP", "LSTM"))
        _check(self.encoder_hidden_size > 0, "method.encoder_hidden_size", "must be > 0", self.encoder_hidden_size)
        _check(self.encoder_num_layers > 0, "method.encoder_num_layers", "must be > 0", self.encoder_num_layers)
        _check(0 <= self.encoder_dropout < 1, "method.encoder_dropout", "must be in [0, 1)", self.encoder_dropout)


@dataclass
class FullSchema(MethodSchema):
    """Full fine-tuning: the baseline, every weight trains, no peft wrapper."""

    name: str = "full"


# ---------------------------------------------------------------------------------------- data
@dataclass
class DataSchema:
    """A task: where its examples come from and how they become batches.

    path: a local json/jsonl/csv/parquet file, a folder holding train/val/test files, a
    ``builtin:<name>`` task shipped with peftlab, or a hub data set id (network).
    """

    name: str = MISSING
    path: str = MISSING
    task_type: str = "causal_lm"  # causal_lm: prompt -> response text; seq_cls: text -> label
    prompt_field: str = "prompt"
    response_field: str = "response"
    labels: Optional[List[str]] = None  # seq_cls: the label names in id order (null: sorted from train)
    system_prompt: Optional[str] = None
    prompt_format: str = "auto"  # auto: the chat template when the tokenizer has one, else plain
    hub_config: Optional[str] = None
    train_split: str = "train"
    val_split: str = "val"
    test_split: str = "test"
    val_fraction: float = 0.1  # used when the data has a single split
    test_fraction: float = 0.1
    split_seed: int = 0
    max_length: int = 256
    batch_size: int = 8
    eval_batch_size: int = 32
    max_new_tokens: int = 16
    max_train_examples: Optional[int] = None
    max_eval_examples: Optional[int] = None
    num_workers: int = 0

    def __post_init__(self) -> None:
        _one_of("data.task_type", self.task_type, TASK_TYPES)
        _one_of("data.prompt_format", self.prompt_format, ("auto", "chat", "plain"))
        for key in ("max_length", "batch_size", "eval_batch_size", "max_new_tokens"):
            _check(getattr(self, key) > 0, f"data.{key}", "must be > 0", getattr(self, key))
        for key in ("val_fraction", "test_fraction"):
            _check(0.0 <= getattr(self, key) < 1.0, f"data.{key}", "must be in [0, 1)", getattr(self, key))
        _check(self.val_fraction + self.test_fraction < 1.0, "data.val_fraction + data.test_fraction",
               "must be < 1", self.val_fraction + self.test_fraction)
        for key in ("max_train_examples", "max_eval_examples"):
            v = getattr(self, key)
            _check(v is None or v > 0, f"data.{key}", "must be > 0 or null", v)
        _check(self.num_workers >= 0, "data.num_workers", "must be >= 0", self.num_workers)


# --------------------------------------------------------------------------------------- optim
@dataclass
class OptimSchema:
    """The optimizer (a ``_target_`` leaf, built over the trainable parameters only) and schedule."""

    lr: float = 2e-4
    weight_decay: float = 0.0
    optimizer: Dict[str, Any] = field(
        default_factory=lambda: {"_target_": "torch.optim.AdamW", "betas": [0.9, 0.999], "eps": 1e-8}
    )
    scheduler: str = "cosine"  # cosine | linear | constant
    warmup_ratio: float = 0.1
    min_lr_ratio: float = 0.0

    def __post_init__(self) -> None:
        _check(self.lr > 0, "optim.lr", "must be > 0", self.lr)
        _check(self.weight_decay >= 0, "optim.weight_decay", "must be >= 0", self.weight_decay)
        _check("_target_" in self.optimizer, "optim.optimizer._target_", "must be set", None)
        _one_of("optim.scheduler", self.scheduler, ("cosine", "linear", "constant"))
        _check(0.0 <= self.warmup_ratio < 1.0, "optim.warmup_ratio", "must be in [0, 1)", self.warmup_ratio)
        _check(0.0 <= self.min_lr_ratio <= 1.0, "optim.min_lr_ratio", "must be in [0, 1]", self.min_lr_ratio)


# ------------------------------------------------------------------------------------ precision
@dataclass
class PrecisionSchema:
    """``trainer`` is Lightning's precision flag; ``dtype`` the dtype the base weights load in."""

    name: str = MISSING
    trainer: str = "32-true"
    dtype: str = "float32"

    def __post_init__(self) -> None:
        _one_of("precision.trainer", self.trainer,
                ("32-true", "32", "bf16-mixed", "16-mixed", "bf16-true", "16-true", "64-true"))
        _one_of("precision.dtype", self.dtype, ("float32", "bfloat16", "float16", "float64"))


# ------------------------------------------------------------------------------------- hardware
@dataclass
class HardwareSchema:
    name: str = MISSING
    accelerator: str = "cpu"
    devices: Any = 1
    strategy: str = "auto"
    num_nodes: int = 1
    threads: Optional[int] = None  # torch.set_num_threads; null leaves torch's default

    def __post_init__(self) -> None:
        _one_of("hardware.accelerator", self.accelerator, ("cpu", "gpu", "cuda", "mps", "auto"))
        ok = self.devices == "auto" or (isinstance(self.devices, int) and self.devices > 0) or (
            isinstance(self.devices, (list, tuple)) and len(self.devices) > 0
        )
        _check(ok, "hardware.devices", "must be a positive integer, a list of ids or 'auto'", self.devices)
        _check(self.num_nodes > 0, "hardware.num_nodes", "must be > 0", self.num_nodes)
        _check(self.threads is None or self.threads > 0, "hardware.threads", "must be > 0 or null", self.threads)


# -------------------------------------------------------------------------------------- trainer
@dataclass
class TrainerSchema:
    """Arguments of ``lightning.Trainer`` that a run may change."""

    max_steps: int = 100
    max_epochs: int = -1
    val_check_interval: Any = None  # an int: every N training batches; a float in (0, 1]: a fraction of an epoch
    check_val_every_n_epoch: Optional[int] = 1
    log_every_n_steps: int = 10
    accumulate_grad_batches: int = 1
    gradient_clip_val: Optional[float] = 1.0
    # an int: that many batches; a float in [0, 1]: that fraction; null: all
    limit_train_batches: Any = None
    limit_val_batches: Any = None
    limit_test_batches: Any = None
    num_sanity_val_steps: int = 0
    fast_dev_run: Any = False
    deterministic: Any = False
    enable_progress_bar: bool = True

    def __post_init__(self) -> None:
        _check(self.max_steps > 0 or self.max_steps == -1, "trainer.max_steps", "must be > 0 (or -1 for epochs)",
               self.max_steps)
        _check(self.max_steps > 0 or self.max_epochs > 0, "trainer.max_epochs",
               "must be > 0 when trainer.max_steps is -1", self.max_epochs)
        _check(self.log_every_n_steps > 0, "trainer.log_every_n_steps", "must be > 0", self.log_every_n_steps)
        _check(self.accumulate_grad_batches > 0, "trainer.accumulate_grad_batches", "must be > 0",
               self.accumulate_grad_batches)
        g = self.gradient_clip_val
        _check(g is None or g > 0, "trainer.gradient_clip_val", "must be > 0 or null", g)
        for key in ("limit_train_batches", "limit_val_batches", "limit_test_batches"):
            v = getattr(self, key)
            ok = v is None or (isinstance(v, int) and not isinstance(v, bool) and v >= 0) or (
                isinstance(v, float) and 0 <= v <= 1)
            _check(ok, f"trainer.{key}", "must be a count of batches, a fraction in [0, 1] or null", v)
        v = self.val_check_interval
        ok = v is None or (isinstance(v, int) and not isinstance(v, bool) and v > 0) or (
            isinstance(v, float) and 0 < v <= 1)
        _check(ok, "trainer.val_check_interval", "must be a positive integer, a fraction in (0, 1] or null", v)


# ---------------------------------------------------------------------------------------- paths
@dataclass
class PathsSchema:
    run_dir: str = MISSING
    cache_dir: str = MISSING


# ------------------------------------------------------------------------------------- top level
@dataclass
class TrainSchema:
    """Everything ``peftlab-train`` reads. ``callbacks`` and ``logger`` are ``_target_`` leaves."""

    model: ModelSchema = MISSING
    method: Any = MISSING  # one of the method schemas, chosen by ``method.name``
    data: DataSchema = MISSING
    optim: OptimSchema = MISSING
    precision: PrecisionSchema = MISSING
    hardware: HardwareSchema = MISSING
    trainer: TrainerSchema = MISSING
    callbacks: Dict[str, Any] = field(default_factory=dict)
    logger: Dict[str, Any] = field(default_factory=dict)
    paths: PathsSchema = MISSING
    seed: int = 42
    zero_shot: bool = True  # test the untouched base model before training
    save_adapter: bool = True
    merge_after: bool = True  # mergeable methods (LoRA, IA3): merge and verify right after training
    resume_from: Optional[str] = None  # a Lightning checkpoint of an earlier run
    objective: Optional[str] = None  # dotted metrics.json key a sweeper optimises; null: the task's main metric
    tags: List[str] = field(default_factory=list)


@dataclass
class EvalSchema:
    """Everything ``peftlab-eval`` reads: a run folder's adapter, or a base model alone."""

    model: ModelSchema = MISSING
    data: DataSchema = MISSING
    precision: PrecisionSchema = MISSING
    hardware: HardwareSchema = MISSING
    paths: PathsSchema = MISSING
    run_dir: Optional[str] = None  # a peftlab-train run folder; null evaluates the base model alone
    split: str = "test"
    seed: int = 42
    limit_batches: Optional[float] = None

    def __post_init__(self) -> None:
        _one_of("split", self.split, ("val", "test"))


@dataclass
class ParamsSchema:
    """Everything ``peftlab-params`` reads: a model and a method, counted on the meta device."""

    model: ModelSchema = MISSING
    method: Any = MISSING
    paths: PathsSchema = MISSING
    task_type: Optional[str] = None  # null: the model's first task type
    reference: Optional[str] = None  # a paper's printed figure, shown beside the count

    def __post_init__(self) -> None:
        if self.task_type is not None:
            _one_of("task_type", self.task_type, TASK_TYPES)


@dataclass
class MergeSchema:
    """Everything ``peftlab-merge`` reads."""

    run_dir: str = MISSING  # a finished peftlab-train run folder of a mergeable method
    dtype: Optional[str] = None  # the merged model's dtype; null: the dtype the run trained in
    out_dir: Optional[str] = None  # null: <run_dir>/merged
    verify_batches: int = 2  # validation batches whose logits are compared
    max_test_examples: Optional[int] = None  # null: the whole test split for the metric check
    min_top1: Optional[float] = None  # top-1 agreement required; null: 1.0 for fp32, 0.99 for bf16/fp16
    paths: PathsSchema = MISSING
    seed: int = 42

    def __post_init__(self) -> None:
        if self.dtype is not None:
            _one_of("dtype", self.dtype, ("float32", "bfloat16", "float16"))
        _check(self.verify_batches > 0, "verify_batches", "must be > 0", self.verify_batches)
        m = self.max_test_examples
        _check(m is None or m > 0, "max_test_examples", "must be > 0 or null", m)
        t = self.min_top1
        _check(t is None or 0 < t <= 1, "min_top1", "must be in (0, 1] or null", t)


@dataclass
class ReportSchema:
    """Everything ``peftlab-report`` reads."""

    inputs: List[str] = field(default_factory=list)  # sweep folders and/or run folders
    out_dir: Optional[str] = None  # null: <input>/report for one input, else the command's own folder
    plots: bool = True
