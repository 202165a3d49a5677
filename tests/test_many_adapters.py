"""Many adapters of one base in one process (``peftlab-eval runs=``, models/adapters.py): the base
loads once, and every adapter scores exactly as its own separate evaluation does."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from conftest import compose, evaluate_cfg, run_cli, train

TINY = ["debug=tiny", "trainer.max_steps=4", "optim.lr=1e-2", "zero_shot=false", "logger=none", "merge_after=false",
        "forgetting=null"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory, cache_dir) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("many")
    spec = {"lora_dates": ["seed=1"], "lora_numbers": ["data=numbers", "seed=2", "method.r=2"],
            "ia3_dates": ["method=ia3", "seed=3"], "prompt_dates": ["method=prompt", "seed=4"],
            "full_dates": ["method=full", "seed=5"]}
    for name, extra in spec.items():
        (root / name).mkdir()
        train(compose([*TINY, *extra], run_dir=root / name))
    return {name: root / name for name in spec}


def evaluate(out: Path, *overrides: str) -> dict:
    return evaluate_cfg(compose(list(overrides), config_name="eval", run_dir=out))


def test_every_adapter_scores_as_its_separate_evaluation_with_each_base_loaded_once(runs, tmp_path):
    names = list(runs)
    many = evaluate(tmp_path / "many", f"runs=[{','.join(str(runs[n]) for n in names)}]")
    assert many["base_loads"] == 4  # LoRA x2 share a base; IA3, prompt tuning and the whole model load their own
    for i, name in enumerate(names):
        alone = evaluate(tmp_path / name, f"run_dir={runs[name]}", "model=tiny_llama")
        row = many["runs"][i]
        assert row["run_dir"] == str(runs[name]) and row["task"] == alone["task"]
        assert row["metrics"] == pytest.approx(alone["metrics"], rel=1e-6, abs=1e-5), name
        ours = [json.loads(line)["prediction"] for line in (tmp_path / "many" / "predictions" / f"{i}.jsonl").open()]
        theirs = [json.loads(line)["prediction"] for line in (tmp_path / name / "predictions.jsonl").open()]
        assert ours == theirs, name
    assert "| lora | numbers | exact_match |" in (tmp_path / "many" / "eval.md").read_text()


def test_a_sweep_folder_stands_for_its_finished_runs_and_data_scores_them_all_on_one_task(runs, tmp_path):
    sweep = tmp_path / "sweep"
    sweep.mkdir()
    (sweep / "multirun.yaml").write_text("hydra: {}\n")
    for i, name in enumerate(["lora_dates", "lora_numbers"]):
        shutil.copytree(runs[name], sweep / str(i))
    (sweep / "2").mkdir()  # a job that never finished: left out
    (sweep / "2" / "failed.json").write_text(json.dumps({"error": "killed"}))
    done = run_cli("peftlab-eval", f"runs=[{sweep}]", "data=numbers", "data.max_eval_examples=8",
                   f"hydra.run.dir={tmp_path / 'e'}")
    assert done.returncode == 0, done.stderr[-2000:]
    many = json.loads((tmp_path / "e" / "eval.json").read_text())
    assert [r["run_dir"] for r in many["runs"]] == [str(sweep / "0"), str(sweep / "1")]
    assert [r["task"] for r in many["runs"]] == ["numbers", "numbers"] and many["base_loads"] == 1


def test_runs_of_one_task_name_with_other_settings_are_scored_on_their_own(runs, tmp_path):
    """Two dates runs, one evaluating 8 test examples and one 4: each scored on its own split."""
    other = tmp_path / "fewer"
    shutil.copytree(runs["lora_dates"], other)
    text = (other / "config.yaml").read_text()
    assert "max_eval_examples: 8" in text
    (other / "config.yaml").write_text(text.replace("max_eval_examples: 8", "max_eval_examples: 4", 1))
    many = evaluate(tmp_path / "e", f"runs=[{runs['lora_dates']},{other}]")
    assert [r["examples"] for r in many["runs"]] == [8, 4] and many["base_loads"] == 1


def test_mixed_adapter_batches_route_each_row_through_its_own_adapter(runs, cache_dir):
    """peft's mixed batches (``AdapterBank.mixed``): row i through adapter i equals each adapter alone."""
    from peftlab.config import validate
    from peftlab.models.adapters import AdapterBank
    from peftlab.tasks import make_task

    conf = validate(compose(["model=tiny_llama"]))
    bank = AdapterBank(conf.model, cache_dir, make_task(conf.data))
    bank.add("a", runs["lora_dates"] / "adapter")
    bank.add("b", runs["lora_numbers"] / "adapter")
    assert bank.mixed_capable()
    ids = torch.tensor([[1, 15, 27, 99, 4, 8]] * 3)
    with torch.no_grad():
        with bank.mixed(["a", "__base__", "b"]) as model:
            mixed = model(input_ids=ids).logits
        alone = []
        for name in ("a", None, "b"):
            with bank.use(name) as model:
                alone.append(model(input_ids=ids[:1]).logits[0])
    torch.testing.assert_close(mixed, torch.stack(alone), rtol=1e-5, atol=1e-5)
    assert not torch.allclose(alone[0], alone[2])  # the rows did go through different adapters


