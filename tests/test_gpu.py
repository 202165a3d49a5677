"""CUDA checks: mixed precision, a 4-bit base on the GPU, DDP over NCCL. They need a GPU and are
skipped without one (``make test-gpu`` runs them; ``make test`` leaves them out)."""

from __future__ import annotations

import json

import pytest
import torch

from conftest import compose, run_cli

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]
TINY = ["debug=tiny", "hardware=gpu", "trainer.max_steps=12", "optim.lr=1e-2", "logger=none",
        "callbacks.checkpoint=null"]


def train_tiny(tmp_path, *overrides):
    from conftest import train

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    return run_dir, train(compose([*TINY, *overrides], run_dir=run_dir))


@pytest.mark.parametrize("precision", ["bf16", "fp16", "auto", "bf16_base"])
def test_mixed_precision_trains_on_the_gpu(precision, tmp_path, cache_dir):
    if precision.startswith("bf16") and not torch.cuda.is_bf16_supported():
        pytest.skip("this GPU has no bf16")
    _, metrics = train_tiny(tmp_path, f"precision={precision}")
    assert metrics["test"]["loss"] < metrics["zero_shot"]["loss"]
    assert metrics["memory"]["peak_cuda_mb"] > 0


def test_qlora_on_the_gpu_merges_into_the_full_precision_base(tmp_path, cache_dir):
    dtype = "bfloat16" if torch.cuda.is_bf16_supported() else "float16"
    run_dir, metrics = train_tiny(tmp_path, "precision=nf4", f"precision.compute_dtype={dtype}")
    assert metrics["test"]["loss"] < metrics["zero_shot"]["loss"]
    report = json.loads((run_dir / "merge_report.json").read_text())
    assert report["passed"] and report["quantization"]["base"] == "nf4"


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA devices")
def test_ddp_over_nccl_equals_one_device(tmp_path, cache_dir):
    common = ["debug=tiny", "merge_after=false", "method.lora_dropout=0", "trainer.max_steps=6", "zero_shot=false",
              "hardware=gpu", "trainer.deterministic=false"]
    one, two = tmp_path / "one", tmp_path / "two"
    assert run_cli("peftlab-train", *common, "data.batch_size=8", f"hydra.run.dir={one}").returncode == 0
    proc = run_cli("peftlab-train", *common, "hardware=ddp", "hardware.devices=2", "data.batch_size=4",
                   f"hydra.run.dir={two}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    m1, m2 = (json.loads((d / "metrics.json").read_text()) for d in (one, two))
    assert m2["test"]["loss"] == pytest.approx(m1["test"]["loss"], rel=1e-3)
