"""The same command on one process, several processes (DDP, FSDP2) and several nodes (torchrun),
and on 8-bit / 4-bit bases: equal results where they must be equal, on CPUs with gloo."""

from __future__ import annotations

import csv
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import compose, run_cli

EXE = Path(sys.executable).parent
# dropout off: with it each process draws its own masks and the runs could not be equal
SAME = ["debug=tiny", "merge_after=false", "method.lora_dropout=0", "trainer.max_steps=6",
        "trainer.log_every_n_steps=1", "trainer.val_check_interval=6", "zero_shot=false", "data.max_eval_examples=7",
        "trainer.limit_test_batches=null"]


def losses(run_dir: Path) -> list[float]:
    return [float(r["train/loss"]) for r in csv.DictReader(open(run_dir / "logs" / "metrics.csv")) if r["train/loss"]]


def adapter(run_dir: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(run_dir / "adapter" / "adapter_model.safetensors")


@pytest.fixture(scope="module")
def one_process(tmp_path_factory, cache_dir):
    run_dir = tmp_path_factory.mktemp("dist") / "one"
    proc = run_cli("peftlab-train", *SAME, "data.batch_size=8", f"hydra.run.dir={run_dir}")
    assert proc.returncode == 0, proc.stderr[-2000:]
    return run_dir


@pytest.mark.parametrize("hardware", [["hardware=ddp_cpu"], ["hardware=fsdp", "hardware.accelerator=cpu"]],
                         ids=["ddp", "fsdp"])
@pytest.mark.integration
def test_two_processes_of_batch_b_equal_one_process_of_batch_2b(hardware, one_process, tmp_path, cache_dir):
    """Per step, both see the same 8 examples and average the loss over the same answer tokens;
    evaluation counts each of the 7 test examples once, though 7 does not divide by 2."""
    run_dir = tmp_path / "two"
    proc = run_cli("peftlab-train", *SAME, *hardware, "data.batch_size=4", f"hydra.run.dir={run_dir}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert losses(run_dir) == pytest.approx(losses(one_process), abs=1e-5) and len(losses(run_dir)) == 6
    a, b = adapter(run_dir), adapter(one_process)
    assert set(a) == set(b) and max(float((a[k] - b[k]).abs().max()) for k in a) < 1e-5
    m2, m1 = (json.loads((d / "metrics.json").read_text()) for d in (run_dir, one_process))
    assert m2["test"] == pytest.approx(m1["test"], rel=1e-6, abs=1e-5)  # perplexity ~240: relative
    # the KL to the base: the base's answers drawn alike on every process, the trained model read alike
    assert m2["kl_to_base"]["kl"] == pytest.approx(m1["kl_to_base"]["kl"], rel=1e-4, abs=1e-6)
    assert m1["kl_to_base"]["kl"] > 0
    predictions = [json.loads(line) for line in (run_dir / "test_predictions.jsonl").read_text().splitlines()]
    single = [json.loads(line) for line in (one_process / "test_predictions.jsonl").read_text().splitlines()]
    assert [p["reference"] for p in predictions] == [p["reference"] for p in single] and len(single) == 7
    # only the first process wrote: one run folder, no per-process logs or snapshots
    assert sorted(p.name for p in run_dir.glob("*.log")) == ["train.log"]


@pytest.mark.integration
def test_the_fsdp_adapter_loads_with_plain_peft(tmp_path, cache_dir):
    run_dir = tmp_path / "fsdp"
    proc = run_cli("peftlab-train", *SAME, "hardware=fsdp", "hardware.accelerator=cpu", f"hydra.run.dir={run_dir}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    # peftlab-eval loads it with PeftModel.from_pretrained on the plain base, in one process
    out = tmp_path / "eval"
    proc = run_cli("peftlab-eval", f"run_dir={run_dir}", "data.max_eval_examples=7", f"hydra.run.dir={out}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    trained = json.loads((run_dir / "metrics.json").read_text())["test"]
    assert json.loads((out / "eval.json").read_text())["metrics"] == pytest.approx(trained, rel=1e-6, abs=1e-5)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.integration
def test_two_nodes_of_one_process_under_torchrun(tmp_path, cache_dir):
    """torchrun on localhost, two nodes: Lightning reads the ranks from torchrun's environment; the
    first node's process writes the run folder."""
    run_dir = tmp_path / "nodes"
    common = ["--nnodes=2", "--nproc-per-node=1", "--master-addr=127.0.0.1", f"--master-port={_free_port()}",
              "--no-python", str(EXE / "peftlab-train"), *SAME, "hardware=multinode", "hardware.accelerator=cpu",
              "hardware.devices=1", f"hydra.run.dir={run_dir}"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    nodes = [subprocess.Popen([str(EXE / "torchrun"), f"--node-rank={rank}", *common], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for rank in (1, 0)]
    outputs = [n.communicate(timeout=600)[0] for n in nodes]
    assert [n.returncode for n in nodes] == [0, 0], outputs[1][-3000:] + outputs[0][-3000:]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["train"]["steps"] == 6 and (run_dir / "adapter" / "adapter_model.safetensors").exists()


@pytest.mark.integration  # a sweep of processes: CI's integration run
def test_a_distributed_job_under_a_local_sweep_launcher_is_refused(tmp_path, cache_dir):
    proc = run_cli("peftlab-train", "-m", "debug=tiny", "hardware=ddp_cpu", "seed=1,2", f"hydra.sweep.dir={tmp_path}")
    assert proc.returncode == 2 and not (tmp_path / "0").exists()  # refused before launching
    assert "hardware=ddp_cpu under -m with hydra/launcher=process: a distributed job needs 2 processes" in proc.stderr


# --- quantized bases -------------------------------------------------------------------------------
@pytest.mark.parametrize("precision", ["int8", "nf4"])
def test_lora_trains_on_a_quantized_base_and_merges_into_the_full_precision_one(precision, tmp_path, cache_dir):
    import bitsandbytes as bnb

    from conftest import train

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    metrics = train(compose(["debug=tiny", f"precision={precision}", "trainer.max_steps=12", "optim.lr=1e-2",
                             "logger=none", "callbacks.checkpoint=null"], run_dir=run_dir))
    assert metrics["test"]["loss"] < metrics["zero_shot"]["loss"]
    report = json.loads((run_dir / "merge_report.json").read_text())
    assert report["passed"] and report["quantization"]["base"] == precision
    # the merge is exact against the adapter on the full-precision base it merged into...
    assert report["checks"]["reloaded"]["max_abs_error_fp64"] <= 1e-4
    # ...and agrees with the adapter on the quantized base as closely as quantization lets the base itself
    q = report["quantization"]
    assert q["vs_quantized_adapter"]["top1_agreement"] >= q["min_top1"]
    assert "quantized base" in report["tolerance"]["why"]
    from transformers import AutoModelForCausalLM

    merged = AutoModelForCausalLM.from_pretrained(run_dir / "merged")
    assert not any(isinstance(m, (bnb.nn.Linear8bitLt, bnb.nn.Linear4bit)) for m in merged.modules())
    assert {p.dtype for p in merged.parameters()} == {torch.float32}


def test_weights_load_quantized_through_from_pretrained(cache_dir):
    import bitsandbytes as bnb

    from peftlab.config import validate
    from peftlab.models import load_backbone
    from peftlab.models.quantized import device_map, quantization_config
    from peftlab.tasks import make_task

    conf = validate(compose(["model=tiny_llama", "precision=nf4"]))
    bb = load_backbone(conf.model, cache_dir, make_task(conf.data), conf.precision.dtype,
                       quantization_config(conf.precision), device_map(conf.hardware))
    assert bb.model.config.quantization_config.load_in_4bit
    linear = bb.model.model.layers[0].self_attn.q_proj
    assert isinstance(linear, bnb.nn.Linear4bit) and linear.weight.quant_state.nested  # double quantization


@pytest.mark.parametrize("overrides,message", [
    (["method=full", "precision=int8"], "method=full cannot train on a quantized base (precision=int8)"),
    (["method=prefix", "precision=nf4", "hardware=fsdp"], "precision=nf4 does not combine with hardware.strategy=fsdp"),
])
def test_what_a_quantized_base_cannot_do_is_refused(overrides, message):
    from peftlab.config import validate
    from peftlab.errors import ConfigError

    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        validate(compose(overrides))


def test_precision_auto_is_fp32_on_cpus_and_bf16_mixed_where_the_gpu_has_bf16():
    from peftlab.config import validate
    from peftlab.engine.precision import trainer_precision

    conf = validate(compose(["precision=auto"]))
    expected = "bf16-mixed" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "32-true"
    assert trainer_precision(conf.precision, conf.hardware) == "32-true"  # hardware=cpu
    gpu = validate(compose(["precision=auto", "hardware=ddp"])).hardware  # accelerator auto
    assert trainer_precision(conf.precision, gpu) == expected
