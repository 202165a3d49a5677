"""Typed schemas of the primary configs, one per command: everything that command reads.

``peftlab-train`` reads ``TrainSchema``; its ``method`` is one of the method schemas that
``peftlab.methods`` registers, chosen by ``method.name``.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from omegaconf import MISSING

from peftlab.config.checks import check as _check
from peftlab.config.checks import one_of as _one_of
from peftlab.config.claims import check_claim
from peftlab.config.measure import ForgettingSchema, KLToBaseSchema, ValidationSchema, check_margins
from peftlab.config.merge import MergeSchema  # noqa: F401  (re-exported: the merge schema has its module)
from peftlab.config.plugins import task_types
from peftlab.config.rl import RLSchema
from peftlab.config.schema import (
    DataSchema,
    HardwareSchema,
    ModelSchema,
    OptimSchema,
    PathsSchema,
    PrecisionSchema,
    PreferenceSchema,
    TrainerSchema,
)
from peftlab.errors import ConfigError


@dataclass
class TrainSchema:
    """Everything ``peftlab-train`` reads. ``callbacks`` and ``logger`` are ``_target_`` leaves."""

    plugins: List[str] = field(default_factory=list)  # your own modules to load first: docs/guides/plugins.md
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
    preference: Optional[PreferenceSchema] = None  # preference training settings (data of task type preference)
    rl: Optional[RLSchema] = None  # online RL settings (data of task type rl)
    # how the run trains (peftlab/objectives/): null chooses by the run (online_rl for rl=..., else
    # task_loss, the task's own loss); a name picks a registered objective (a plug-in's own)
    training_objective: Optional[str] = None
    seed: int = 42
    zero_shot: bool = True  # test the untouched base model before training
    # score the test split after training; false: a run that never reads the test split (the search
    # jobs of hydra/sweeper=tune_then_test), which needs zero_shot=false and merge_after=false too
    test: bool = True
    validation: ValidationSchema = field(default_factory=ValidationSchema)
    forgetting: Optional[ForgettingSchema] = None  # the loss on general text before and after (null: not measured)
    kl_to_base: Optional[KLToBaseSchema] = None  # KL(base || trained) on the task's prompts (null: not measured)
    init_adapter: Optional[str] = None  # start from this adapter (<run_dir>/adapter of an SFT run)
    save_adapter: bool = True
    merge_after: bool = True  # mergeable methods (LoRA, IA3): merge and verify right after training
    resume_from: Optional[str] = None  # a local checkpoint file of an earlier run (<run_dir>/checkpoints/last.ckpt)
    # dotted metrics.json key a sweeper optimises; null: the task's primary validation metric
    # (val.exact_match, val.accuracy...), or its test metric where validation is off
    objective: Optional[str] = None
    # let a sweeper that chooses (optuna, tune_then_test, any but Hydra's grid) optimise a test.*
    # objective: tuning on the test split; recorded in metrics.json and said on every report
    tune_on_test: bool = False
    # equivalence margins stated before the runs ({test.exact_match: 0.03}), recorded in metrics.json:
    # peftlab-report's TOST reads them as set before the runs (an experiment file states them)
    margins: Any = None
    # a published claim as this run's stated test (conf/experiment/claim_*.yaml; config/claims.py):
    # recorded in metrics.json, judged by peftlab-report into claim.md (docs/guides/claims.md)
    claim: Any = None
    tags: List[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        a = self.init_adapter
        if a is not None:
            _check(os.path.isfile(os.path.join(os.path.expanduser(a), "adapter_config.json")), "init_adapter",
                   "must be an adapter folder (with adapter_config.json), such as <run_dir>/adapter", a)
        r = self.resume_from
        if r is not None:
            _check("://" not in r, "resume_from", "must be a local checkpoint file (peftlab never downloads one)", r)
            _check(os.path.isfile(os.path.expanduser(r)), "resume_from", "must be an existing checkpoint file", r)
        check_margins("margins", self.margins)
        check_claim(self.claim)
        if not self.test:
            reads_test = [k for k in ("zero_shot", "merge_after") if getattr(self, k)]
            if reads_test:
                raise ConfigError("test=false (a run that never reads the test split) needs "
                                  + " and ".join(f"{k}=false" for k in reads_test) + ": they test on it")


@dataclass
class EvalSchema:
    """Everything ``peftlab-eval`` reads: a run folder's adapter, or a base model alone."""

    plugins: List[str] = field(default_factory=list)  # your own modules to load first: docs/guides/plugins.md
    model: ModelSchema = MISSING
    data: DataSchema = MISSING
    precision: PrecisionSchema = MISSING
    hardware: HardwareSchema = MISSING
    paths: PathsSchema = MISSING
    run_dir: Optional[str] = None  # a peftlab-train run folder; null evaluates the base model alone
    # many run folders (or sweep folders, for every finished run in them) scored in one process, each
    # base loaded once for all the adapters of it; exclusive with run_dir
    runs: Optional[List[str]] = None
    trust_remote_code: bool = False  # a run folder's own setting is never obeyed: the user decides here
    split: str = "test"
    seed: int = 42
    limit_batches: Optional[float] = None

    def __post_init__(self) -> None:
        _one_of("split", self.split, ("val", "test"))
        _check(self.runs is None or self.run_dir is None, "runs", "and run_dir exclude each other (give one)",
               self.runs)
        _check(self.runs is None or len(self.runs) > 0, "runs", "must name at least one folder", self.runs)
        _check(self.runs is None or self.hardware.accelerator == "cpu", "hardware.accelerator",
               "must be cpu with runs=[...] (the many-adapter evaluation runs on the CPU; run_dir= evaluates on "
               "the accelerator)", self.hardware.accelerator)
        b = self.limit_batches
        _check(b is None or (0 < b <= 1) or (b > 1 and float(b).is_integer()), "limit_batches",
               "must be a share in (0, 1] or a whole number of batches", b)


