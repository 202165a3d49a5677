"""Model cards: the ``README.md`` every exported adapter, merged model and combined adapter carries,
in the hub's model-card format (YAML front matter, then Markdown), rendered with huggingface_hub's
``ModelCard`` and read back by it.

A card states what the folder holds and how it was made: the base model and its license, the method
and its settings, the data, the test metrics measured on this artefact (also as ``model-index``),
whether vLLM and SGLang serve it as a LoRA (methods/serving.py), the command, the commit, and how to
load it with plain peft or transformers. One run has no interval: intervals over seeds are a sweep's,
in peftlab-report's ``report.json``; a card never makes one up. The base's license is what the base
says of itself (the front matter of its model card, a GGUF file's ``general.license``, its
config.json), "none (random weights)" for a random-init model, and "unknown" otherwise.
"""

from __future__ import annotations

import dataclasses
import json
import math
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import yaml

from peftlab.config.checks import hub_id
from peftlab.export.gguf_verify import gguf_section
from peftlab.methods import METHODS
from peftlab.methods.serving import COLUMN, serving_verdict
from peftlab.runs.files import atomic_path

CARD = "README.md"
RANDOM = "none (random weights)"
RANDOM_SOURCES = ("random", "meta")  # model.source values whose weights are a random init


@dataclass
class Card:
    """What a card states; ``adapter_card``, ``merged_card`` and ``combined_card`` fill it."""

    title: str
    summary: str
    folder: Path  # where the card's folder ends up (the loading code names it)
    adapter: bool  # an adapter (library peft) or a whole model (library transformers)
    run: Any  # the run's TrainSchema (the first source's, for a combination)
    base_path: str  # what the adapter loads on (adapter_config.json's base_model_name_or_path)
    data: dict[str, Any]  # dataset label -> its data config
    # dataset label -> the test metrics measured on this folder's model (the model-index)
    metrics: dict[str, dict[str, float]]
    table: dict[str, dict[str, Any]]  # column -> {metric: value}, the body's results table
    command: str
    versions: dict[str, Any]
    serving: str
    sections: list[str] = field(default_factory=list)  # Markdown blocks specific to the artefact
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    gguf_file: Optional[str] = None  # a merged model exported as one GGUF file (peftlab-merge format=gguf)


def base_license(model_cfg: Any, base_path: str) -> tuple[str, str]:
    """(the front matter's ``license``, the words the body states) of the base model."""
    if not model_cfg.name_or_path and model_cfg.source in RANDOM_SOURCES:
        return "other", RANDOM
    found = _license_in(Path(base_path).expanduser())
    if found is None and model_cfg.package and model_cfg.file and not model_cfg.name_or_path:
        from peftlab.models.sources import package_dir

        found = _license_in(package_dir(model_cfg.package) / model_cfg.file)
    hub = hub_id(model_cfg.name_or_path)
    if found is None and hub:  # a hub model: its card in the local cache, never the network
        from huggingface_hub import try_to_load_from_cache

        try:
            cached = try_to_load_from_cache(hub, CARD, revision=model_cfg.revision)
        except ValueError:  # not a valid repository id
            cached = None
        found = _license_in(Path(cached)) if isinstance(cached, str) else None
    return (found, found) if found else ("unknown", "unknown")


def _license_in(path: Path) -> Optional[str]:
    """The license a model folder (its README.md front matter, its config.json), a model card or a
    GGUF file states; None when it states none. Read as data: YAML safely, GGUF metadata only."""
    try:
        if path.is_dir():
            return _license_in(path / CARD) or json.loads((path / "config.json").read_text()).get("license")
        if path.suffix == ".gguf":
            from gguf import GGUFReader

            found = GGUFReader(path).get_field("general.license")
            return str(found.contents()) if found is not None else None
        text = path.read_text()
        if text.startswith("---"):
            meta = yaml.safe_load(text.split("---", 2)[1]) or {}
            return str(meta["license"]) if isinstance(meta, dict) and meta.get("license") else None
    except (OSError, ValueError, KeyError, IndexError, AttributeError, yaml.YAMLError, ImportError):
        return None
    return None


def command_line(program: str, folder: Path) -> str:
    """``program`` with the overrides in ``folder``'s ``.hydra/overrides.yaml``, quoted for a shell
    (a folder made in-process with no ``.hydra/`` says that its command was not recorded)."""
    path = Path(folder) / ".hydra" / "overrides.yaml"
    try:
        overrides = yaml.safe_load(path.read_text()) or []
    except (OSError, yaml.YAMLError):
        overrides = None
    if not isinstance(overrides, list):
        return f"{program}  # its overrides were not recorded (no readable {path})"
    return " ".join([program, *(shlex.quote(str(o)) for o in overrides if isinstance(o, str))])


def _adapter_config(folder: Path) -> dict[str, Any]:
    path = Path(folder) / "adapter_config.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def _metrics_json(run_dir: Path) -> dict[str, Any]:
    try:
        return json.loads((Path(run_dir) / "metrics.json").read_text())
    except (OSError, ValueError):
        return {}


