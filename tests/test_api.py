"""The Python API (peftlab.train, evaluate, merge, report): the commands' validation, folders and
results, from one process, called again and again."""

from __future__ import annotations

import json

import pytest
import yaml

import peftlab
from peftlab.errors import ConfigError

from conftest import run_cli

TINY = ["debug=tiny", "trainer.max_steps=4", "callbacks.checkpoint.every_n_train_steps=2",
        "callbacks.checkpoint.save_top_k=-1"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory, cache_dir):
    """Two runs, one after the other in this process."""
    root = tmp_path_factory.mktemp("api")
    first = peftlab.train([*TINY, f"hydra.run.dir={root / 'a'}"])
    second = peftlab.train([*TINY, "method=ia3", "merge_after=false", f"hydra.run.dir={root / 'b'}"])
    return root, first, second


def test_train_returns_what_it_writes(runs):
    root, first, second = runs
    for run, folder, method in ((first, root / "a", "lora"), (second, root / "b", "ia3")):
        assert run["run_dir"] == str(folder)
        written = json.loads((folder / "metrics.json").read_text())
        assert {k: v for k, v in run.items() if k != "run_dir"} == written
        assert written["method"] == method and written["status"] == "finished"
        assert written["overrides"][0] == "debug=tiny"  # as the command records them
    assert first["merge"]["passed"] and "merge" not in second


def test_the_folder_is_the_commands(runs):
    """.hydra/ and the log file as peftlab-train writes them: a folder a notebook started can be
    resumed from the command line."""
    root, _, _ = runs
    folder = root / "a"
    overrides = yaml.safe_load((folder / ".hydra" / "overrides.yaml").read_text())
    assert overrides == TINY  # the run's own; hydra.run.dir is in hydra.yaml, as Hydra writes them
    assert yaml.safe_load((folder / ".hydra" / "config.yaml").read_text())["method"]["name"] == "lora"
    assert "merged and verified" in (folder / "train.log").read_text()


def test_hydra_state_is_cleared_after_each_call(runs):
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig

    assert not HydraConfig.initialized() and not GlobalHydra.instance().is_initialized()


@pytest.mark.parametrize("overrides,message", [
    (["method.r=-1"], "method.r must be > 0, got -1"),
    (["method=nope"], "method=nope: no such config (available: "),
    (["trainer.max_steps=many"], "trainer.max_steps must be an integer, got 'many'"),
    (["-m", "seed=1,2"], "overrides: sweeps run from the command line (peftlab-train -m ...), one run per call here"),
])
def test_mistakes_raise_the_commands_one_line_message(overrides, message, tmp_path):
    with pytest.raises(ConfigError) as err:
        peftlab.train([*overrides, f"hydra.run.dir={tmp_path / 'run'}"])
    assert message in str(err.value) and "\n" not in str(err.value)
    assert not (tmp_path / "run").exists()


def test_a_finished_run_is_never_overwritten(runs):
    root, _, _ = runs
    before = (root / "a" / ".hydra" / "overrides.yaml").read_bytes()
    with pytest.raises(ConfigError, match="already holds a run"):
        peftlab.train(["debug=tiny", f"hydra.run.dir={root / 'a'}"])
    assert (root / "a" / ".hydra" / "overrides.yaml").read_bytes() == before


def test_evaluate_merge_and_report(runs, tmp_path):
    root, first, _ = runs
    ev = peftlab.evaluate(first["run_dir"], ["limit_batches=1", f"hydra.run.dir={tmp_path / 'eval'}"])
    assert ev["out_dir"] == str(tmp_path / "eval")
    assert {k: v for k, v in ev.items() if k != "out_dir"} == json.loads((tmp_path / "eval" / "eval.json").read_text())
    assert ev["method"] == "lora" and set(ev["metrics"]) >= {"exact_match", "loss"}
    merged = peftlab.merge(first["run_dir"], [f"out_dir={tmp_path / 'merged'}",
                                              f"hydra.run.dir={tmp_path / 'merge_log'}"])
    assert merged["passed"] and merged["out_dir"] == str(tmp_path / "merged")
    assert (tmp_path / "merged" / "merge_report.json").exists()
    rep = peftlab.report([first["run_dir"], root / "b"], [f"out_dir={tmp_path / 'report'}"])
    assert json.loads((tmp_path / "report" / "report.json").read_text()) == rep
    assert (tmp_path / "report" / "results.md").exists()


@pytest.mark.integration  # a kill and a resume through the console script: CI's integration run
def test_a_run_started_from_python_resumes_from_the_command_line(tmp_path, cache_dir):
    folder = tmp_path / "run"
    done = peftlab.train([*TINY, "merge_after=false", f"hydra.run.dir={folder}"])
    adapter = (folder / "adapter" / "adapter_model.safetensors").read_bytes()
    # as if killed after step 2: its later outputs gone
    for name in ("metrics.json", "adapter", "checkpoints/step-4.ckpt", "checkpoints/last.ckpt",
                 "test_predictions.jsonl"):
        path = folder / name
        path.unlink() if path.is_file() else __import__("shutil").rmtree(path)
    resumed = run_cli("peftlab-train", f"resume={folder}")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    again = json.loads((folder / "metrics.json").read_text())
    assert (folder / "adapter" / "adapter_model.safetensors").read_bytes() == adapter
    assert again["test"] == done["test"]


def test_the_functions_keep_their_names_after_the_modules_load():
    """peftlab.train is the function even once the command modules (peftlab.commands.*) and the
    engine's train module are imported."""
    import importlib
    import types

    for name in ("train", "merge", "report", "generate", "eval", "params"):
        importlib.import_module(f"peftlab.commands.{name}")
    importlib.import_module("peftlab.engine.train")
    for name in ("train", "evaluate", "merge", "report", "generate", "compose"):
        assert isinstance(getattr(peftlab, name), types.FunctionType), name
