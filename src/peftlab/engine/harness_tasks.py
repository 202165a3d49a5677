"""peftlab's own tasks as lm-evaluation-harness task configs over local files, written into the
harness command's folder (``tasks/``), where ``lm-eval --include_path`` reads them too:

- ``peftlab``: the run's task as ``generate_until`` over its split's records: the prompt as the run's
  prompt format renders it (the chat template with the system prompt, given to lm-eval's own chat
  templating; or the plain instruction format, rendered here), greedy decoding of at most
  ``data.max_new_tokens`` tokens ending at the model's end token, and exact match after stripping
  surrounding whitespace (peftlab's normalisation: tasks/metrics.py ``ExactMatch``);
- ``peftlab_text``: the general text of the run's forgetting measure, cut into the same windows,
  as ``loglikelihood_rolling`` (word and byte perplexity, bits per byte).

Configs are plain YAML with lm-eval's built-in metrics: no code is written or imported."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import yaml

from peftlab.errors import ConfigError, DataError

STRIP = [r"^\s+", r"\s+$"]  # ExactMatch compares p.strip() == r.strip()


@dataclass(frozen=True)
class OwnTask:
    """A task config written for lm-eval, and how lm-eval must prompt for it."""

    name: str  # the lm-eval task name
    chat: bool  # lm-eval applies the model's chat template (apply_chat_template=True)
    system: Optional[str]  # the system prompt lm-eval puts first (chat only)


def _single_turns(turns: list[dict[str, str]], where: str) -> tuple[Optional[str], str, str]:
    """(system, user, answer) of a one-question conversation; lm-eval's documents have one prompt."""
    system = turns[0]["content"] if turns[0]["role"] == "system" else None
    rest = turns[1:] if system is not None else turns
    if len(rest) != 2:
        raise ConfigError(f"tasks: peftlab: {where} is a conversation of {len(rest) // 2} exchanges; lm-eval's "
                          "generation tasks take one prompt a document (score multi-turn tasks with peftlab-eval)")
    return system, rest[0]["content"], rest[1]["content"]


def write_own_task(run: Any, tokenizer: Any, split: str, folder: Path) -> OwnTask:
    """``peftlab``: the run's task's ``split`` as an lm-eval task in ``folder``."""
    from peftlab.data.conversations import render
    from peftlab.data.formats import WHERE, conversation
    from peftlab.data.sources import load_splits
    from peftlab.data.tokenize import PromptFormat
    from peftlab.tasks import make_task
    from peftlab.tasks.causal_lm import CausalLMTask

    if not isinstance(make_task(run.data, run=run), CausalLMTask):
        raise ConfigError(f"tasks: peftlab exports generation tasks scored by exact match; the run's task "
                          f"{run.data.name!r} is of data.task_type={run.data.task_type} (score it with peftlab-eval)")
    data = run.data
    fmt = PromptFormat.for_tokenizer(tokenizer, data.prompt_format, data.system_prompt)
    try:
        rows = load_splits(data)[split]
    except DataError as err:
        raise ConfigError(f"tasks: peftlab: {err}") from None
    docs, systems = [], set()
    for row in rows:
        system, prompt, answer = _single_turns(conversation(row, data), str(row.get(WHERE, "a record")))
        systems.add(system)
        doc = dict(question=prompt, answer=answer)
        if not fmt.use_chat:  # the plain instruction format, as peftlab renders the generation prompt
            turns = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": prompt}]
            doc["text"] = render(tokenizer, fmt, turns, add_generation_prompt=True)
        docs.append(doc)
    if fmt.use_chat and len(systems) > 1:
        raise ConfigError("tasks: peftlab: the records carry different system messages; lm-eval gives every "
                          "document of a task the same one (system_instruction)")
    name = f"peftlab_{_slug(data.name)}"
    config = {
        "task": name, "dataset_path": "parquet",
        "dataset_kwargs": {"data_files": {split: _write_parquet(folder / f"{name}.parquet", docs)}},
        "test_split": split, "output_type": "generate_until",
        "doc_to_text": "{{question}}" if fmt.use_chat else "{{text}}", "doc_to_target": "{{answer}}",
        "target_delimiter": "",
        # until: lm-eval adds the tokenizer's end token; generation also ends at the model's own end tokens
        "generation_kwargs": {"until": [], "max_gen_toks": data.max_new_tokens, "do_sample": False},
        "metric_list": [{"metric": "exact_match", "aggregation": "mean", "higher_is_better": True,
                         "regexes_to_ignore": STRIP}],
        "metadata": {"version": 1.0, "source": f"peftlab data={data.name}, split {split}, {len(docs)} records"},
    }
    _write_yaml(folder / f"{name}.yaml", config)
    return OwnTask(name=name, chat=fmt.use_chat, system=next(iter(systems)) if fmt.use_chat else None)


def write_text_task(run: Any, tokenizer: Any, folder: Path) -> OwnTask:
    """``peftlab_text``: the forgetting text's windows (the run's ``forgetting``, or its defaults)."""
    from peftlab.config.measure import ForgettingSchema
    from peftlab.engine.forgetting import read_text, windows

    spec = run.forgetting if getattr(run, "forgetting", None) is not None else ForgettingSchema()
    rows = windows(read_text(spec.text), tokenizer, spec.tokens, spec.window)
    docs = [{"text": tokenizer.decode(row.tolist())} for row in rows]
    name = "peftlab_text"
    config = {
        "task": name, "dataset_path": "parquet",
        "dataset_kwargs": {"data_files": {"test": _write_parquet(folder / f"{name}.parquet", docs)}},
        "test_split": "test", "output_type": "loglikelihood_rolling",
        "doc_to_text": "", "doc_to_target": "{{text}}",
        "metric_list": [{"metric": m, "aggregation": a, "higher_is_better": False} for m, a in (
            ("word_perplexity", "weighted_perplexity"), ("byte_perplexity", "weighted_perplexity"),
            ("bits_per_byte", "bits_per_byte"))],
        "metadata": {"version": 1.0, "source": f"peftlab forgetting.text={spec.text}: {len(docs)} windows of "
                                               f"{spec.window} tokens"},
    }
    _write_yaml(folder / f"{name}.yaml", config)
    return OwnTask(name=name, chat=False, system=None)


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in name)


def _write_parquet(path: Path, docs: list[dict[str, str]]) -> str:
    """Documents as parquet with string columns: a JSON reader would infer types (an answer
    ``2065-05-30`` would come back as a timestamp)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    columns = {key: pa.array([d[key] for d in docs], type=pa.string()) for key in docs[0]} if docs else {}
    pq.write_table(pa.table(columns), path)
    return str(path.resolve())


def _write_yaml(path: Path, config: dict[str, Any]) -> None:
    path.write_text(yaml.safe_dump(config, sort_keys=False, allow_unicode=True), encoding="utf-8")