@pytest.mark.integration  # each case through the console script: CI's integration run
def test_bad_runs_give_one_line_and_exit_2(runs, tmp_path):
    cases = [([f"runs=[{runs['lora_dates']}]", f"run_dir={runs['lora_dates']}"], "runs and run_dir exclude each other"),
             ([f"runs=[{tmp_path}]"], "is neither a finished peftlab-train run folder"),
             (["runs=[]"], "runs must name at least one folder"),
             ([f"runs=[{runs['lora_dates']}]", "hardware=gpu"], "hardware.accelerator must be cpu with runs=[...]"),
             ([f"runs=[{runs['lora_dates']}]", "limit_batches=2.5"],
              "limit_batches must be a share in (0, 1] or a whole number of batches, got 2.5"),
             ([f"runs=[{runs['lora_dates']}]", "limit_batches=0.01"], "limit_batches: 0.01 of 1 test batches is none"),
             ([f"runs=[{tmp_path / 'nowhere'}]"], "runs: "),
             ]
    for i, (args, message) in enumerate(cases):
        done = run_cli("peftlab-eval", *args, f"hydra.run.dir={tmp_path / f'out{i}'}")
        lines = done.stderr.strip().splitlines()
        assert done.returncode == 2 and len(lines) == 1 and message in lines[0], lines


def _sweep_of_fake_runs(root: Path) -> list[Path]:
    from conftest import fake_run

    runs = []
    for i, (method, seed) in enumerate([("lora", 1), ("lora", 2), ("ia3", 1), ("ia3", 2)]):
        runs.append(fake_run(root / "sweep" / str(i), [f"method={method}", f"seed={seed}"], {
            "method": method, "seed": seed, "primary_metric": "exact_match", "test": {"exact_match": 0.5, "loss": 1.0},
            "params": {"trainable": 1, "total": 2, "trainable_pct": 50.0}}))
    return runs


def test_the_report_aggregates_the_scores_of_a_many_adapter_evaluation(tmp_path):
    from peftlab.config.commands import ReportSchema
    from peftlab.reporting import write_report

    runs = _sweep_of_fake_runs(tmp_path)
    values = [0.25, 0.75, 0.5, 0.5]
    rows = [{"run_dir": str(r), "task": "numbers", "metrics": {"exact_match": v, "loss": 2.0}}
            for r, v in zip(runs, values, strict=True)]
    (tmp_path / "eval").mkdir()
    (tmp_path / "eval" / "eval.json").write_text(json.dumps({"split": "test", "runs": rows, "base_loads": 2}))
    options = ReportSchema(plots=False, html=False, scores=[str(tmp_path / "eval")],
                           equivalence={"scored.numbers.exact_match": 0.3})
    report = write_report([tmp_path / "sweep"], tmp_path / "report", options)
    md = (tmp_path / "report" / "results.md").read_text()
    assert "| setting | scored.numbers.exact_match | scored.numbers.loss |" in md
    assert "| method=lora | 0.5000 ± 0.3536 (2) | 2.0000 ± 0.0000 (2) |" in md
    assert "| method=ia3 | 0.5000 ± 0.0000 (2) |" in md
    assert {r["key"] for r in report["equivalence"]} == {"scored.numbers.exact_match"}


@pytest.mark.parametrize("content,message", [
    ('{"runs": 3}', "is not the eval.json of a peftlab-eval runs=[...] evaluation"),
    ('{"runs": [{"run_dir": "/elsewhere", "task": "numbers", "metrics": {}}]}', "scored none of the report's runs"),
    ('{"runs": [{"task": "numbers"}]}', "a row without run_dir, task and metrics"),
    ("{not json", "not readable"),
])
def test_scores_that_do_not_fit_the_report_are_refused_with_one_line(tmp_path, content, message):
    from peftlab.config.commands import ReportSchema
    from peftlab.errors import ConfigError
    from peftlab.reporting import write_report

    _sweep_of_fake_runs(tmp_path)
    (tmp_path / "eval").mkdir()
    (tmp_path / "eval" / "eval.json").write_text(content)
    with pytest.raises(ConfigError) as err:
        write_report([tmp_path / "sweep"], tmp_path / "report",
                     ReportSchema(plots=False, scores=[str(tmp_path / "eval")]))
    assert message in str(err.value) and "\n" not in str(err.value)
    assert not (tmp_path / "report").exists()
