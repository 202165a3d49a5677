"""Every shipped config composes and validates; bad values fail with the key and the value."""

from __future__ import annotations

import dataclasses
import json
import re
import sys
from pathlib import Path

import pytest

from peftlab.config import validate
from peftlab.config.commands import EvalSchema, TrainSchema
from peftlab.errors import ConfigError
from peftlab.methods import METHODS

from conftest import CONF, ROOT, compose, run_cli

# options that need a value the user must give
REQUIRED = {"model/hf": ["model.name_or_path=/some/folder"], "data/custom": ["data.path=/some/file.jsonl"],
            "experiment/rlhf": ["rl.reward_model=/some/reward_run/adapter"]}
GROUPS = ["model", "method", "data", "optim", "precision", "hardware", "trainer", "callbacks", "logger", "paths",
          "recipe", "experiment", "rl"]
# models that serve classification only are composed with the classification task
CLASSIFIERS = {"minilm_l6", "tiny_bert", "roberta_base", "roberta_large"}


def _options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


@pytest.mark.parametrize("group,option", [(g, o) for g in GROUPS for o in _options(g)])
def test_every_group_option_composes_and_validates(group, option):
    import torch

    overrides = [f"{group}={option}", *REQUIRED.get(f"{group}/{option}", [])]
    if group == "precision" and option.startswith("fp16"):
        overrides.append("hardware=gpu")
    if group == "model" and option in CLASSIFIERS:
        overrides.append("data=reviews")
    if "hardware=gpu" in overrides and not torch.cuda.is_available():  # composes; validation names the reason
        with pytest.raises(ConfigError, match="hardware.accelerator=gpu: this machine has no CUDA device"):
            validate(compose(overrides))
        return
    conf = validate(compose(overrides))
    assert isinstance(conf, TrainSchema)
    if group in ("method", "recipe"):
        assert conf.method.name == option


def test_debug_configs_set_what_they_promise():
    fdr = validate(compose(["debug=fdr"]))
    assert fdr.trainer.fast_dev_run is True and fdr.zero_shot is False
    tiny = validate(compose(["debug=tiny"]))
    assert tiny.model.name == "tiny_llama" and tiny.trainer.max_steps == 4 and tiny.trainer.val_check_interval == 2
    assert (tiny.trainer.limit_val_batches, tiny.trainer.limit_test_batches) == (1, 1)
    assert tiny.data.max_eval_examples == 8 and tiny.trainer.enable_progress_bar is False


def test_eval_config_composes():
    conf = validate(compose(config_name="eval"), EvalSchema)
    assert conf.split == "test" and conf.run_dir is None


def test_method_registry_matches_yaml_files():
    assert set(METHODS) == set(_options("method"))


def test_defaults_list_names_every_group():
    text = (CONF / "train.yaml").read_text()
    for group in [*GROUPS, "hydra", "experiment: null", "debug: null", "optional local"]:
        assert f"- {group}" in text, group


@pytest.mark.parametrize("overrides,message", [
    (["+method.rr=4"], "method.rr: unknown key for method 'lora'"),
    (["method.r=-1"], "method.r must be > 0, got -1"),
    (["method.lora_dropout=1.5"], "method.lora_dropout must be in [0, 1), got 1.5"),
    (["optim.lr=0"], "optim.lr must be a finite number > 0, got 0.0"),
    (["trainer.max_steps=-3"], "trainer.max_steps must be > 0 (or -1 for epochs), got -3"),
    (["+model.colour=red"], "model.colour: unknown key"),
    (["+foo=1"], "foo: unknown key"),
    (["method.target_modules=[]"], "method.target_modules must be 'all-linear' or a non-empty list"),
    (["trainer.limit_val_batches=1.5"], "trainer.limit_val_batches must be a count of batches"),
    (["precision=fp16"], "precision.trainer=16-mixed needs a GPU"),
    (["method=prompt", "method.init=text"], "method.init_text must be a non-empty text when method.init=text"),
    (["method=ptuning", "method.encoder_reparameterization_type=GRU"],
     "method.encoder_reparameterization_type must be one of MLP, LSTM, got 'GRU'"),
    (["method=prefix", "method.num_virtual_tokens=0"], "method.num_virtual_tokens must be > 0, got 0"),
    (["method=prefix", "method.init=text", "method.init_text=hello", "method.prefix_projection=true"],
     "method.prefix_projection must be false when method.init=text"),
    (["method=ia3", "method.target_modules=[k_proj]"],
     "method.feedforward_modules must be set together with method.target_modules"),
    (["model=minilm_l6"], "data.task_type=causal_lm (data=dates) does not fit model=minilm_l6, which serves seq_cls"),
    (["data=reviews", "data.task_type=translation"], "data.task_type must be one of causal_lm, seq_cls"),
])
def test_validate_rejects_bad_values(overrides, message):
    with pytest.raises(ConfigError) as err:
        validate(compose(overrides))
    assert message in str(err.value)
    assert "\n" not in str(err.value)


