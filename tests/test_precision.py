"""precision=bf16_base (the frozen base stored in bf16, the trained weights and optimizer state in
fp32, bf16 matmuls under autocast) and what precision=auto chooses: the stored dtypes of every
method, gradients only where training happens, a bitwise resume, the verified merge, the choice per
hardware (detection mocked) and per method."""

from __future__ import annotations

import dataclasses
import json
import shutil

import lightning as L
import pytest
import torch

import peftlab.methods  # noqa: F401  (registers the methods)
import peftlab.tasks  # noqa: F401  (the task types register: the cells ask which each method serves)
from peftlab.config.plugins import METHOD_SCHEMAS, served_task_types
from peftlab.engine import precision as P

from conftest import compose, train

CHECKPOINTED = ["debug=tiny", "trainer.max_steps=4", "optim.lr=1e-2", "zero_shot=false", "logger=none",
                "precision=bf16_base", "callbacks.checkpoint.every_n_train_steps=2"]
TINY = [*CHECKPOINTED[:-1], "callbacks.checkpoint=null"]
CELLS = [(m, "dates" if "causal_lm" in served_task_types(METHOD_SCHEMAS[m].capabilities) else "reviews")
         for m in sorted(METHOD_SCHEMAS) if METHOD_SCHEMAS[m].capabilities.bf16_base] + [
    ("lora", "reviews")]  # a classification head trains beside the adapter (a copy of a bf16 base module)


class LayoutProbe(L.Callback):
    """Records, before the first optimizer step, each trained or base parameter's dtype and its
    gradient's (a method's own frozen tensors, AdaLoRA's rank counters or VeRA's random
    projections, are neither)."""

    def __init__(self, base_ids: set[int]):
        self.base_ids, self.seen = base_ids, None

    def on_before_optimizer_step(self, trainer, module, optimizer):
        if self.seen is None:
            self.seen = [(n, p.dtype, p.requires_grad, None if p.grad is None else p.grad.dtype)
                         for n, p in module.model.named_parameters() if p.requires_grad or id(p) in self.base_ids]


# the fast suite: LoRA (causal LM and classification), IA3 and prompt tuning; CI's integration run every method
FAST_CELLS = {("lora", "dates"), ("lora", "reviews"), ("ia3", "dates"), ("prompt", "dates")}


@pytest.mark.parametrize("method,data", [c if c in FAST_CELLS else pytest.param(*c, marks=pytest.mark.integration)
                                         for c in CELLS])
def test_bf16_base_stores_the_base_in_bf16_and_trains_in_fp32(method, data, tmp_path, cache_dir):
    """The frozen base is bf16, every trained weight, its gradient and its AdamW moments fp32, no
    frozen weight gets a gradient, and the loss is finite."""
    from peftlab.engine.job import TrainingJob
    from peftlab.engine.train import checked

    extra = ["model=tiny_bert", "data=reviews"] if data == "reviews" else []
    cfg = compose([*TINY, f"method={method}", *extra, "trainer.max_steps=2"], run_dir=tmp_path)
    conf, task, objective = checked(cfg)
    job = TrainingJob(conf, cfg, tmp_path, task, objective)
    job.set_up()
    base = {id(p) for p in job.backbone.model.parameters()}  # the backbone's own weights, before wrapping
    job.apply_method()
    probe = LayoutProbe(base)
    trainer = L.Trainer(max_steps=2, precision=conf.precision.trainer, accelerator="cpu", logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, limit_val_batches=0,
                        callbacks=[probe], enable_model_summary=False)
    trainer.fit(job.module, datamodule=job.data)
    trained = [(n, d, g) for n, d, r, g in probe.seen if r]
    frozen = [(n, d, g) for n, d, r, g in probe.seen if not r]
    assert trained and frozen
    assert {d for _, d, _ in trained} == {torch.float32}, trained
    assert {g for _, _, g in trained} == {torch.float32}, "every trained weight has an fp32 gradient"
    assert {d for _, d, _ in frozen} == {torch.bfloat16}, [n for n, d, _ in frozen if d != torch.bfloat16]
    assert {g for _, _, g in frozen} == {None}, "a frozen weight got a gradient"
    moments = [t for state in trainer.optimizers[0].state.values() for k, t in state.items() if k != "step"]
    assert moments and {t.dtype for t in moments} == {torch.float32}
    loss = trainer.callback_metrics["train/loss"]
    assert torch.isfinite(loss) and loss.dtype == torch.float32  # the head's log-softmax in fp32


