"""The work of ``peftlab-generate`` and ``peftlab.generate()``: answers from a trained run, its
adapter on its base or its merged model. Prompts are formatted as the run trained (its chat template
and system prompt); generation is greedy unless ``do_sample=true``. Classification runs answer with
the label and its probability. Writes nothing unless ``out=`` names a file."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Iterator, Optional

from omegaconf import DictConfig

import peftlab.methods  # noqa: F401  (registers the method schemas a run folder's config names)
from peftlab.config import validate
from peftlab.config.commands import GenerateSchema
from peftlab.errors import ConfigError, DataError
from peftlab.runs.config import read_run_config
from peftlab.runs.files import write_jsonl
from peftlab.tasks import make_task

log = logging.getLogger("peftlab.generate")


class Talker:
    """A run's model, tokenizer and task (``run``: its validated config), loaded once, answering prompts."""

    def __init__(self, conf: GenerateSchema, run: Any):
        run_dir = Path(conf.run_dir)
        self.task = make_task(run.data)
        self.options = conf
        if conf.max_new_tokens is None:
            conf.max_new_tokens = run.data.max_new_tokens
        import lightning as L  # the heavy libraries, once the config is valid

        from peftlab.models import DTYPES, load_run_model, quiet_libraries

        quiet_libraries()  # the merged model loads without load_backbone
        L.seed_everything(conf.seed, workers=True, verbose=False)
        dtype = run.precision.dtype
        if conf.merged:
            merged = merged_model(run_dir)
            from transformers import AutoTokenizer

            self.model = self.task.auto_class().from_pretrained(merged, dtype=DTYPES[dtype], local_files_only=True,
                                                                **self.task.model_kwargs())
            self.tokenizer = AutoTokenizer.from_pretrained(merged)
        else:
            self.model, self.tokenizer = load_run_model(run.model, run_dir, conf.paths.cache_dir, self.task, dtype)
        self.model.eval()
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token

    def answer(self, prompts: list[str], streamer: Any = None) -> list[dict[str, Any]]:
        return self.task.answer(self.model, self.tokenizer, prompts, self.options, streamer)


def merged_model(run_dir: Path) -> Path:
    """``merged=true``: the run's verified merged model, which peftlab-merge must have written."""
    merged = Path(run_dir) / "merged"
    if not (merged / "config.json").is_file():
        raise ConfigError(f"merged: {merged} holds no merged model (peftlab-merge run_dir={run_dir} makes one)")
    return merged


def generate_inputs(conf: GenerateSchema, prompts: Optional[list[str]] = None) -> tuple[Any, Optional[list[str]]]:
    """(the run's validated config, the prompts: ``prompts``, or those of file= or prompt=; None for
    interactive=true), every input checked before a model loads."""
    run = read_run_config(Path(conf.run_dir), trust_remote_code=conf.trust_remote_code)
    if prompts is None and conf.file:
        prompts = read_prompts(conf.file, run.data.prompt_field)
    elif prompts is None and conf.prompt is not None:
        prompts = [conf.prompt]
    if conf.merged:
        merged_model(Path(conf.run_dir))
    return run, prompts


def read_prompts(path: str, field: str) -> list[str]:
    """Prompts of a .jsonl (each line an object with ``field`` or "prompt", or a string) or a
    text file (a prompt a line)."""
    file = Path(path).expanduser()
    if not file.is_file():
        raise DataError(f"file: no such file: {file}")
    prompts = []
    for n, line in enumerate(file.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        if file.suffix != ".jsonl":
            prompts.append(line)
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            raise DataError(f"{file} line {n}: malformed JSON") from None
        text = row if isinstance(row, str) else (row.get(field, row.get("prompt")) if isinstance(row, dict) else None)
        if not isinstance(text, str):
            raise DataError(f"{file} line {n}: no prompt (a string, or an object with {field!r})")
        prompts.append(text)
    if not prompts:
        raise DataError(f"file: {file} holds no prompt")
    return prompts


def _terminal_prompts() -> Iterator[str]:
    while True:
        try:
            line = input("> ")
        except EOFError:
            return
        if line.strip() in ("exit", "quit"):
            return
        if line.strip():
            yield line


def generate_from_config(cfg: DictConfig, prompts: Optional[list[str]] = None) -> list[dict[str, Any]]:
    """Run ``peftlab-generate``; with ``prompts`` (the Python API) answer those, printing nothing."""
    conf = validate(cfg, GenerateSchema)
    quiet = prompts is not None
    run, prompts = generate_inputs(conf, prompts)
    talker = Talker(conf, run)
    if prompts is None and conf.interactive:
        return _interactive(talker)
    answers = talker.answer(prompts)
    if conf.out:
        write_jsonl(Path(conf.out), answers)
        log.info("%d answers written to %s", len(answers), conf.out)
    elif not quiet:
        for a in answers:
            print(json.dumps(a, ensure_ascii=False) if conf.file else _line(a), flush=True)
    return answers


def _interactive(talker: Talker) -> list[dict[str, Any]]:
    """Prompts from the terminal until end of input (or exit); generated answers stream token by token."""
    from transformers import TextStreamer

    streamer = TextStreamer(talker.tokenizer, skip_prompt=True, skip_special_tokens=True) \
        if talker.task.generative else None
    answers: list[dict[str, Any]] = []
    for prompt in _terminal_prompts():
        answers += talker.answer([prompt], streamer)
        if streamer is None:
            print(_line(answers[-1]), flush=True)
    return answers


def _line(answer: dict[str, Any]) -> str:
    return answer["answer"] + (f" (p={answer['probability']:.4f})" if "probability" in answer else "")
