"""A real CLI training run on the tiny model, and what it leaves in the run folder."""

from __future__ import annotations

import json

import pytest
import torch

from conftest import run_cli

METRIC_KEYS = {"model", "method", "task", "seed", "params", "zero_shot", "test", "train", "memory", "versions",
               "task_type", "primary_metric", "objective"}


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, cache_dir):
    run_dir = tmp_path_factory.mktemp("runs") / "tiny"
    proc = run_cli("peftlab-train", "debug=tiny", "trainer.max_steps=8", "optim.lr=5e-3",
                   "callbacks.checkpoint.every_n_train_steps=4", f"hydra.run.dir={run_dir}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return run_dir, proc


def test_run_folder_layout(tiny_run):
    run_dir, _ = tiny_run
    for name in (".hydra/config.yaml", ".hydra/overrides.yaml", "config.yaml", "metrics.json",
                 "adapter/adapter_config.json", "adapter/adapter_model.safetensors", "adapter/tokenizer.json",
                 "checkpoints/last.ckpt", "logs/metrics.csv", "test_predictions.jsonl"):
        assert (run_dir / name).exists(), name
    assert not list(run_dir.glob(".*.tmp-*"))


def test_metrics_json_contract(tiny_run):
    m = json.loads((tiny_run[0] / "metrics.json").read_text())
    assert METRIC_KEYS <= set(m)
    assert (m["model"], m["method"], m["task"], m["seed"]) == ("tiny_llama", "lora", "dates", 42)
    assert set(m["params"]) == {"trainable", "total", "trainable_pct"}
    assert 0 < m["params"]["trainable"] < m["params"]["total"]
    assert {"exact_match", "loss", "perplexity"} <= set(m["test"]) and set(m["zero_shot"]) == set(m["test"])
    assert m["train"]["steps"] == 8 and m["train"]["wall_s"] > 0 and m["train"]["tokens_per_s"] > 0
    t = m["train"]  # real and padded token slots per batch (batches grouped by length by default)
    assert t["group_by_length"] and 0 < t["real_tokens_per_batch"] <= t["padded_tokens_per_batch"]
    assert t["tokens"] == pytest.approx(t["real_tokens_per_batch"] * 8, abs=1)
    assert t["padding_share"] == pytest.approx(1 - t["real_tokens_per_batch"] / t["padded_tokens_per_batch"], abs=1e-3)
    assert t["padding_share"] < 0.05
    assert m["memory"]["peak_rss_mb"] > 0
    weights = tiny_run[0] / "adapter" / "adapter_model.safetensors"
    assert m["adapter_mb"] == round(weights.stat().st_size / 2**20, 3) > 0
    assert {"python", "torch", "transformers", "peft", "lightning", "peftlab", "git_commit"} <= set(m["versions"])
    assert m["overrides"][0] == "debug=tiny"
    assert (m["task_type"], m["primary_metric"], m["objective"]) == ("causal_lm", "exact_match", "val.exact_match")
    # validation measures what the test split measures, on the weights tested (the last ones)
    assert set(m["val"]) == set(m["test"]) and m["selection"] == {"select": "last", "step": 8}
    assert m["tune_on_test"] is False


def test_training_lowers_the_test_loss(tiny_run):
    m = json.loads((tiny_run[0] / "metrics.json").read_text())
    assert m["test"]["loss"] < m["zero_shot"]["loss"]


def test_checkpoint_holds_trainable_weights_and_optimizer_state_only(tiny_run):
    ckpt = torch.load(tiny_run[0] / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    keys = set(ckpt["state_dict"])
    assert keys and all(".lora_A." in k or ".lora_B." in k for k in keys)
    assert len(ckpt["optimizer_states"][0]["state"]) == len(keys)
    assert ckpt["global_step"] == 8


def test_adapter_names_a_base_plain_transformers_loads(tiny_run):
    from transformers import AutoModelForCausalLM

    config = json.loads((tiny_run[0] / "adapter" / "adapter_config.json").read_text())
    base = AutoModelForCausalLM.from_pretrained(config["base_model_name_or_path"])
    assert base.config.model_type == "llama"


def test_an_existing_run_folder_is_never_overwritten(tiny_run, tmp_path):
    run_dir, _ = tiny_run
    before = (run_dir / "metrics.json").read_bytes()
    hydra_before = (run_dir / ".hydra" / "config.yaml").read_bytes()
    proc = run_cli("peftlab-train", "debug=tiny", f"hydra.run.dir={run_dir}")
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1] == (
        f"peftlab-train: error: hydra.run.dir: {run_dir} already holds a run (metrics.json, adapter); "
        "it is never overwritten, pick another folder")
    assert (run_dir / "metrics.json").read_bytes() == before
    assert (run_dir / ".hydra" / "config.yaml").read_bytes() == hydra_before


def test_eval_reproduces_the_test_metrics(tiny_run, tmp_path):
    run_dir, _ = tiny_run
    out = tmp_path / "eval"
    proc = run_cli("peftlab-eval", f"run_dir={run_dir}", "data.max_eval_examples=8", f"hydra.run.dir={out}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    trained = json.loads((run_dir / "metrics.json").read_text())["test"]
    evaluated = json.loads((out / "eval.json").read_text())["metrics"]
    assert evaluated["exact_match"] == trained["exact_match"]
    assert evaluated["loss"] == pytest.approx(trained["loss"], rel=1e-4)


@pytest.mark.skipif(not __import__("pathlib").Path("/proc/self/clear_refs").exists(), reason="Linux only")
def test_peak_rss_is_per_job():
    """Jobs of a sequential sweep share one process: each must report its own peak memory, not the
    largest of the jobs before it."""
    import gc

    from peftlab.runs.memory import peak_rss_mb, reset_peak_rss

    # many small tensors live on the heap, which glibc keeps after they are freed unless trimmed
    small = [torch.ones(100_000) for _ in range(2000)]  # 800 MB
    high = peak_rss_mb()
    del small
    gc.collect()
    assert reset_peak_rss()
    assert peak_rss_mb() < high - 600


# --- in-process runs: the debug modes, resuming, evaluating a base model and a val split ---------
TINY = ["debug=tiny", "zero_shot=false", "merge_after=false", "logger=none"]


def run_in_process(tmp_path, name, *overrides, base=TINY):
    from conftest import compose, train

    run_dir = tmp_path / name
    run_dir.mkdir()
    return run_dir, train(compose([*base, *overrides], run_dir=run_dir))


def test_fast_dev_run_goes_through_everything_and_saves_nothing(tmp_path, cache_dir):
    run_dir, metrics = run_in_process(tmp_path, "fdr", "debug=fdr", "model=tiny_llama", "data.max_length=384",
                                      base=[])
    assert set(metrics) == {"test"} and metrics["test"]["loss"] > 0
    assert not (run_dir / "metrics.json").exists() and not (run_dir / "adapter").exists()
    assert not list(run_dir.glob("checkpoints/*"))


def test_resume_from_a_checkpoint_continues_the_run(tmp_path, cache_dir):
    first, _ = run_in_process(tmp_path, "first", "trainer.max_steps=4", "callbacks.checkpoint.every_n_train_steps=2",
                              "callbacks.checkpoint.save_top_k=-1")
    ckpt = first / "checkpoints" / "step-2.ckpt"
    assert ckpt.exists()
    resumed, metrics = run_in_process(tmp_path, "resumed", "trainer.max_steps=4", f"resume_from={ckpt}",
                                      "logger=csv")
    assert metrics["train"]["steps"] == 4
    import csv

    steps = [int(row["step"]) for row in csv.DictReader(open(resumed / "logs" / "metrics.csv"))]
    assert steps and min(steps) >= 2  # it went on from step 2; it did not start over


def test_resume_from_trains_at_this_runs_learning_rate_and_says_so(tmp_path, cache_dir, caplog):
    """A new run from another run's checkpoint restores its optimizer state and schedule, but the
    learning rate is the new run's optim.lr (the checkpoint's would otherwise win, silently)."""
    import csv
    import logging

    common = ["trainer.max_steps=4", "logger=csv", "trainer.log_every_n_steps=1", "optim.scheduler=constant",
              "optim.warmup_ratio=0"]
    first, _ = run_in_process(tmp_path, "first", *common, "optim.lr=1e-3", "callbacks.checkpoint.every_n_train_steps=2",
                              "callbacks.checkpoint.save_top_k=-1")
    with caplog.at_level(logging.INFO, logger="peftlab"):
        again, _ = run_in_process(tmp_path, "again", *common, "optim.lr=5e-2",
                                  f"resume_from={first / 'checkpoints' / 'step-2.ckpt'}")
    assert "resume_from: training at this run's learning rate optim.lr=0.05 (the checkpoint trained at 0.001)" \
        in caplog.text

    def lrs(run):
        rows = csv.DictReader(open(run / "logs" / "metrics.csv"))
        return {float(v) for row in rows for k, v in row.items() if k.startswith("lr-") and v}

    assert lrs(first) == {1e-3} and lrs(again) == {5e-2}


# the fast suite has this refusal in process (test_bad_inputs.py, "checkpoint of another rank"); the console
# script's own run of it is in CI's integration run
@pytest.mark.integration
def test_resume_from_a_checkpoint_of_another_rank_fails_with_one_line(tmp_path, cache_dir):
    first, _ = run_in_process(tmp_path, "first", "trainer.max_steps=2", "callbacks.checkpoint.every_n_train_steps=2")
    run_dir = tmp_path / "other"
    proc = run_cli("peftlab-train", *TINY, "method.r=4", f"resume_from={first / 'checkpoints' / 'last.ckpt'}",
                   f"hydra.run.dir={run_dir}")
    assert proc.returncode == 2, proc.stderr[-2000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("peftlab-train: error: resume_from: the checkpoint does not fit this run's trainable "
                           "parameters (28 of different shape, e.g. "), last
    assert "Traceback" not in proc.stderr and not run_dir.exists()


def test_eval_of_a_base_model_and_of_a_val_split(tiny_run, tmp_path, cache_dir):
    from conftest import compose, evaluate_cfg

    run_dir, _ = tiny_run
    trained = json.loads((run_dir / "metrics.json").read_text())
    (tmp_path / "base").mkdir()
    base = evaluate_cfg(compose(["model=tiny_llama", "data.max_eval_examples=8", "data.max_length=384"],
                                config_name="eval", run_dir=tmp_path / "base"))
    assert base["method"] is None
    assert base["metrics"]["loss"] == pytest.approx(trained["zero_shot"]["loss"], rel=1e-5)
    assert base["metrics"]["exact_match"] == trained["zero_shot"]["exact_match"]
    (tmp_path / "val").mkdir()
    val = evaluate_cfg(compose([f"run_dir={run_dir}", "split=val"], config_name="eval", run_dir=tmp_path / "val"))
    assert val["split"] == "val" and val["examples"] == 8
    # the run's validation measured what peftlab-eval measures on the split, on the weights it saved
    assert val["metrics"]["loss"] == pytest.approx(trained["val"]["loss"], rel=1e-5)
    assert val["metrics"]["exact_match"] == trained["val"]["exact_match"]


def test_a_local_model_folder_with_a_tilde(tmp_path, cache_dir, monkeypatch):
    import shutil

    run_dir, _ = run_in_process(tmp_path, "base", "trainer.max_steps=1")
    base = json.loads((run_dir / "metrics.json").read_text())["base_model"]
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    shutil.copytree(base, tmp_path / "home" / "models" / "tiny")
    run_dir, metrics = run_in_process(tmp_path, "tilde", "model=hf", "model.name_or_path='~/models/tiny'",
                                      "trainer.max_steps=1")
    assert metrics["base_model"] == str(tmp_path / "home" / "models" / "tiny")
    assert metrics["model"] == "~/models/tiny"
