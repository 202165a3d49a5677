"""Selection on the validation split: validation measures what the test measures, the test split
scores the weights chosen (the last, or the best check's), and no sweeper that chooses is handed a
test-split objective unless the user says so."""

from __future__ import annotations

import csv
import json

import pytest
import torch
from safetensors.torch import load_file

from conftest import compose, evaluate_cfg, run_cli, train

BEST = ["debug=tiny", "model=tiny_bert", "data=reviews", "trainer.max_steps=8", "validation.select=best",
        "optim.lr=0.05", "zero_shot=false", "merge_after=false", "logger=csv", "forgetting=null",
        "callbacks.checkpoint.every_n_train_steps=2", "callbacks.checkpoint.save_top_k=-1"]


@pytest.fixture(scope="module")
def best_run(tmp_path_factory, cache_dir):
    from peftlab import api

    run_dir = tmp_path_factory.mktemp("select") / "best"
    return run_dir, api.train([*BEST, f"hydra.run.dir={run_dir}"])  # as the command writes it (.hydra/ too)


def _checks(run_dir):
    """(step, val accuracy, val loss) of every validation check during training, from the CSV log."""
    rows = list(csv.DictReader((run_dir / "logs" / "metrics.csv").open()))
    checks = [(int(r["step"]) + 1, float(r["val/accuracy"]), float(r["val/loss"])) for r in rows if r["val/accuracy"]]
    return checks[:-1]  # the last row is the validation after training, of the weights chosen


def test_the_best_checks_weights_are_the_ones_tested_and_saved(best_run, tmp_path):
    run_dir, m = best_run
    checks = _checks(run_dir)
    best = max(checks, key=lambda c: c[1])  # the first of equal scores
    assert [c[0] for c in checks] == [2, 4, 6, 8] and best[0] != 8, checks  # a check before the last is best
    assert m["selection"]["select"] == "best" and m["selection"]["step"] == best[0]
    assert m["selection"]["last_step"] == 8 and m["selection"]["metric"] == "val.accuracy"
    # the validation recorded is that check's, measured again on the weights put back
    assert m["val"]["accuracy"] == pytest.approx(best[1]) and m["val"]["loss"] == pytest.approx(best[2], rel=1e-5)
    # the saved adapter holds the best check's weights, not the last ones
    assert m["selection"]["checkpoint"] == str(run_dir / "checkpoints" / "best" / f"step-{best[0]}.safetensors")
    assert [p.name for p in (run_dir / "checkpoints" / "best").iterdir()] == [f"step-{best[0]}.safetensors"]
    chosen = load_file(m["selection"]["checkpoint"])  # the LightningModule's names, as in a checkpoint
    last = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    saved = load_file(run_dir / "adapter" / "adapter_model.safetensors")
    as_saved = {k.removeprefix("model.").replace(".modules_to_save.default.", ".").replace(".default.", "."): k
                for k in chosen}  # the checkpoint's names as peft saves them
    assert set(saved) <= set(as_saved)
    assert all(torch.equal(v, chosen[as_saved[k]]) for k, v in saved.items())
    assert not all(torch.equal(v, last[as_saved[k]]) for k, v in saved.items())
    # and the test split scored them: peftlab-eval of the saved run gives the recorded test metrics
    (tmp_path / "eval").mkdir()
    again = evaluate_cfg(compose([f"run_dir={run_dir}"], config_name="eval", run_dir=tmp_path / "eval"))
    assert again["metrics"]["accuracy"] == m["test"]["accuracy"]
    assert again["metrics"]["loss"] == pytest.approx(m["test"]["loss"], rel=1e-5)


def test_a_run_that_never_reads_the_test_split(tmp_path, cache_dir):
    run_dir = tmp_path / "search"
    run_dir.mkdir()
    m = train(compose(["debug=tiny", "test=false", "zero_shot=false", "merge_after=false", "logger=none"],
                      run_dir=run_dir))
    assert m["test"] is None and m["zero_shot"] is None and m["val"]["exact_match"] == 0.0
    assert m["objective"] == "val.exact_match" and not (run_dir / "test_predictions.jsonl").exists()