@dataclass
class GenerateSchema:
    """Everything ``peftlab-generate`` reads: a run folder, and prompts from one of three places."""

    plugins: List[str] = field(default_factory=list)  # your own modules to load first: docs/guides/plugins.md
    run_dir: str = MISSING  # a finished peftlab-train run folder
    prompt: Optional[str] = None  # one prompt
    file: Optional[str] = None  # a .jsonl of prompts (the run's data.prompt_field, or "prompt"), or a line each
    interactive: bool = False  # read prompts from the terminal; answers stream as they are generated
    out: Optional[str] = None  # file mode: write the answers here (.jsonl) instead of printing them
    merged: bool = False  # the run's verified merged model (<run_dir>/merged) instead of its adapter
    max_new_tokens: Optional[int] = None  # null: the run's data.max_new_tokens
    do_sample: bool = False  # greedy unless true
    temperature: float = 1.0
    top_p: float = 1.0
    batch_size: int = 8
    seed: int = 42
    trust_remote_code: bool = False  # a run folder's own setting is never obeyed: the user decides here
    paths: PathsSchema = MISSING

    def __post_init__(self) -> None:
        sources = {"prompt=": self.prompt is not None, "file=": self.file is not None, "interactive=": self.interactive}
        given = [k.rstrip("=") for k, on in sources.items() if on]
        if len(given) != 1:
            raise ConfigError("prompt: give exactly one of prompt=..., file=... or interactive=true (given: "
                              f"{', '.join(given) or 'none'})")
        n = self.max_new_tokens
        _check(n is None or n > 0, "max_new_tokens", "must be > 0 or null", n)
        _check(self.temperature > 0 and math.isfinite(self.temperature), "temperature", "must be a finite number > 0",
               self.temperature)
        _check(0 < self.top_p <= 1, "top_p", "must be in (0, 1]", self.top_p)
        _check(self.batch_size > 0, "batch_size", "must be > 0", self.batch_size)
        _check(self.out is None or self.file is not None, "out", "applies to file=... only", self.out)


@dataclass
class ParamsSchema:
    """Everything ``peftlab-params`` reads: a model and a method, counted on the meta device."""

    plugins: List[str] = field(default_factory=list)  # your own modules to load first: docs/guides/plugins.md
    model: ModelSchema = MISSING
    method: Any = MISSING
    paths: PathsSchema = MISSING
    task_type: Optional[str] = None  # null: the model's first task type
    reference: Optional[str] = None  # a paper's printed figure, shown beside the count

    def __post_init__(self) -> None:
        if self.task_type is not None:
            _one_of("task_type", self.task_type, task_types())


# peft's add_weighted_adapter, every type it has for LoRA: task arithmetic on A and B (linear),
# stacking (cat: the exact weighted sum of the updates), that sum refactored by SVD (svd), and TIES,
# DARE and magnitude pruning on A and B or, with _svd, on the updates
COMBINATION_TYPES = ("linear", "cat", "svd", "ties", "ties_svd", "dare_linear", "dare_ties", "dare_linear_svd",
                     "dare_ties_svd", "magnitude_prune", "magnitude_prune_svd")
EQUAL_RANKS = ("linear", "ties", "dare_linear", "dare_ties", "magnitude_prune")  # combine A and B entry by entry
PRUNING = tuple(t for t in COMBINATION_TYPES if t.startswith(("ties", "dare", "magnitude")))  # read ``density``
SIGN_ELECTING = tuple(t for t in COMBINATION_TYPES if "ties" in t)  # read ``majority_sign_method``