def _numbers(metrics: Optional[dict[str, Any]]) -> dict[str, float]:
    return {k: float(v) for k, v in (metrics or {}).items()
            if isinstance(v, (int, float)) and not isinstance(v, bool)}


def _task(run: Any):
    from peftlab.tasks import task_class

    return task_class(run.data.task_type)


def adapter_card(folder: Path, final: Path, run: Any, run_dir: Path, base_path: str,
                 test: Optional[dict[str, float]], model_kwargs: Optional[dict[str, Any]] = None) -> None:
    """The card of a run's ``adapter/`` (the whole model for a method without an adapter), written
    into ``folder`` (the adapter's temporary folder, renamed to ``final`` once whole)."""
    from peftlab.runs.metrics import versions

    config = _adapter_config(folder)
    kind = "adapter" if config else "model"
    write_card(folder, render(Card(
        title=f"{run.method.name} {kind} for {run.data.name}",
        summary=f"A method={run.method.name} {kind} of {_display(run)} trained on data={run.data.name}, "
                f"seed {run.seed}.",
        folder=final, adapter=bool(config), run=run, base_path=base_path,
        data={run.data.name: run.data}, metrics={run.data.name: _numbers(test)}, table={"test": _numbers(test)},
        command=command_line("peftlab-train", run_dir), versions=versions(), serving=serving_verdict(config),
        model_kwargs=dict(model_kwargs or {}))))


def merged_card(folder: Path, final: Path, run: Any, run_dir: Path, report: dict[str, Any]) -> None:
    """A merged model's card (``peftlab-merge``, ``merge_after``): its test metrics beside the adapter's."""
    recorded = _metrics_json(run_dir)
    merged, adapter = report["metrics"]["merged"], report["metrics"]["adapter"]
    checks, gguf = report["checks"]["reloaded"], report.get("gguf")
    export = (("format", "gguf"), ("gguf_type", gguf["type"])) if gguf else (("dtype", report["dtype"]),)
    write_card(folder, render(Card(
        title=f"{run.method.name} merged into {_display(run)} for {run.data.name}",
        summary=f"The method={run.method.name} adapter of {run_dir} merged into {_display(run)} "
                f"({report['dtype']}) and verified against it before export.",
        folder=final, adapter=False, run=run, base_path=report["base_model"], gguf_file=gguf and gguf["file"],
        data={run.data.name: run.data}, metrics={run.data.name: _numbers(merged)},
        table={"merged": _numbers(merged), "adapter": _numbers(adapter)},
        command=f"{command_line('peftlab-train', run_dir)}\npeftlab-merge " + " ".join(
            shlex.quote(f"{k}={v}") for k, v in (("run_dir", run_dir), ("out_dir", final), *export)),
        versions=recorded.get("versions") or {}, serving=report.get("served_as_lora", ""),
        sections=["## Merge check\n\n"
                  f"The reloaded export against the adapter: max logit error {checks['max_abs_error']:.3g}, "
                  f"top-1 agreement {checks['top1_agreement']:.4f}, test {report['probe_name']} identical "
                  f"{checks['probes_identical']}/{checks['probes']} (merge_report.json).", *gguf_section(gguf)])))


def combined_card(folder: Path, final: Path, report: dict[str, Any], sources: list[Any]) -> None:
    """The card of a combined adapter (``peftlab-combine``): its sources and weights, and its test
    metrics on each source's task where the combination was evaluated."""
    first = sources[0].run
    row = next((r for r in report.get("table", []) if r.get("kind") == "combination"), {"tasks": {}})
    data = _labelled_data(list(row["tasks"]), [s.run.data for s in sources])
    options = ", ".join(f"{k}={v}" for k, v in report.items()
                        if k in ("combination_type", "density", "majority_sign_method", "svd_rank") and v is not None)
    write_card(folder, render(Card(
        title=f"{report['method']} combination of {len(sources)} adapters",
        summary=f"{len(sources)} method={report['method']} adapters of {_display(first)} combined by peft's "
                f"add_weighted_adapter ({options}); the settings below are the first source's.",
        folder=final, adapter=True, run=first, base_path=report["base_model"], data=data,
        metrics={label: _numbers(m) for label, m in row["tasks"].items()},
        table={f"test ({label})": _numbers(m) for label, m in row["tasks"].items()},
        command=command_line("peftlab-combine", Path(final).parent), versions=report.get("versions") or {},
        serving=serving_verdict(_adapter_config(folder)),
        sections=["\n".join(["## Sources", "", "| run | weight | data |", "|---|---|---|",
                             *(f"| `{s.run_dir}` | {s.weight:g} | {s.run.data.name} |" for s in sources)])])))


def _labelled_data(labels: list[str], configs: list[Any]) -> dict[str, Any]:
    """label -> data config, for the labels peftlab-combine gives its distinct data configs (the data
    name, ``<name>_<k>`` for the k-th of several configs of one name); every name when none scored."""
    by_name: dict[str, list[Any]] = {}
    for d in configs:
        if d not in by_name.setdefault(d.name, []):
            by_name[d.name].append(d)
    found = {}
    for label in labels or list(by_name):
        name, _, k = label.rpartition("_")
        several = by_name.get(name, [])
        numbered = len(several) > 1 and k.isdigit() and 0 < int(k) <= len(several)
        found[label] = several[int(k) - 1] if numbered else by_name.get(label, configs)[0]
    return found