def test_the_default_objective_is_the_validation_metric_or_the_test_metric_without_validation():
    from peftlab.config import validate
    from peftlab.engine.train import objective_key
    from peftlab.tasks import make_task

    for overrides, expected in ((["model=tiny_llama"], "val.exact_match"),
                                (["model=tiny_bert", "data=reviews"], "val.accuracy"),
                                (["model=tiny_llama", "trainer.limit_val_batches=0"], "test.exact_match")):
        conf = validate(compose(overrides))
        assert objective_key(conf, make_task(conf.data)) == expected


TUNED_ON_TEST = ("objective=test.exact_match: the sweeper (OptunaSweeper) would choose by the test split, so the "
                 "test figures of what it chooses would be optimistic; optimise a validation metric (the default, "
                 "val.<primary metric>), or set tune_on_test=true to do it anyway")


def test_a_sweeper_that_chooses_is_refused_a_test_objective_before_any_job(tmp_path, cache_dir):
    sweep = tmp_path / "sweep"
    for objective in ("objective=test.exact_match", "trainer.limit_val_batches=0"):  # given, or the default
        proc = run_cli("peftlab-train", "-m", "sweep=optuna", "debug=tiny", objective, "hydra.sweeper.n_trials=1",
                       f"hydra.sweep.dir={sweep}")
        assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
        last = proc.stderr.strip().splitlines()[-1]
        expected = TUNED_ON_TEST if objective.startswith("objective") else "test.<primary metric> (the default"
        assert last.startswith("peftlab-train: error: ") and expected.split(" (")[0] in last, last
        assert not sweep.exists()  # no job started, nothing written


@pytest.mark.integration  # a whole sweep; the refusal is the fast test above
def test_tuning_on_the_test_split_is_allowed_when_said_and_recorded(tmp_path, cache_dir):
    sweep = tmp_path / "sweep"
    proc = run_cli("peftlab-train", "-m", "sweep=optuna", "hydra/launcher=basic", "debug=tiny", "trainer.max_steps=2",
                   "objective=test.loss", "hydra.sweeper.direction=minimize", "tune_on_test=true",
                   "hydra.sweeper.n_trials=1", "zero_shot=false", "merge_after=false", "forgetting=null",
                   "save_adapter=false", f"hydra.sweep.dir={sweep}")
    assert proc.returncode == 0, proc.stderr[-2000:]
    m = json.loads((sweep / "0" / "metrics.json").read_text())
    assert m["tune_on_test"] is True and m["objective"] == "test.loss"


def test_a_run_resumed_from_a_checkpoint_written_before_its_check_makes_that_check_and_chooses_alike(
        best_run, tmp_path):
    """A step checkpoint is written before that step's validation, and a fit resumed from it skips
    the validation: the run must make that check itself, or its choice could differ."""
    import shutil

    from peftlab import api

    full_dir, full = best_run
    killed = tmp_path / "killed"
    api.train([*BEST, f"hydra.run.dir={killed}"])  # the same run, then undone to how a kill after step 4 leaves it
    for done in ("metrics.json", "adapter", "test_predictions.jsonl", "logs"):  # a run killed after step 4
        shutil.rmtree(killed / done) if (killed / done).is_dir() else (killed / done).unlink()
    for late in ("step-6.ckpt", "step-8.ckpt", "last.ckpt"):
        (killed / "checkpoints" / late).unlink(missing_ok=True)
    for stale in (killed / "checkpoints" / "best").iterdir():
        stale.unlink()
    saved = torch.load(killed / "checkpoints" / "step-4.ckpt", weights_only=True)
    assert saved["callbacks"]["BestCheck"]["checks"] == {2: pytest.approx(full["selection"]["checks"]["2"])}
    again = api.train([f"resume={killed}"])
    assert again["selection"]["checks"] == full["selection"]["checks"]  # the check at step 4 was made
    assert (again["selection"]["step"], again["val"], again["test"]) == (full["selection"]["step"], full["val"],
                                                                         full["test"])
    assert (killed / "adapter" / "adapter_model.safetensors").read_bytes() == \
        (full_dir / "adapter" / "adapter_model.safetensors").read_bytes()