@pytest.mark.parametrize("reference", ["adapter_off", pytest.param("precomputed", marks=pytest.mark.integration)])
def test_dpo_on_a_bf16_base_starts_at_log_2(reference, tmp_path, cache_dir):
    """The reference (the same bf16 base with the adapter off, or log-probabilities computed before
    training) is computed as the policy is, so before training the policy is the reference: the
    DPO loss is log 2, and the log-ratios are exactly zero."""
    import math

    metrics = train(compose([*TINY, "data=date_prefs", "data.max_eval_examples=8", "preference=dpo",
                             f"preference.reference={reference}", "merge_after=false", "zero_shot=true"],
                            run_dir=tmp_path / "run"))
    assert metrics["status"] == "finished" and metrics["precision"]["name"] == "bf16_base"
    assert metrics["zero_shot"]["loss"] == pytest.approx(math.log(2), abs=1e-6)
    assert metrics["zero_shot"]["reward_margin"] == 0.0
    assert all(math.isfinite(v) for v in metrics["test"].values())


def test_a_bf16_base_run_learns_records_its_precision_and_merges_into_the_fp32_base(tmp_path, cache_dir):
    """The default merge exports the fp32 base with the adapter, verified exactly against the same
    adapter on the fp32 base; merge dtype=bfloat16 exports a bf16 model, verified as bf16 exports are."""
    from peftlab.export.merge import MergeOptions, merge_run
    from peftlab.runs.config import read_run_config

    run_dir = tmp_path / "run"
    metrics = train(compose([*TINY, "trainer.max_steps=12", "zero_shot=true"], run_dir=run_dir))
    assert metrics["precision"] == {"name": "bf16_base", "trainer": "bf16-mixed", "dtype": "bfloat16",
                                    "trainable_dtype": "float32", "quantize": None, "auto": None}
    assert metrics["test"]["loss"] < metrics["zero_shot"]["loss"]
    assert metrics["merge"]["passed"] and metrics["merge"]["max_abs_error_fp64"] < 1e-4
    report = json.loads((run_dir / "merge_report.json").read_text())
    assert report["dtype"] == "float32" and report["checks"]["reloaded"]["probes_identical"] == \
        report["checks"]["reloaded"]["probes"]
    from safetensors.torch import load_file

    merged = load_file(run_dir / "merged" / "model.safetensors")
    assert {t.dtype for t in merged.values()} == {torch.float32}
    adapter = load_file(run_dir / "adapter" / "adapter_model.safetensors")
    assert {t.dtype for t in adapter.values()} == {torch.float32}
    bf16 = merge_run(run_dir, read_run_config(run_dir), tmp_path / "bf16", MergeOptions(dtype="bfloat16"))
    assert bf16["passed"] and bf16["dtype"] == "bfloat16"
    assert {t.dtype for t in load_file(tmp_path / "bf16" / "model.safetensors").values()} == {torch.bfloat16}


def test_a_bf16_base_run_resumed_from_its_checkpoint_ends_bitwise_equal(tmp_path, cache_dir):
    common = [*CHECKPOINTED, "trainer.max_steps=6", "callbacks.checkpoint.save_top_k=-1", "merge_after=false"]
    first = tmp_path / "first"
    full = train(compose(common, run_dir=first))
    ckpt = torch.load(first / "checkpoints" / "step-4.ckpt", map_location="cpu", weights_only=True)
    assert {t.dtype for t in ckpt["state_dict"].values()} == {torch.float32}  # the adapter only, in fp32
    moments = [t for s in ckpt["optimizer_states"][0]["state"].values() for k, t in s.items() if k != "step"]
    assert {t.dtype for t in moments} == {torch.float32}
    again = tmp_path / "again"
    resumed = train(compose([*common, f"resume_from={first / 'checkpoints' / 'step-4.ckpt'}"], run_dir=again))
    assert resumed["test"] == full["test"] and resumed["train"]["steps"] == 6
    assert (again / "adapter" / "adapter_model.safetensors").read_bytes() == \
        (first / "adapter" / "adapter_model.safetensors").read_bytes()


# --- what auto chooses -------------------------------------------------------------------------------
@pytest.fixture
def hardware(monkeypatch):
    """Set what the detection reports: hardware(cpu=..., cuda=...), each a description or None."""

    def set_(cpu=None, cuda=None):
        monkeypatch.setattr(P, "cpu_bf16", lambda: cpu)
        monkeypatch.setattr(P, "cuda_bf16", lambda: cuda)
        monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda is not None)

    return set_


@pytest.mark.parametrize("method", sorted(METHOD_SCHEMAS))
def test_auto_follows_the_hardware_and_the_methods_capabilities(method, hardware):
    schema = METHOD_SCHEMAS[method]
    caps = schema.capabilities
    hardware(cpu=None, cuda=None)
    assert P.choose(schema, "cpu")[0] == "fp32"
    hardware(cpu="a CPU with AMX", cuda=None)
    assert P.choose(schema, "cpu")[0] == ("bf16_base" if caps.bf16_base and caps.bf16_auto else "fp32")
    assert P.choose(schema, "auto")[0] == P.choose(schema, "cpu")[0]  # no CUDA device: the CPU decides
    hardware(cpu="a CPU with AMX", cuda="a CUDA GPU with bf16")
    assert P.choose(schema, "gpu")[0] == ("bf16_base" if caps.bf16_base and caps.bf16_auto else "bf16")
    hardware(cpu="a CPU with AMX", cuda=None)
    assert P.choose(schema, "mps")[0] == "fp32"


