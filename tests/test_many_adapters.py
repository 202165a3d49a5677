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


def test_bad_runs_give_one_line_and_exit_2(runs, tmp_path):
    cases = [([f"runs=[{runs['lora_dates']}]", f"run_dir={runs['lora_dates']}"], "runs and run_dir exclude each other"),
             ([f"runs=[{tmp_path}]"], "is neither a finished peftlab-train run folder"),
             (["runs=[]"], "runs must name at least one folder")]
    for i, (args, message) in enumerate(cases):
        done = run_cli("peftlab-eval", *args, f"hydra.run.dir={tmp_path / f'out{i}'}")
        lines = done.stderr.strip().splitlines()
        assert done.returncode == 2 and len(lines) == 1 and message in lines[0], lines
