"""peftlab-merge: the merged model equals the adapter model, is exported whole, and bad input
leaves nothing behind."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from peftlab.export.merge import MergeOptions, VerificationError, merge_run
from peftlab.methods import METHODS
from peftlab.runs.config import read_run_config

from conftest import USER_CACHE, compose, run_cli

TINY = ["debug=tiny", "trainer.max_steps=6", "optim.lr=1e-2", "zero_shot=false", "logger=none",
        "callbacks.checkpoint=null"]


def make_run(tmp_path: Path, name: str, *overrides: str, merge_after: bool = False) -> Path:
    from conftest import train

    run_dir = tmp_path / name
    run_dir.mkdir(parents=True)
    train(compose([*TINY, f"merge_after={str(merge_after).lower()}", *overrides], run_dir=run_dir))
    return run_dir


@pytest.fixture(scope="module")
def lora_run(finished_run):
    return finished_run


def no_leftovers(folder: Path) -> bool:
    return not list(folder.glob(".*.tmp-*"))


def test_compare_batch_by_batch_equals_over_all_positions():
    """The comparison streams the merged model's logits one batch at a time; its figures must be
    those of the same comparison over all positions at once."""
    from peftlab.export.verify import compare

    torch.manual_seed(0)
    ref = [{"all": torch.randn(n, 50) * 10, "answer": torch.randn(k, 50)} for n, k in ((30, 4), (17, 3))]
    oth = [{key: t + torch.randn_like(t) * 0.3 for key, t in r.items()} for r in ref]
    got = compare(ref, iter(oth))
    r_all, o_all = torch.cat([r["all"] for r in ref]), torch.cat([o["all"] for o in oth])
    r_ans, o_ans = torch.cat([r["answer"] for r in ref]), torch.cat([o["answer"] for o in oth])
    diff = (r_all - o_all).abs()
    assert got["max_abs_error"] == pytest.approx(float(diff.max()), rel=1e-6)
    assert got["rel_error"] == pytest.approx(float(diff.max() / r_all.abs().max()), rel=1e-6)
    assert got["top1_agreement"] == pytest.approx(float((r_ans.argmax(-1) == o_ans.argmax(-1)).float().mean()))
    assert got["top1_agreement_all_positions"] == pytest.approx(
        float((r_all.argmax(-1) == o_all.argmax(-1)).float().mean()))
    assert 0 < got["top1_agreement_all_positions"] < 1  # the check is not vacuous
    with pytest.raises(ValueError):  # a batch missing on either side is a bug, not a smaller sample
        compare(ref, iter(oth[:1]))


def test_fp32_merge_is_exact_and_reloads_with_plain_transformers(lora_run, tmp_path, cache_dir):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = tmp_path / "merged"
    (tmp_path / ".merged.tmp-killed").mkdir()  # what a killed merge leaves: removed by the next one
    (tmp_path / ".merged.tmp-killed" / "model.safetensors").write_bytes(b"half")
    report = merge_run(lora_run, read_run_config(lora_run), out)
    assert report["passed"] and report["dtype"] == "float32"
    for stage in ("in_memory", "reloaded"):
        c = report["checks"][stage]
        assert c["max_abs_error"] <= 1e-4 and c["top1_agreement"] == 1.0
    # the exported model's generation for every test example is the adapter's
    test_split = len((lora_run / "test_predictions.jsonl").read_text().splitlines())
    assert report["checks"]["reloaded"]["probes_identical"] == report["checks"]["reloaded"]["probes"] == test_split
    assert report["metrics"]["merged"]["exact_match"] == report["metrics"]["adapter"]["exact_match"]
    assert set(report["latency"]) == {"base_ms", "adapter_unmerged_ms", "merged_ms", "merged_over_base"}
    assert json.loads((out / "merge_report.json").read_text()) == json.loads(json.dumps(report))
    for name in ("model.safetensors", "config.json", "generation_config.json", "tokenizer.json", "chat_template.jinja"):
        assert (out / name).exists(), name
    assert no_leftovers(tmp_path)

    merged = AutoModelForCausalLM.from_pretrained(out).eval()
    assert not any("lora" in n for n, _ in merged.named_parameters())
    base = json.loads((lora_run / "adapter" / "adapter_config.json").read_text())["base_model_name_or_path"]
    adapter_model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), lora_run / "adapter").eval()
    tok = AutoTokenizer.from_pretrained(out)
    assert tok.chat_template
    ids = tok.apply_chat_template([{"role": "user", "content": "3 March 1998"}], add_generation_prompt=True,
                                  return_tensors="pt", return_dict=True)["input_ids"]
    with torch.no_grad():
        assert torch.allclose(merged(ids).logits, adapter_model(ids).logits, atol=1e-4)


# A random tiny model's outputs are nearly flat, so bf16 rounding flips the arg-max at a few percent
# of positions whatever the merge does; its bf16 checks use min_top1=0.9 (SmolLM2 below uses 0.99).
TINY_BF16_TOP1 = 0.9


def test_bf16_export_halves_the_size_and_agrees(lora_run, tmp_path):
    from safetensors import safe_open

    report = merge_run(lora_run, read_run_config(lora_run), tmp_path / "bf16", MergeOptions(dtype="bfloat16",
                       min_top1=TINY_BF16_TOP1))
    assert report["passed"] and report["checks"]["reloaded"]["top1_agreement"] >= TINY_BF16_TOP1
    with safe_open(str(tmp_path / "bf16" / "model.safetensors"), framework="pt") as f:
        assert {f.get_tensor(k).dtype for k in f.keys()} == {torch.bfloat16}
    fp32 = merge_run(lora_run, read_run_config(lora_run), tmp_path / "fp32")
    assert report["sizes_mb"]["merged"] < 0.6 * fp32["sizes_mb"]["merged"]


def test_a_run_trained_in_bf16_merges_in_bf16(tmp_path, cache_dir):
    run = make_run(tmp_path, "bf16", "precision=bf16_true")
    report = merge_run(run, read_run_config(run), tmp_path / "merged", MergeOptions(min_top1=TINY_BF16_TOP1))
    assert report["dtype"] == "bfloat16" and report["passed"]
    assert report["tolerance"]["max_abs"] is None


MERGEABLE = [[f"method={m}"] for m in sorted(METHODS) if METHODS[m].capabilities.mergeable]
# the fast suite merges LoRA, DoRA and IA3 (a vector tuner); CI's integration run every mergeable method
FAST_MERGES = {"method=lora", "method.use_dora=true", "method=ia3"}


@pytest.mark.parametrize("overrides", [o if o[0] in FAST_MERGES else pytest.param(o, marks=pytest.mark.integration)
                                       for o in [*MERGEABLE, ["method.use_dora=true"]]],
                         ids=lambda o: o[0])
def test_every_mergeable_method_merges_exactly(tmp_path, cache_dir, overrides):
    run = make_run(tmp_path, "run", *overrides)
    report = merge_run(run, read_run_config(run), tmp_path / "merged")
    # the gate: the merge's own error, in a float64 forward (fp32 forwards add rounding of their own:
    # FourierFT's scaled updates reach 1.6e-4 in fp32 on the tiny model)
    assert report["passed"] and report["checks"]["reloaded"]["max_abs_error_fp64"] <= 1e-4


def test_merge_after_training_records_the_merge(tmp_path, cache_dir):
    run = make_run(tmp_path, "run", merge_after=True)
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["merge"]["passed"] and metrics["merge"]["max_abs_error"] <= 1e-4
    assert (run / "merged" / "model.safetensors").exists() and (run / "merge_report.json").exists()


def test_merge_after_a_test_of_some_batches_checks_the_whole_split(tmp_path, cache_dir):
    """trainer.limit_test_batches tests part of the split: the merge then evaluates the adapter on
    the whole split itself, and the export is checked on every test example."""
    run = make_run(tmp_path, "run", "data.eval_batch_size=4", "trainer.limit_test_batches=1", merge_after=True)
    assert len((run / "test_predictions.jsonl").read_text().splitlines()) == 4
    report = json.loads((run / "merge_report.json").read_text())
    assert report["passed"] and report["checks"]["reloaded"]["probes"] == 8


def test_failed_verification_leaves_nothing(lora_run, tmp_path, monkeypatch):
    import peftlab.export.merge as merge
    from peftlab.export.verify import Tolerance

    strict = Tolerance(max_abs=-1.0, min_top1=1.0, metric_slack=0.0)
    monkeypatch.setattr(merge, "tolerance", lambda dtype, n, top1, quantized: strict)
    expected = r"merge verification failed: reloaded: max logit error .* \(float64 forward\) > -1"
    with pytest.raises(VerificationError, match=expected):
        merge_run(lora_run, read_run_config(lora_run), tmp_path / "merged", report_dir=tmp_path)
    assert not (tmp_path / "merged").exists() and no_leftovers(tmp_path)
    assert json.loads((tmp_path / "merge_report.json").read_text())["passed"] is False


def test_a_wrong_merge_fails_in_memory_before_anything_is_written(lora_run, tmp_path, monkeypatch):
    import peftlab.export.merge as merge

    def broken(model):  # a merge that lost its way: every decoder weight moved
        with torch.no_grad():
            for name, p in model.named_parameters():
                if "layers." in name:
                    p.add_(torch.randn_like(p))
        return model

    monkeypatch.setattr(merge, "unwrap_saved_modules", broken)
    with pytest.raises(VerificationError, match=r"merge verification failed: in_memory: top-1 agreement 0\.\d+ < 1"):
        merge_run(lora_run, read_run_config(lora_run), tmp_path / "merged", report_dir=tmp_path)
    report = json.loads((tmp_path / "merge_report.json").read_text())
    assert report["passed"] is False and set(report["checks"]) == {"in_memory"}
    assert not (tmp_path / "merged").exists() and no_leftovers(tmp_path)


@pytest.fixture(scope="module")
def prefix_run(tmp_path_factory, cache_dir):
    return make_run(tmp_path_factory.mktemp("prefix"), "prefix", "method=prefix")


@pytest.mark.parametrize("case", ["missing", "prefix", "corrupted", "truncated", "out_exists"])
def test_bad_input_is_one_line_and_leaves_nothing(case, lora_run, prefix_run, tmp_path):
    run, extra = lora_run, []
    if case == "missing":
        run = tmp_path / "nope"
        expected = f"run_dir: {run} is not a finished peftlab-train run folder (it needs config.yaml and adapter/)"
    elif case == "prefix":
        run = prefix_run
        expected = (f"run_dir: method=prefix cannot be merged: its virtual tokens are extra inputs, not weight "
                    f"updates; the adapter folder {run / 'adapter'} is the deployable artefact")
    elif case in ("corrupted", "truncated"):
        import shutil

        run = tmp_path / "broken"
        shutil.copytree(lora_run, run, ignore=shutil.ignore_patterns("merged*", ".*"))
        path = run / "adapter" / "adapter_model.safetensors"
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2] if case == "truncated" else b"\x00" * 64 + data[64:])
        expected = f"run_dir: {path} is corrupted or truncated ("
    else:
        (tmp_path / "taken").mkdir()
        extra = [f"out_dir={tmp_path / 'taken'}"]
        expected = f"out_dir: {tmp_path / 'taken'} already exists; it is never overwritten"
    proc = run_cli("peftlab-merge", f"run_dir={run}", *extra, f"hydra.run.dir={tmp_path / 'log'}")
    assert proc.returncode == 2, proc.stderr[-2000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith(f"peftlab-merge: error: {expected}"), last
    assert "Traceback" not in proc.stderr
    if case != "missing":
        assert not (run / "merged").exists() and no_leftovers(run)


@pytest.mark.slow
def test_smollm2_merge(tmp_path):
    """The packaged SmolLM2 with a briefly trained adapter merges exactly (merge_after)."""
    from conftest import train

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    overrides = ["trainer.max_steps=2", "zero_shot=false", "data.max_eval_examples=8", "data.eval_batch_size=8",
                 "trainer.enable_progress_bar=false", "logger=none", "callbacks.checkpoint=null",
                 f"paths.cache_dir={USER_CACHE}"]
    metrics = train(compose(overrides, run_dir=run_dir))
    merge = metrics["merge"]
    # the gate is the merge's own error, in a float64 forward: fp32 forwards add rounding of their own
    # (1.2e-4 on SmolLM2's logits after 60 steps)
    assert merge["passed"] and merge["max_abs_error_fp64"] <= 1e-4 and merge["top1_agreement"] == 1.0
    assert merge["merged_test"]["exact_match"] == metrics["test"]["exact_match"]
    # a bf16 export of a properly trained SmolLM2 adapter: tests/test_smollm2.py (slow)
