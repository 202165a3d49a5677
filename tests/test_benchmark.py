"""scripts/benchmark.py runs every route end to end (on the tiny model: the figures themselves come
from a quiet run on SmolLM2, BENCHMARKS.md) and its arithmetic is what it says."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import run_cli

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench") / "bench.json"
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "benchmark.py"), "--smoke", "--json", str(out)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(out.read_text()), proc.stdout


@pytest.mark.integration
def test_every_route_trains_the_same_examples_and_reports_its_figures(smoke):
    result, stdout = smoke
    routes = result["routes"]
    assert list(routes) == [f"{r}@fp32" for r in ("peftlab", "lean", "lean_packed", "trl", "peftlab_full",
                                                  "peftlab_ckpt")] + [
        f"{r}@bf16" for r in ("peftlab", "lean", "lean_packed", "trl", "trl_amp", "peftlab_full", "peftlab_ckpt")]
    for name, r in routes.items():
        assert r["steps"] == 3 and r["tokens"] > 0 and r["wall_s"] > 0 and r["peak_rss_mb"] > 100, name
        assert r["tokens_per_s"] == pytest.approx(r["tokens"] / r["wall_s"], rel=1e-3)
        peak = result["matmul_peak_gflops"][name.rsplit("@", 1)[1]]
        assert r["peak_share"] == pytest.approx(r["tokens_per_s"] * r["flops_per_token"] / 1e9 / peak, abs=2e-3)
    lora = {k: r for k, r in routes.items() if not k.startswith("peftlab_full")}
    assert len({r["trainable"] for r in lora.values()}) == 1  # the same adapter on every route
    assert len({r["params_total"] for r in lora.values()}) == 1
    for p in ("fp32", "bf16"):
        full = routes[f"peftlab_full@{p}"]
        assert full["trainable"] == full["params_total"] and full["flops_per_token"] == 6 * full["params_total"]
    assert routes["lean@fp32"]["flops_per_token"] == 4 * routes["lean@fp32"]["params_total"]
    ratios = result["ratios"]
    speed = {k: r["tokens_per_s"] for k, r in routes.items()}
    trl = {k: v for k, v in speed.items() if k.startswith("trl")}
    assert ratios["trl_fastest"] == max(trl, key=trl.get)
    default = f"peftlab@{result['default_precision']['benchmark']}"
    assert ratios["peftlab_default_over_trl_fastest"] == pytest.approx(speed[default] / max(trl.values()), rel=2e-3)
    assert ratios["peftlab_over_lean@bf16"] == pytest.approx(speed["peftlab@bf16"] / speed["lean@bf16"], rel=2e-3)
    assert ratios["lora_peak_rss_over_full@fp32"] == pytest.approx(
        routes["peftlab@fp32"]["peak_rss_mb"] / routes["peftlab_full@fp32"]["peak_rss_mb"], rel=2e-3)
    assert "| peftlab@bf16 |" in stdout and "peftlab_over_lean@fp32:" in stdout


def test_an_unknown_route_is_refused_in_one_line():
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "benchmark.py"), "--routes", "peftlab,fast"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    routes = "peftlab, lean, lean_packed, trl, trl_amp, peftlab_full, peftlab_ckpt"
    assert proc.stderr.strip() == f"--routes: unknown fast (choose from {routes})"


def test_a_packed_batch_has_the_loss_of_the_padded_batch(cache_dir):
    """Packing (one padding-free row, positions restarting per example) keeps attention within each
    example: its loss and its gradients are those of the padded batch."""
    import importlib.util

    import torch

    from peftlab.data.datamodule import TaskDataModule

    from conftest import build, wrap

    spec = importlib.util.spec_from_file_location("benchmark", ROOT / "scripts" / "benchmark.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    conf, task, bb = build(["model=tiny_llama", "data.max_length=384"], cache_dir)
    model = wrap(bb, conf.method, task).train()
    data = TaskDataModule(task, bb.tokenizer, seed=0)
    data.setup()
    examples = data.splits["train"][:6]
    assert len({len(e["input_ids"]) for e in examples}) > 1  # the padded batch does hold padding
    body, head = model.get_base_model().model, model.get_base_model().lm_head
    losses, grads = [], []
    for batch in (task.collator(bb.tokenizer, evaluation=False)(examples), bench.packed(examples)):
        model.zero_grad()
        loss = bench.lean_loss(body, head, batch)
        loss.backward()
        losses.append(loss.detach())
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters() if p.requires_grad]))
    assert torch.allclose(losses[0], losses[1], atol=1e-5), losses
    assert torch.allclose(grads[0], grads[1], atol=1e-5, rtol=1e-4)
    # without the restarting positions, the examples would attend to one another: a different loss
    joined = {**bench.packed(examples)}
    joined.pop("position_ids")
    assert not torch.allclose(bench.lean_loss(body, head, joined), losses[0], atol=1e-3)


@pytest.mark.integration
def test_the_launcher_benchmark_times_both_launchers_and_shows_each_jobs_peak(cache_dir):
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "benchmark_launcher.py"), "--jobs", "2"],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.splitlines()
    assert lines[1].startswith("  basic   (one process)") and lines[2].startswith("  process (one process a job)")
    assert lines[3].startswith("  one process per job costs ") and "x the sweep)" in lines[3]
    assert len(lines[4].split(":")[1].split(",")) == 2 and len(lines[5].split("process")[1].split(",")) == 2


@pytest.mark.integration
def test_the_many_adapters_benchmark_compares_both_routes_on_the_same_scores(cache_dir):
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "benchmark_many_adapters.py"), "--model",
                           "tiny_llama", "--adapters", "2", "--examples", "8", "--cache", str(cache_dir)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.splitlines()
    assert lines[1].startswith("  separate evaluations: ") and lines[2].startswith("  one base, adapters switched: ")
    assert lines[3].startswith("  time ratio separate/one base: ") and lines[3].endswith("the same test losses: True")
    assert lines[4].startswith("  forward of 8 rows per adapter: switched ")


@pytest.mark.integration
def test_the_rl_benchmark_runs_every_route_on_the_tiny_model(tmp_path, cache_dir):
    """Each route of scripts/benchmark_rl.py end to end (the figures come from SmolLM2 runs)."""
    reward = run_cli("peftlab-train", "debug=tiny", "data=date_prefs", "data.task_type=reward", "trainer.max_steps=2",
                     "merge_after=false", "zero_shot=false", "forgetting=null", f"hydra.run.dir={tmp_path / 'rm'}")
    assert reward.returncode == 0, reward.stderr[-3000:]
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "benchmark_rl.py"), "--model", "tiny_llama",
                           "--steps", "2", "--reward-model", str(tmp_path / "rm" / "adapter")],
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.splitlines()
    one_base = next(line for line in lines if line.startswith("| one_base | 0.00 MiB |"))
    assert float(one_base.split("|")[4].strip().rstrip("%")) < 100  # the reward model beside the policy: no base
    assert any(line.startswith("| separate |") for line in lines)
    assert any(line.startswith("| trl | ") for line in lines)
    assert lines[-1].startswith("peftlab's step rate over TRL's: ")
