"""The loggers the README lists, offline: each holds the run's hyper-parameters and metrics, read
back with the logger's own reader where it has one."""

from __future__ import annotations

import json
import re

import pytest
import yaml

import peftlab

TINY = ["debug=tiny", "trainer.max_steps=4", "trainer.log_every_n_steps=1", "merge_after=false", "zero_shot=false"]


def _train(tmp_path, logger: str, *extra: str) -> tuple:
    folder = tmp_path / logger
    metrics = peftlab.train([*TINY, f"logger={logger}", *extra, f"hydra.run.dir={folder}"])
    return folder, metrics


def test_csv(tmp_path, cache_dir):
    folder, m = _train(tmp_path, "csv", "method.r=4")
    hparams = yaml.safe_load((folder / "logs" / "hparams.yaml").read_text())
    assert hparams["method"]["r"] == 4 and hparams["params"]["trainable"] == m["params"]["trainable"]
    rows = (folder / "logs" / "metrics.csv").read_text().splitlines()
    assert "train/loss" in rows[0] and "test/loss" in rows[0]


def test_tensorboard(tmp_path, cache_dir):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    folder, m = _train(tmp_path, "tensorboard", "method.r=4")
    events = EventAccumulator(str(folder / "tensorboard")).Reload()
    scalars = events.Tags()["scalars"]
    assert "train/loss" in scalars and "test/loss" in scalars
    assert events.Scalars("test/loss")[-1].value == pytest.approx(m["test"]["loss"], rel=1e-5)
    assert yaml.safe_load((folder / "tensorboard" / "hparams.yaml").read_text())["method"]["r"] == 4


def test_mlflow_local_file_store(tmp_path, cache_dir):
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient

    folder, m = _train(tmp_path, "mlflow", "method.r=4")
    client = MlflowClient(tracking_uri=f"file:{folder / 'mlruns'}")
    (experiment,) = [e for e in client.search_experiments() if e.name == "peftlab"]
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.data.params["method/r"] == "4"
    assert run.data.metrics["test/loss"] == pytest.approx(m["test"]["loss"], rel=1e-5)


def wandb_values(run_file, key: str) -> list:
    """Every JSON value recorded under ``key`` in an offline wandb run (config, history and summary
    items: a key, then protobuf field 16, value_json). wandb 0.31 has no Python reader of its own
    for run files, so this reads that field by hand."""
    data, out = run_file.read_bytes(), []
    for m in re.finditer(re.escape(key.encode()) + rb"\x82\x01", data):
        i, n, shift = m.end(), 0, 0
        while True:  # the value's length, a varint
            byte = data[i]
            n, i, shift = n | (byte & 0x7F) << shift, i + 1, shift + 7
            if byte < 0x80:
                break
        out.append(json.loads(data[i:i + n]))
    return out


def test_wandb_offline(tmp_path, cache_dir, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_SILENT", "true")
    folder, m = _train(tmp_path, "wandb", "method.r=4", "logger.wandb.offline=true")
    (run_file,) = (folder / "wandb").glob("offline-run-*/run-*.wandb")
    assert wandb_values(run_file, "method")[0]["r"] == 4
    assert wandb_values(run_file, "test/loss")[-1] == pytest.approx(m["test"]["loss"], rel=1e-5)
    # a second run in the same process is a run of its own, not more steps of the first
    second, _ = _train(tmp_path / "again", "wandb", "method.r=2", "logger.wandb.offline=true")
    (other,) = (second / "wandb").glob("offline-run-*/run-*.wandb")
    assert other.parent.name != run_file.parent.name and wandb_values(other, "method")[0]["r"] == 2