@pytest.fixture
def lora_shown(monkeypatch):
    """LoRA's capabilities as if its bf16_base quality had been shown equivalent to fp32."""
    lora = METHOD_SCHEMAS["lora"]
    monkeypatch.setattr(lora, "capabilities", dataclasses.replace(lora.capabilities, bf16_auto=True))


def test_auto_keeps_fp32_on_a_bf16_cpu_until_the_method_is_shown_equivalent(hardware, monkeypatch):
    hardware(cpu="a CPU with AVX512-BF16 (oneDNN bf16)")
    lora = METHOD_SCHEMAS["lora"]
    assert P.choose(lora, "cpu") == ("fp32", "a CPU with AVX512-BF16 (oneDNN bf16), but method=lora is not shown "
                                             "equivalent to fp32 in bf16_base")
    assert P.choose(METHOD_SCHEMAS["full"], "cpu") == (
        "fp32", "a CPU with AVX512-BF16 (oneDNN bf16), but method=full trains the base itself")
    monkeypatch.setattr(lora, "capabilities", dataclasses.replace(lora.capabilities, bf16_auto=True))
    assert P.choose(lora, "cpu") == ("bf16_base", "a CPU with AVX512-BF16 (oneDNN bf16); method=lora is shown "
                                                  "equivalent to fp32 in this layout")
    hardware(cpu=None)
    assert P.choose(lora, "cpu") == ("fp32", "cpu without native bf16 matmuls")


def test_the_cpu_detection_needs_onednn_bf16_and_the_cpus_own_units(monkeypatch):
    monkeypatch.setattr(P.platform, "machine", lambda: "x86_64")
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: True, raising=False)
    for avx, amx, expected in ((True, False, "a CPU with AVX512-BF16 (oneDNN bf16)"),
                               (False, True, "a CPU with AMX (oneDNN bf16)"),
                               (True, True, "a CPU with AVX512-BF16 and AMX (oneDNN bf16)"),
                               (False, False, None)):  # AVX512 without bf16 units: oneDNN emulates, slower
        monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda v=avx: v, raising=False)
        monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda v=amx: v, raising=False)
        assert P.cpu_bf16() == expected
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: False, raising=False)
    assert P.cpu_bf16() is None


def test_auto_is_written_into_the_runs_config_and_metrics(tmp_path, cache_dir, hardware, lora_shown):
    from omegaconf import OmegaConf

    hardware(cpu="a CPU with AMX")
    run_dir = tmp_path / "run"
    metrics = train(compose([*TINY, "precision=auto", "merge_after=false"], run_dir=run_dir))
    assert metrics["precision"]["name"] == "bf16_base" and metrics["precision"]["auto"].startswith(
        "a CPU with AMX")
    saved = OmegaConf.load(run_dir / "config.yaml").precision
    assert (saved.name, saved.trainer, saved.dtype, saved.trainable_dtype) == (
        "bf16_base", "bf16-mixed", "bfloat16", "float32")
    hardware(cpu=None)
    cfg = P.resolve_auto(compose(["precision=auto", "method=lora"]))
    assert (cfg.precision.name, cfg.precision.trainer, cfg.precision.dtype, cfg.precision.trainable_dtype) == (
        "fp32", "32-true", "float32", None)
    assert cfg.precision.auto == "cpu without native bf16 matmuls"
    untouched = compose(["precision=bf16_true"])
    assert P.resolve_auto(untouched).precision.auto is None


def test_a_run_that_auto_put_in_bf16_does_not_resume_where_auto_chooses_fp32(tmp_path, cache_dir, hardware,
                                                                             lora_shown):
    """A resume re-resolves auto; on hardware that chooses otherwise the run's config no longer
    matches the one it started with, and the resume stops before any work."""
    from peftlab.errors import ConfigError

    hardware(cpu="a CPU with AMX")
    run_dir = tmp_path / "run"
    common = [*CHECKPOINTED, "precision=auto", "merge_after=false"]
    train(compose(common, run_dir=run_dir))
    (run_dir / "metrics.json").unlink()  # as if killed after its last checkpoint
    shutil.rmtree(run_dir / "adapter")
    hardware(cpu=None)
    resume = [*common, f"resume_from={run_dir / 'checkpoints' / 'last.ckpt'}"]
    with pytest.raises(ConfigError, match=r"the config differs from the one .* started with: precision\.auto "
                                          r"\('a CPU with AMX.*' then, 'cpu without native"):
        train(compose(resume, run_dir=run_dir))
    assert (run_dir / "checkpoints" / "last.ckpt").exists()  # nothing of the run was touched
    hardware(cpu="a CPU with AMX")
    assert train(compose(resume, run_dir=run_dir))["train"]["steps"] == 4  # where it chooses the same: resumed