@dataclass
class CombineSchema:
    """Everything ``peftlab-combine`` reads: the run folders whose adapters are combined, and how."""

    plugins: List[str] = field(default_factory=list)  # your own modules to load first: docs/guides/plugins.md
    runs: List[str] = MISSING  # finished peftlab-train run folders: one base, one method
    weights: Optional[List[float]] = None  # one per run, negative to subtract a skill; null: 1.0 each
    combination_type: str = "linear"  # one of COMBINATION_TYPES
    density: float = 0.5  # the share of entries kept (the pruning types: ties*, dare*, magnitude_prune*)
    majority_sign_method: str = "total"  # how TIES elects each entry's sign: total or frequency
    svd_rank: Optional[int] = None  # the *svd types' rank; null: the largest source rank
    evaluate: bool = True  # every source alone and the combination, on every source's test split
    max_test_examples: Optional[int] = None  # null: each whole test split
    forgetting: Optional[ForgettingSchema] = field(default_factory=ForgettingSchema)  # null: not measured
    trust_remote_code: bool = False  # a run folder's own setting is never obeyed: the user decides here
    paths: PathsSchema = MISSING
    seed: int = 42  # DARE's random drops

    def __post_init__(self) -> None:
        _check(len(self.runs) > 0, "runs", "must name at least one run folder", list(self.runs))
        _one_of("combination_type", self.combination_type, COMBINATION_TYPES)
        w = self.weights
        if w is not None:
            _check(len(w) == len(self.runs), "weights", f"must have one weight per run ({len(self.runs)})", list(w))
            _check(all(math.isfinite(x) and x != 0 for x in w), "weights", "must be finite and non-zero", list(w))
        _check(0 < self.density <= 1, "density", "must be in (0, 1]", self.density)
        _one_of("majority_sign_method", self.majority_sign_method, ("total", "frequency"))
        _check(self.svd_rank is None or self.svd_rank > 0, "svd_rank", "must be > 0 or null", self.svd_rank)
        _check(self.svd_rank is None or self.combination_type.endswith("svd"), "svd_rank",
               f"applies to the *svd combination types only, not combination_type={self.combination_type}",
               self.svd_rank)
        m = self.max_test_examples
        _check(m is None or m > 0, "max_test_examples", "must be > 0 or null", m)

    def run_weights(self) -> list[float]:
        return [1.0] * len(self.runs) if self.weights is None else [float(x) for x in self.weights]


@dataclass
class ReportSchema:
    """Everything ``peftlab-report`` reads."""

    plugins: List[str] = field(default_factory=list)  # your own modules to load first: docs/guides/plugins.md
    inputs: List[str] = field(default_factory=list)  # sweep folders and/or run folders
    out_dir: Optional[str] = None  # null: <input>/report for one input, else the command's own folder
    plots: bool = True
    overwrite: bool = False  # replace a report already in out_dir
    # TOST between every pair of groups: null; a margin on the primary test metric (equivalence=0.03);
    # or metrics.json numbers with their margins (equivalence={test.exact_match:0.03,forgetting.delta:0.03})
    equivalence: Any = None
    # pairwise tests of the primary test metric between every pair of groups, Holm-corrected, with
    # effect sizes and a compact letter display in the tables
    compare: bool = False
    # singular values and effective rank of every module's weight update (LoRA, LoHa, LoKr adapters)
    spectra: bool = False
    # the LoRA paper's subspace similarity between two ranks' adapters and between seeds: [low, high]
    subspace: Optional[List[int]] = None
    # results.html: one self-contained page (sortable tables, plots with each point's settings on hover)
    html: bool = True
    # folders of peftlab-eval runs=[...] evaluations: their scores of the report's runs, as
    # scored.<task>.<metric> numbers per group (equivalence= may name them)
    scores: List[str] = field(default_factory=list)
    # the overview of published claims: report folders that hold a claim.json (a claim experiment's
    # report) -> claims.md, the verdict table; exclusive with inputs
    claims: List[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        _check(not (self.claims and self.inputs), "claims",
               "and inputs exclude each other (claims=[...] reads the reports of claims, not run folders)", self.claims)
        ranks = self.subspace
        if ranks is not None:
            _check(len(ranks) == 2 and ranks[0] != ranks[1] and all(r > 0 for r in ranks), "subspace",
                   "must be two different LoRA ranks > 0, such as [8,64]", list(ranks))
        value = self.equivalence
        if value is None or _is_margin(value):
            margins = {} if value is None else {"": value}
        elif isinstance(value, Mapping) and value and all(isinstance(k, str) for k in value):
            margins = dict(value)
        else:
            raise ConfigError(f"equivalence must be a margin or {{<metrics.json key>: <margin>, ...}}, got {value!r}")
        for key, margin in margins.items():
            name = f"equivalence.{key}" if key else "equivalence"
            _check(_is_margin(margin) and margin > 0 and math.isfinite(margin), name, "must be a finite number > 0",
                   margin)

    def margins(self, primary: str) -> dict[str, float]:
        """metrics.json key -> margin; a bare margin is the primary test metric's."""
        if self.equivalence is None:
            return {}
        if _is_margin(self.equivalence):
            return {f"test.{primary}": float(self.equivalence)}
        return {k: float(v) for k, v in self.equivalence.items()}


def _is_margin(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)
