"""The forgetting metric: the loss on general text before and after training."""

from __future__ import annotations

import json
import statistics

import pytest
import torch
from scipy import stats

from peftlab.config import validate
from peftlab.data.sources import PROSE_DIR
from peftlab.engine.forgetting import Forgetting, mean_token_loss, read_text, window_losses, windows
from peftlab.errors import ConfigError

from conftest import build, compose, wrap


def test_the_shipped_text_is_named_and_small():
    text = read_text("builtin:botchan")
    assert text.startswith("CHAPTER I\nBecause of an hereditary recklessness")
    assert "Gutenberg" not in text  # the licence header and footer are removed
    assert len(text.encode()) < 300_000
    assert "EBook #8868" in (PROSE_DIR / "SOURCE.md").read_text()


def test_mean_token_loss_is_the_models_own_loss(tiny_backbone_factory):
    bb = tiny_backbone_factory("tiny_llama")
    rows = windows(read_text("builtin:botchan"), bb.tokenizer, tokens=1000, window=100)
    assert rows.shape == (10, 100)
    assert rows.flatten().tolist() == bb.tokenizer(read_text("builtin:botchan"), add_special_tokens=False
                                                   ).input_ids[:1000]
    with torch.no_grad():
        expected = bb.model(input_ids=rows, labels=rows).loss.item()  # every row is full: one mean
    assert mean_token_loss(bb.model, rows, batch_size=3) == pytest.approx(expected, rel=1e-5)


def test_a_fresh_adapter_forgets_nothing_and_training_moves_it(cache_dir):
    conf, task, bb = build(["model=tiny_llama", "method=lora"], cache_dir)
    meter = Forgetting(conf.forgetting, bb.tokenizer, bb.model)
    model = wrap(bb, conf.method, task)
    fresh = meter.record(model)
    assert fresh["delta"] == 0.0 and fresh["loss_before"] == fresh["loss_after"]
    assert fresh["tokens"] == conf.forgetting.tokens and fresh["window"] == 256
    assert fresh["delta_ci95"] == 0.0 and fresh["windows"] == 16
    for n, p in model.named_parameters():
        if "lora_B" in n:
            p.data.normal_(0, 0.05)
    moved = meter.record(model)
    assert moved["delta"] != 0.0
    # the interval over the windows: Student t on each window's change in loss
    changes = [a - b for a, b in zip(window_losses(model, meter.rows), meter.before, strict=True)]
    half = stats.t.ppf(0.975, 15) * statistics.stdev(changes) / 4
    assert moved["delta_ci95"] == pytest.approx(half, abs=2e-6) and moved["delta"] == pytest.approx(
        statistics.fmean(changes), abs=2e-6)


def test_bad_forgetting_settings_are_refused(tmp_path):
    """Before any work: the text is checked with the run's other preflight checks (engine/train.py)."""
    from peftlab.engine.train import checked

    with pytest.raises(ConfigError, match=r"^forgetting.text: no builtin text 'nope' \(builtin: botchan\)$"):
        checked(compose(["forgetting.text=builtin:nope"]))
    with pytest.raises(ConfigError, match=r"^forgetting.text: .*missing.txt is not a file"):
        checked(compose([f"forgetting.text={tmp_path / 'missing.txt'}"]))
    with pytest.raises(ConfigError, match=r"^forgetting.window must be > 1, got 1$"):
        validate(compose(["forgetting.window=1"]))
    (tmp_path / "short.txt").write_text("Too short.")
    with pytest.raises(ConfigError, match="fewer than one forgetting.window of 256"):
        windows(read_text(str(tmp_path / "short.txt")), _bytes_tokenizer(), tokens=4096, window=256)


def _bytes_tokenizer():
    class Bytes:
        def __call__(self, text, add_special_tokens=False):
            return type("Encoded", (), {"input_ids": list(text.encode())})

    return Bytes()


def test_a_training_run_records_forgetting_and_the_report_shows_it(tmp_path):
    from peftlab.config.commands import ReportSchema
    from peftlab.reporting import write_report

    from conftest import train

    run_dir = tmp_path / "run"
    cfg = compose(["model=tiny_llama", "data=dates", "data.max_eval_examples=8", "trainer.max_steps=4",
                   "trainer.val_check_interval=4", "trainer.enable_progress_bar=false", "callbacks.checkpoint=null",
                   "logger=none", "optim.lr=1e-2", "merge_after=false", "forgetting.tokens=512",
                   "forgetting.window=128"], run_dir=run_dir)
    run_dir.mkdir()
    metrics = train(cfg)
    f = json.loads((run_dir / "metrics.json").read_text())["forgetting"]
    assert f == metrics["forgetting"] and f["tokens"] == 512 and f["window"] == 128
    assert f["delta"] == pytest.approx(f["loss_after"] - f["loss_before"], abs=2e-6) and f["delta"] != 0
    assert metrics["adapter_mb"] > 0
    write_report([run_dir], tmp_path / "report", ReportSchema(plots=False))
    table = (tmp_path / "report" / "results.md").read_text()
    assert "| adapter MiB |" in table and "| forgetting (Δ loss, mean ± std) |" in table
    assert f"| {f['delta']:.3f} |" in table


def test_classification_runs_record_no_forgetting(tmp_path):
    from conftest import train

    run_dir = tmp_path / "run"
    cfg = compose(["model=tiny_bert", "data=reviews", "data.max_eval_examples=8", "trainer.max_steps=2",
                   "trainer.val_check_interval=2", "trainer.enable_progress_bar=false", "callbacks.checkpoint=null",
                   "logger=none", "merge_after=false"], run_dir=run_dir)
    run_dir.mkdir()
    assert train(cfg)["forgetting"] is None
