"""The files ``peftlab init <folder>`` writes: a research project of one's own, outside peftlab, with
one method, one task type and one reward as plug-ins, and a conf/ overlay on Hydra's search path.
``{pkg}`` is the project's package name; everything else is written as it stands."""

from __future__ import annotations

PYPROJECT = '''\
[build-system]
requires = ["setuptools>=61"]
build-backend = "setuptools.build_meta"

[project]
name = "{pkg}"
version = "0.1.0"
description = "A research project on peftlab"
requires-python = ">=3.10"
dependencies = ["peftlab"]

# every peftlab command loads this module as it starts: its method, task type and reward register
[project.entry-points."peftlab.plugins"]
{pkg} = "{pkg}.plugin"

[tool.setuptools]
packages = ["{pkg}"]
package-dir = {{"" = "src"}}

[tool.setuptools.package-data]
{pkg} = ["conf/**/*.yaml"]
'''

PLUGIN = '''\
"""{pkg}'s additions to peftlab, registered as peftlab imports this module (the entry point in
pyproject.toml): a method, a task type, a reward, and the configs in conf/."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from peftlab.errors import ConfigError
from peftlab.plugins import (CausalLMTask, Capabilities, MethodSchema, register_config_dir, register_method,
                             register_task, reward)

register_config_dir(Path(__file__).parent / "conf")  # model=tiny_{pkg}, data={pkg}_sums, experiment={pkg}

NUMBER = re.compile(r"-?\\d+")


# ------------------------------------------------------------------------ a method: method={pkg}_qv
@dataclass
class QVLoraSchema(MethodSchema):
    """LoRA on the attention's query and value projections only (the LoRA paper's choice)."""

    name: str = "{pkg}_qv"
    r: int = 4
    alpha: int = 8
    target_modules: list = field(default_factory=lambda: ["q_proj", "v_proj"])

    def __post_init__(self) -> None:
        if self.r < 1:  # one line naming the key, as peftlab's own checks
            raise ConfigError(f"method.r must be >= 1, got {{self.r}}")


def build(cfg: QVLoraSchema, ctx: Any) -> Any:
    from peft import LoraConfig

    return LoraConfig(task_type=ctx.task.peft_task_type, r=cfg.r, lora_alpha=cfg.alpha,
                      target_modules=list(cfg.target_modules))


register_method("{pkg}_qv", QVLoraSchema, build, trains="low-rank updates of W_q and W_v",
                capabilities=Capabilities(mergeable=True, language_models_only=True))


# ------------------------------------------------------------- a task type: data.task_type={pkg}_numbers
@register_task
class NumberAnswers(CausalLMTask):
    """Causal LM whose exact match compares the first integer of the answer with the reference's, so
    that "The sum is 7." counts as 7."""

    name = "{pkg}_numbers"
    models_of = CausalLMTask.name  # every model that serves the task type it builds on serves this one
    probe_setup = None  # not part of peftlab's tuner probe

    def score_generations(self, model, tokenizer, batch, exact_match, generations=None):
        generations = self.probe(model, tokenizer, batch) if generations is None else generations
        return super().score_generations(model, tokenizer, batch, exact_match, [first_number(g) for g in generations])


@reward("brevity")
def brevity(prompts: list[str], completions: list[str], **kwargs: Any) -> list[float]:
    """Shorter answers score higher (TRL's calling convention: any function written for it works here)."""
    return [1.0 / (1 + len(c.split())) for c in completions]


def first_number(text: str) -> str:
    found = NUMBER.search(text)
    return found.group(0) if found else text.strip()


# ------------------------------------------------------------ a reward: rl.rewards={{{pkg}_number: 1.0}}
@reward("{pkg}_number")
def number_reward(prompts: list[str], completions: list[str], response: list[str], **kwargs: Any) -> list[float]:
    """1 when the completion's first integer is the answer (the data's ``response`` field), else 0."""
    return [float(first_number(c) == r.strip()) for c, r in zip(completions, response)]
'''

MODEL = '''\
# model=tiny_{pkg}: peftlab's random tiny Llama, narrower (for tests and smoke runs)
defaults:
  - tiny_llama
  - _self_

name: tiny_{pkg}
arch:
  hidden_size: 32
  intermediate_size: 64
'''

DATA = '''\
# data={pkg}_sums: "What is a plus b?" -> the sum, from data/sums.jsonl (run from the project folder)
defaults:
  - /schema/data/base@_here_
  - _self_

name: {pkg}_sums
path: data/sums.jsonl
task_type: {pkg}_numbers
max_new_tokens: 6
'''

EXPERIMENT = '''\
# @package _global_
# peftlab-train experiment={pkg}: the project's method on its task, on the tiny model
defaults:
  - override /model: tiny_{pkg}
  - override /method: {pkg}_qv
  - override /data: {pkg}_sums

trainer:
  max_steps: 30
'''

README = '''\
# {pkg}

A research project on [peftlab](https://pypi.org/project/peftlab/): a method (`method={pkg}_qv`),
a task type (`data.task_type={pkg}_numbers`), a reward (`rl.rewards={{{pkg}_number: 1.0}}`) and
configs (`model=tiny_{pkg}`, `data={pkg}_sums`, `experiment={pkg}`) in `src/{pkg}/`, found by every
peftlab command through the `peftlab.plugins` entry point once the project is installed
(`pip install -e .`).

```
peftlab-train experiment={pkg}     # train the project's method on its task; outputs/runs/<stamp>/
python -m pytest -q tests          # the project's tests
```

Online RL with the project's reward:
`peftlab-train experiment={pkg} data.task_type=rl rl=grpo 'rl.rewards={{{pkg}_number: 1.0}}'`.
'''

TEST = '''\
"""The project's plug-ins, through peftlab's Python API on the tiny model."""

import peftlab


def test_the_method_trains_on_the_task(tmp_path):
    run = peftlab.train(["experiment={pkg}", "trainer.max_steps=4", "zero_shot=false", "forgetting=null",
                         "logger=none", f"hydra.run.dir={{tmp_path / 'run'}}",
                         f"paths.cache_dir={{tmp_path / 'cache'}}"])
    assert run["method"] == "{pkg}_qv" and run["task"] == "{pkg}_sums"
    assert 0.0 <= run["test"]["exact_match"] <= 1.0
'''

GITIGNORE = "outputs/\n*.egg-info/\n__pycache__/\n"


def sums(n: int = 400, seed: int = 0) -> str:
    """The project's example data: "What is a plus b?" -> "a + b", one JSON record a line."""
    import json
    import random

    rng = random.Random(seed)
    rows = [(rng.randint(0, 50), rng.randint(0, 50)) for _ in range(n)]
    return "".join(json.dumps(dict(prompt=f"What is {a} plus {b}?", response=str(a + b))) + "\n" for a, b in rows)


def files(pkg: str) -> dict[str, str]:
    """Every file of the project, by its path in the project folder."""
    templates = {
        "pyproject.toml": PYPROJECT, "README.md": README, ".gitignore": GITIGNORE,
        "src/{pkg}/__init__.py": '"""{pkg}: a research project on peftlab."""\n',
        "src/{pkg}/plugin.py": PLUGIN,
        "src/{pkg}/conf/model/tiny_{pkg}.yaml": MODEL,
        "src/{pkg}/conf/data/{pkg}_sums.yaml": DATA,
        "src/{pkg}/conf/experiment/{pkg}.yaml": EXPERIMENT,
        "tests/test_{pkg}.py": TEST,
    }
    return {path.format(pkg=pkg): text.format(pkg=pkg) for path, text in templates.items()} | {
        "data/sums.jsonl": sums()}
