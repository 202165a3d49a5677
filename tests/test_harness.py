"""``peftlab-harness``: lm-evaluation-harness's own model loading and generation score a run as
peftlab does (every greedy answer of the test split equal, and so the exact match), on the base with
``peft=`` the adapter, on a full fine-tuning run's model and on a merged folder; the general text as
rolling log-likelihood; the result is what ``peftlab-report scores=`` reads."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from conftest import FINISHED_RUN, compose, evaluate_cfg, run_cli, train

pytest.importorskip("lm_eval")


def _harness(run_dir: Path, out: Path, *extra: str) -> dict:
    from peftlab.engine.harness import harness_from_config

    return harness_from_config(compose([f"run_dir={run_dir}", *extra], config_name="harness"), out)


def _peftlab_predictions(run_dir: Path, out: Path) -> list[dict]:
    evaluate_cfg(compose([f"run_dir={run_dir}"], config_name="eval", run_dir=out))
    return [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]


def _samples(folder: Path, name: str) -> list[dict]:
    return [json.loads(line) for line in (folder / "samples" / name).read_text().splitlines()]


def _agrees(harness_dir: Path, report: dict, ours: list[dict]) -> None:
    """Every lm-eval answer equals peftlab's (stripped), each scored alike, and the means are equal."""
    theirs = _samples(harness_dir, "0-peftlab_dates.jsonl")
    assert len(theirs) == len(ours) == 8  # debug=tiny: data.max_eval_examples=8
    for mine, other in zip(ours, theirs, strict=True):
        assert other["response"].strip() == mine["prediction"] and other["target"] == mine["reference"]
        assert other["exact_match"] == float(mine["correct"])
    row = next(r for r in report["runs"] if r["task"] == "peftlab_dates")
    assert row["metrics"]["exact_match"] == pytest.approx(sum(m["correct"] for m in ours) / len(ours))


@pytest.mark.integration
def test_lm_eval_answers_the_test_split_as_peftlab_does(tmp_path, finished_run):
    ours = _peftlab_predictions(finished_run, tmp_path / "eval")
    report = _harness(finished_run, tmp_path / "harness", "tasks=[peftlab,peftlab_text]")
    _agrees(tmp_path / "harness", report, ours)
    text = next(r for r in report["runs"] if r["task"] == "peftlab_text")
    assert text["documents"] == 16  # forgetting's 4,096 tokens in windows of 256
    assert text["metrics"]["bits_per_byte"] > 0 and text["metrics"]["word_perplexity"] > 1
    config = (tmp_path / "harness" / "tasks" / "0" / "peftlab_dates.yaml").read_text()
    assert "output_type: generate_until" in config and "!function" not in config  # data, never code

    # what peftlab-report scores= reads: the run gains scored.peftlab_dates.exact_match
    from peftlab.config.commands import ReportSchema
    from peftlab.reporting import write_report

    write_report([finished_run], tmp_path / "report", ReportSchema(plots=False, html=False,
                                                                   scores=[str(tmp_path / "harness")]))
    assert "scored.peftlab_dates.exact_match" in (tmp_path / "report" / "results.md").read_text()


@pytest.mark.integration
def test_a_merged_folder_and_a_full_fine_tuning_run_answer_alike(tmp_path, finished_run, cache_dir):
    from peftlab.export.merge import MergeOptions, merge_run
    from peftlab.runs.config import read_run_config

    ours = _peftlab_predictions(finished_run, tmp_path / "eval")
    merge_run(finished_run, read_run_config(finished_run), tmp_path / "merged", MergeOptions(verify_batches=1))
    report = _harness(finished_run, tmp_path / "harness", f"model_dir={tmp_path / 'merged'}")
    _agrees(tmp_path / "harness", report, ours)

    full = tmp_path / "full"
    full.mkdir()
    train(compose([*FINISHED_RUN, "method=full", "optim.lr=1e-3", "forgetting=null"], run_dir=full))
    ours = _peftlab_predictions(full, tmp_path / "eval_full")
    _agrees(tmp_path / "harness_full", _harness(full, tmp_path / "harness_full"), ours)


@pytest.mark.integration
def test_an_unknown_task_is_refused_before_any_model_loads(tmp_path, finished_run):
    proc = run_cli("peftlab-harness", f"run_dir={finished_run}", "tasks=[peftlab,no_such_task]",
                   f"hydra.run.dir={tmp_path / 'out'}")
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1] == (
        "peftlab-harness: error: tasks: lm-eval 0.4.13 has no task 'no_such_task' (its tasks: lm-eval ls tasks; "
        "peftlab's own: peftlab, peftlab_text)".replace("0.4.13", __import__("lm_eval").__version__))
    assert not (tmp_path / "out" / "eval.json").exists()


@pytest.mark.parametrize("overrides,message", [
    ([], "run_dir or runs= names what is scored (give one), got None"),
    (["run_dir=a", "runs=[b]"], "run_dir or runs= names what is scored (give one), got 'a'"),
    (["runs=[b]", "model_dir=m"], "model_dir needs run_dir= (the run whose merged model it is: its task and its "
                                  "records), got 'm'"),
    (["run_dir=a", "tasks=[peftlab,peftlab]"], "tasks names a task twice, got ['peftlab', 'peftlab']"),
    (["run_dir=a", "tasks=[]"], "tasks must name at least one task, got []"),
    (["run_dir=a", "limit=0"], "limit must be > 0 or null, got 0"),
    (["run_dir=a", "split=train"], "split must be one of val, test, got 'train'"),
])
def test_bad_options_are_refused_with_one_line(overrides, message):
    from peftlab.config import validate
    from peftlab.config.harness import HarnessSchema
    from peftlab.errors import ConfigError

    with pytest.raises(ConfigError) as err:
        validate(compose(overrides, config_name="harness"), HarnessSchema)
    assert str(err.value) == message


def test_without_lm_eval_the_command_says_what_to_install(tmp_path, monkeypatch):
    from peftlab.engine.harness import harness_from_config
    from peftlab.errors import ConfigError

    monkeypatch.setitem(sys.modules, "lm_eval", None)  # import lm_eval now raises ImportError
    with pytest.raises(ConfigError) as err:
        harness_from_config(compose([f"run_dir={tmp_path}"], config_name="harness"), tmp_path / "out")
    assert str(err.value) == ("tasks: peftlab-harness runs lm-evaluation-harness, which is not installed: "
                              "pip install 'peftlab[harness]' (lm-eval 0.4.x)")
    assert not (tmp_path / "out").exists()