def _display(run: Any) -> str:
    return run.model.name_or_path or run.model.name


def _cell(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    return text.replace("|", "\\|").replace("\n", " ")


def front_matter(card: Card) -> Any:
    """The card's ``ModelCardData``: base_model, library_name, license, tags, datasets, model-index."""
    from huggingface_hub import EvalResult, ModelCardData

    run = card.run
    license_id, license_words = base_license(run.model, card.base_path)
    pipeline = "text-generation" if _task(run).generative else "text-classification"
    results, seen = [], set()
    for label, d in card.data.items():  # one data set named twice (two sources of one task) is one result
        if (key := (hub_id(d.path) or d.path, d.hub_config, d.test_split)) in seen:
            continue
        seen.add(key)
        results += [EvalResult(task_type=pipeline, task_name=label, dataset_type=key[0], dataset_name=label,
                               dataset_config=d.hub_config, dataset_split=d.test_split, metric_type=name,
                               metric_value=value, metric_name=f"test {name}")
                    for name, value in card.metrics.get(label, {}).items() if math.isfinite(value)]
    datasets = sorted({h for d in card.data.values() if (h := hub_id(d.path))})
    return ModelCardData(
        base_model=hub_id(run.model.name_or_path) or card.base_path,
        library_name="peft" if card.adapter else "transformers",
        license=license_id, license_name=license_words if license_id == "other" else None,
        tags=["peftlab", run.method.name, run.data.task_type, *(["gguf"] if card.gguf_file else [])],
        datasets=datasets or None, pipeline_tag=pipeline, model_name=card.title, eval_results=results or None)


def render(card: Card) -> str:
    """The card as text: front matter and body."""
    from huggingface_hub import ModelCard

    data, run = front_matter(card), card.run
    spec = METHODS.get(run.method.name)
    settings = {k: v for k, v in dataclasses.asdict(run.method).items() if k != "name"}
    names = sorted({k for column in card.table.values() for k in column})
    v = card.versions
    commit = (v.get("git_commit") or "unknown (not a git checkout)") + (" (uncommitted changes)"
                                                                         if v.get("git_dirty") else "")
    auto = _task(run).auto_class().__name__
    kwargs = "".join(f", {key}={value!r}" for key, value in card.model_kwargs.items())
    gguf = f", gguf_file={json.dumps(card.gguf_file)}" if card.gguf_file else ""  # transformers' GGUF loader
    load = ([f"from transformers import {auto}, AutoTokenizer", "from peft import PeftModel", "",
             f"base = {auto}.from_pretrained({json.dumps(card.base_path)}{kwargs})",
             f"model = PeftModel.from_pretrained(base, {json.dumps(str(card.folder))})"]
            if card.adapter else [f"from transformers import {auto}, AutoTokenizer", "",
                                  f"model = {auto}.from_pretrained({json.dumps(str(card.folder))}{gguf})"])
    body = [
        f"# {card.title}", "", card.summary, "",
        "## Base model", "",
        f"- `{_display(run)}`, loaded from `{card.base_path}`",
        f"- license of the base: {data.license_name or data.license}", "",
        "## Method and settings", "",
        f"method={run.method.name}" + (f": {spec.trains}" if spec else ""), "",
        "| setting | value |", "|---|---|", *(f"| `{k}` | {_cell(x)} |" for k, x in settings.items()), "",
        "## Data", "",
        *(f"- {label}: `{d.path}` (task type {d.task_type}, format {d.format})" for label, d in card.data.items()),
        "", "## Results", "",
        "| metric | " + " | ".join(card.table) + " |", "|---|" + "---|" * len(card.table),
        *(f"| {n} | " + " | ".join(_value(c.get(n)) for c in card.table.values()) + " |" for n in names), "",
        "Test metrics of one run: no interval. Intervals over seeds come from a sweep, in peftlab-report's "
        "report.json (each group's confidence interval).", "",
        *(line for section in card.sections for line in (section, "")),
        "## Serving", "", f"{COLUMN}: {card.serving or 'not stated'}", "",
        "## How it was made", "", "```bash", card.command, "```", "",
        f"- commit: {commit}",
        "- versions: " + ", ".join(f"{k} {v[k]}" for k in ("peftlab", "peft", "transformers", "torch") if v.get(k)),
        "", "## Loading it", "", "```python", *load,
        f"tokenizer = AutoTokenizer.from_pretrained({json.dumps(str(card.folder))}{gguf})", "```", ""]
    return ModelCard(f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(body)).content


def _value(x: Optional[float]) -> str:
    return "" if x is None else f"{x:.6g}"


def write_card(folder: Path, text: str) -> Path:
    """Write ``text`` as ``folder``'s README.md, atomically (replacing peft's template card)."""
    path = Path(folder) / CARD
    with atomic_path(path, overwrite=True) as tmp:
        tmp.write_text(text)
    return path