def test_validate_collects_every_problem_at_once():
    with pytest.raises(ConfigError) as err:
        validate(compose(["method.r=-1", "optim.lr=0"]))
    assert "method.r must be > 0" in str(err.value) and "optim.lr must be a finite number > 0" in str(err.value)


# --- the CLI: each bad override exits 2 with one line and leaves no run folder -------------------
CLI_CASES = {
    "method.rr=4": "method.rr: unknown key",
    "+method.rr=4": "method.rr: unknown key for method 'lora'",
    "method.r=-1": "method.r must be > 0, got -1",
    "method.r=abc": "method.r must be an integer, got 'abc'",
    "method=lorax": f"method=lorax: no such config (available: {', '.join(sorted(METHODS))})",
    "method.lora_dropout=1.5": "method.lora_dropout must be in [0, 1), got 1.5",
    "model=nope": "model=nope: no such config (available:",
    "trainer.max_steps=-3": "trainer.max_steps must be > 0 (or -1 for epochs), got -3",
    "optim.lr=0": "optim.lr must be a finite number > 0, got 0.0",
    "objective=test.exact_matc": "objective: 'test.exact_matc' is not a number this run reports (known: "
                                 "val.exact_match, val.loss, val.perplexity, test.exact_match, test.loss, "
                                 "test.perplexity, zero_shot.exact_match",
    "method.target_modules=[nonexistent]": "method.target_modules: no module named 'nonexistent' in the model "
                                           "(its targetable modules: down_proj, embed_tokens, gate_proj, k_proj, "
                                           "lm_head, o_proj, q_proj, up_proj, v_proj)",
}


# the fast suite runs three of them as console scripts (the matrix in test_bad_inputs.py runs them all in
# process); CI's integration run all of them
FAST_CLI = {"+method.rr=4", "method=lorax", "method.target_modules=[nonexistent]"}


@pytest.mark.parametrize("override", [o if o in FAST_CLI else pytest.param(o, marks=pytest.mark.integration)
                                      for o in CLI_CASES])
def test_cli_bad_override_fails_with_one_line(override, tmp_path, cache_dir):
    run_dir = tmp_path / "run"
    proc = run_cli("peftlab-train", "model=tiny_llama", override, f"hydra.run.dir={run_dir}")
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert "Traceback" not in proc.stderr
    assert lines[-1].startswith("peftlab-train: error: "), lines
    assert CLI_CASES[override] in lines[-1]
    assert [line for line in lines if "error" in line.lower()] == [lines[-1]]
    assert not Path(run_dir).exists() or not any(Path(run_dir).iterdir())


def launch_commands(experiment: str) -> list[list[str]]:
    """The launch command on the experiment file's first comment line (after the package line):
    one command, or several joined by ``&&``."""
    for line in (CONF / "experiment" / f"{experiment}.yaml").read_text().splitlines():
        if line.startswith("# peftlab-"):
            return [part.split() for part in line[2:].split("&&")]
    raise AssertionError(f"experiment/{experiment}.yaml has no launch command comment")


