"""Combine several runs' adapters of one base into one adapter (peft's ``add_weighted_adapter``):
the library behind ``peftlab-combine``.

Everything that can be refused is refused before a model loads, with one line naming the run
folder: different bases, methods or task types; a method that cannot combine, or not by this type;
unequal ranks where the type combines A and B entry by entry; two task heads. The combination is
written as a plain peft adapter folder, reloaded and checked against the combination in memory
(within ``forward_tolerance``: export/verify.py) before it is renamed into place.

The combination is made contiguous in memory before anything measures it: peft's ``*_svd`` types
keep, as the new adapter's lora_A, a row slice of the ``Vh`` that LAPACK returns in column-major
order (strides (1, in): a transposed view over the whole in x in matrix). peft saves it
row-major, so the reloaded adapter's matmuls took the other transpose branch of the GEMM kernel,
whose summation order is the CPU's business: 2.1e-7 apart on an AMD EPYC, bit for bit the same
on an Intel Xeon with AMX. Contiguous, the adapter in memory is the adapter on disk, and what is
scored is what is saved.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from peftlab.config.commands import EQUAL_RANKS, PRUNING, SIGN_ELECTING, CombineSchema
from peftlab.errors import ConfigError
from peftlab.models import display_name
from peftlab.models.adapters import AdapterBank, adapter_rank
from peftlab.runs.config import base_identity, read_adapter_config, read_run_config, same_files
from peftlab.runs.files import atomic_path

COMBINED = "combined"  # the combination's adapter name in the shared base


@dataclass
class Source:
    """One run whose adapter takes part: its folder, its validated config, its name in the bank."""

    run_dir: Path
    run: Any  # a TrainSchema
    name: str
    weight: float

    @property
    def adapter(self) -> Path:
        return self.run_dir / "adapter"


def read_sources(conf: CombineSchema) -> list[Source]:
    """The runs named by ``runs=``, read as data (their configs validated, never executed)."""
    import peftlab.methods  # noqa: F401  (the method schemas a run's config names)

    sources, seen = [], set()
    for i, (folder, weight) in enumerate(zip(conf.runs, conf.run_weights(), strict=True)):
        run_dir = Path(folder).expanduser()
        if run_dir.resolve() in seen:
            raise ConfigError(f"runs: {folder} is named twice")
        seen.add(run_dir.resolve())
        run = read_run_config(run_dir, trust_remote_code=conf.trust_remote_code, key="runs")
        sources.append(Source(run_dir, run, f"{i}_{run.data.name}", weight))
    same_files([s.adapter for s in sources], "runs")
    return sources


def check_sources(sources: list[Source], conf: CombineSchema) -> None:
    """Every refusal that needs no model, one line each, naming the run folder."""
    first = sources[0]
    kind = conf.combination_type
    configs = {}  # each source's adapter_config.json, read once its method is known to combine
    if len(sources) == 1 and kind != "linear":
        raise ConfigError(f"combination_type={kind} combines two or more adapters; one run (a weighted or negated "
                          "copy) combines by linear, which peft uses for a single adapter whatever the type")
    for s in sources:
        if base_identity(s.run.model) != base_identity(first.run.model):
            raise ConfigError(f"runs: {s.run_dir} adapts {display_name(s.run.model)} and {first.run_dir} adapts "
                              f"{display_name(first.run.model)}: only adapters of one base combine")
        if s.run.method.name != first.run.method.name:
            raise ConfigError(f"runs: {s.run_dir} trained method={s.run.method.name} and {first.run_dir} "
                              f"method={first.run.method.name}: only adapters of one method combine")
        if s.run.data.task_type != first.run.data.task_type:
            raise ConfigError(f"runs: {s.run_dir} is a {s.run.data.task_type} run and {first.run_dir} a "
                              f"{first.run.data.task_type} run: their models have different heads")
        why = s.run.method.combine_refusal(kind, [x.weight for x in sources])
        if why:
            raise ConfigError(f"runs: {s.run_dir}: {why}")
        configs[s.run_dir] = read_adapter_config(s.adapter)
        if configs[s.run_dir].get("modules_to_save"):
            raise ConfigError(f"runs: {s.run_dir} trains its own task head (modules_to_save): peft's "
                              "add_weighted_adapter combines no heads (the combination would carry an untrained one)")
    if kind in EQUAL_RANKS:
        ranks = {d: adapter_rank(config) for d, config in configs.items()}
        if len(set(map(str, ranks.values()))) > 1:
            shown = ", ".join(f"{d} r={r}" + (f" (per module: {p})" if p else "") for d, (r, p) in ranks.items())
            raise ConfigError(f"combination_type={kind} combines A and B entry by entry and needs equal ranks, "
                              f"got {shown}; cat and the *svd types take any ranks")


def options_used(conf: CombineSchema) -> dict[str, Any]:
    """The options this combination type reads (the others are recorded as not used)."""
    kind = conf.combination_type
    return {"combination_type": kind,
            "density": conf.density if kind in PRUNING else None,
            "majority_sign_method": conf.majority_sign_method if kind in SIGN_ELECTING else None,
            "svd_rank": conf.svd_rank if kind.endswith("svd") else None}


def combine(bank: AdapterBank, sources: list[Source], conf: CombineSchema, name: str = COMBINED) -> None:
    """Add the combination to ``bank`` as adapter ``name`` (DARE's random drops seeded by ``seed``)."""
    import torch

    add = bank.model.add_weighted_adapter
    takes = inspect.signature(add).parameters  # IA3's takes weights only: its one type is linear
    kwargs = {k: v for k, v in options_used(conf).items() if k in takes and (v is not None or k == "svd_rank")}
    torch.manual_seed(conf.seed)
    try:
        add([s.name for s in sources], [s.weight for s in sources], name, **kwargs)
    except (ValueError, TypeError, RuntimeError) as err:
        raise ConfigError(f"combination_type={conf.combination_type}: {str(err).splitlines()[0]}") from None
    make_contiguous(bank.model, name)
    bank.names.append(name)


def make_contiguous(model, name: str) -> int:
    """Store every tensor of adapter ``name`` row-major, as peft saves it (peft's svd combinations
    leave lora_A a strided view of LAPACK's column-major Vh); returns how many moved."""
    moved = 0
    for key, param in model.named_parameters():
        if f".{name}." in f"{key}." and not param.data.is_contiguous():
            param.data = param.data.contiguous()  # a copy: the in x in factor it viewed is let go
            moved += 1
    return moved


def save_combined(bank: AdapterBank, out: Path, batch: dict[str, Any], name: str = COMBINED,
                  report: Optional[dict[str, Any]] = None, sources: Optional[list[Source]] = None) -> dict[str, Any]:
    """Write adapter ``name`` to ``out`` as a plain peft folder (with the tokenizer, and its model
    card from ``report`` and ``sources`` when given: export/card.py), reload it into
    the bank and check that it gives the same logits on ``batch`` before it is renamed into place:
    within ``forward_tolerance`` of the model's dtype (export/verify.py), since a reload is not a
    computation whose last bits are the same on every CPU by construction. Returns the check."""
    import torch

    from peftlab.export.card import combined_card
    from peftlab.export.verify import logits_tolerance

    with atomic_path(out) as tmp:
        bank.model.save_pretrained(tmp, selected_adapters=[name])  # peft writes a named adapter in tmp/<name>/
        for path in (tmp / name).iterdir():
            path.rename(tmp / path.name)
        (tmp / name).rmdir()
        bank.tokenizer.save_pretrained(tmp)
        if report is not None and sources:
            combined_card(tmp, out, report, sources)
        inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
        with torch.no_grad(), bank.use(name) as model:
            expected = model(**inputs).logits
        try:
            bank.add("reloaded", tmp)
        except ConfigError as err:
            raise ConfigError(f"{out}: the saved combination does not reload ({str(err).split(': ', 2)[-1]}); "
                              "nothing was kept") from None
        try:
            with torch.no_grad(), bank.use("reloaded") as model:
                got = model(**inputs).logits
        finally:
            bank.model.set_adapter(name)
            bank.model.delete_adapter("reloaded")
            bank.names.remove("reloaded")
        error = float((expected - got).abs().max())
        allowed = logits_tolerance(bank.model, expected)
        if not error <= allowed:  # NaN on either side fails too
            raise ConfigError(f"{out}: the saved combination reloads with logits {error:.3g} away from the one "
                              f"in memory (more than {allowed:.3g}, the {expected.dtype} rounding of this "
                              "model's forward); nothing was kept")
    return {"reloaded_max_abs_error": error, "tolerance": allowed}