@pytest.mark.integration  # the claim experiments run theirs, with their own smaller sweeps, in tests/test_claims.py
@pytest.mark.parametrize("experiment", [e for e in _options("experiment") if not e.startswith("claim_")])
def test_every_experiment_runs_its_launch_command(experiment, tmp_path, cache_dir):
    """Training experiments run on the tiny model for one step; the others as they are. Folders
    under outputs/ go to a temporary folder."""
    commands = launch_commands(experiment)
    assert f"experiment={experiment}" in commands[-1]
    # a fair comparison: two groups, two settings each, two test seeds (its own seeds, never seed=)
    protocol = "tune_then_test" in (CONF / "experiment" / f"{experiment}.yaml").read_text()
    smaller = ["hydra.sweeper.params.recipe='lora,ia3'", "hydra.sweeper.search={optim.lr: 'x1,x3'}",
               "hydra.sweeper.test_seeds=[2,3]"] if protocol else ["seed=1"]
    for command in commands:
        command = [c.replace("=outputs/", f"={tmp_path}/") for c in command if not c.startswith("seed=")]
        if command[0] == "peftlab-train":
            command += ["debug=tiny", *smaller, "trainer.max_steps=1", "zero_shot=false", "merge_after=false",
                        "trainer.limit_test_batches=1", "trainer.limit_val_batches=1"]
        sweep = "-m" in command
        swept = tmp_path / "sweep"  # beside what the commands before it wrote
        proc = run_cli(*command, *([f"hydra.sweep.dir={swept}"] if sweep else []))
        assert proc.returncode == 0, proc.stderr[-3000:]
    result = "metrics.json" if command[0] == "peftlab-train" else "params.json"
    if sweep:
        jobs = sorted(p for p in swept.iterdir() if p.is_dir())
        assert len(jobs) > 1 and all((job / result).exists() for job in jobs)
        if protocol:  # 2 x 2 search jobs that never read the test split, then 2 x 2 test jobs
            record = json.loads((swept / "protocol.json").read_text())
            assert record["stage"] == "tested" and len(jobs) == 8
            assert all(len(g["search"]) == 2 and len(g["test_folders"]) == 2 for g in record["groups"])
            report = run_cli("peftlab-report", str(swept), "compare=true", "plots=false")
            assert report.returncode == 0, report.stderr[-3000:]
            assert "Selection on validation" in (swept / "report" / "results.md").read_text()
    else:
        run_dir = next(c.split("=", 1)[1] for c in command if c.startswith("hydra.run.dir="))
        assert (Path(run_dir) / result).exists()


# --- one source of defaults, and no field that nothing reads -------------------------------------
def test_method_yamls_set_no_value_the_schema_already_defaults():
    """A method's defaults live in its schema; its YAML only picks the schema (and may derive a
    value from the rest of the config, as AdaLoRA's total_step from trainer.max_steps). A copied
    default could drift from the schema's and leave two answers to "what is the default"."""
    import yaml

    stated = {}
    for path in sorted((CONF / "method").glob("*.yaml")):
        keys = {k: v for k, v in yaml.safe_load(path.read_text()).items() if k != "defaults"}
        assert set(keys) <= {f.name for f in dataclasses.fields(METHODS[path.stem].schema)}, path.name
        stated[path.stem] = {k: v for k, v in keys.items() if not (isinstance(v, str) and v.startswith("${"))}
    assert {m: v for m, v in stated.items() if v} == {}


def _unread_fields(classes, src_texts: dict) -> list[str]:
    """Fields no source file reads (outside their own class body): ``.name``, ``"name"``, or passed
    whole to peft through ``peft_kwargs(cfg, drop=...)`` in the schema's module."""
    import inspect

    unread = []
    for cls in classes:
        own = Path(inspect.getsourcefile(cls)).resolve()
        body = inspect.getsource(cls)
        texts = {p: t.replace(body, "") if p == own else t for p, t in src_texts.items()}
        module = sys.modules[cls.__module__]
        passed = set()
        for m in re.finditer(r"peft_kwargs\(cfg(?:, drop=([^)]*\)?))?\)", texts.get(own, "")):
            drop = m.group(1) or "()"
            drop = getattr(module, drop) if drop.isidentifier() else re.findall(r"[\"'](\w+)[\"']", drop)
            passed |= {f.name for f in dataclasses.fields(cls)} - set(drop)
        for f in dataclasses.fields(cls):
            read = re.compile(rf"\.{f.name}\b|[\"']{f.name}[\"']")
            if f.name not in passed and not any(read.search(t) for t in texts.values()):
                unread.append(f"{cls.__name__}.{f.name}")
    return unread


def _schema_classes():
    from peftlab.config import commands, harness, merge, rl, schema, trainer

    found = {c for mod in (schema, commands, trainer, merge, harness, rl) for c in vars(mod).values()
             if isinstance(c, type) and dataclasses.is_dataclass(c) and c.__module__ == mod.__name__}
    return sorted(found | {spec.schema for spec in METHODS.values()}, key=lambda c: c.__name__)


def test_every_schema_field_is_read_somewhere():
    src = {p.resolve(): p.read_text() for p in (ROOT / "src" / "peftlab").rglob("*.py")}
    classes = _schema_classes()
    assert len(classes) > 25
    assert _unread_fields(classes, src) == []


def test_the_unread_field_check_can_fail():
    from peftlab.config.schema import OptimSchema

    src = {p.resolve(): p.read_text() for p in (ROOT / "src" / "peftlab").rglob("*.py")}
    src = {p: re.sub(r"\.weight_decay\b|[\"']weight_decay[\"']", "", t) for p, t in src.items()}
    assert _unread_fields([OptimSchema], src) == ["OptimSchema.weight_decay"]
