"""peftlab-merge format=gguf: one GGUF file with its tokenizer, read back by transformers' GGUF
loader to the adapter model's greedy answers (f32/f16), its difference reported (q8_0); the
architectures, types and bases it does not take refused with one line before anything is written."""

from __future__ import annotations

import importlib.util
import json

import pytest
import torch

from peftlab.errors import ConfigError
from peftlab.export.merge import MergeOptions, merge_run
from peftlab.runs.config import read_run_config

from conftest import compose

LLAMA_CPP = importlib.util.find_spec("llama_cpp") is not None


@pytest.fixture(scope="module")
def gguf_f16(finished_run, tmp_path_factory):
    out = tmp_path_factory.mktemp("gguf") / "merged"
    report = merge_run(finished_run, read_run_config(finished_run), out, MergeOptions(format="gguf", gguf_type="f16"))
    return out, report


def test_f16_export_is_one_file_that_transformers_reads_back_to_the_same_answers(gguf_f16, finished_run):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out, report = gguf_f16
    g = report["gguf"]
    assert report["passed"] and g["file"] == "tiny_llama-lora-f16.gguf" and g["type"] == "f16"
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "merge_report.json", g["file"]]
    assert json.loads((out / "merge_report.json").read_text())["gguf"]["file"] == g["file"]
    c = g["checks"]
    assert c["probes"] == 8 and c["probes_identical"] == 8 and c["prompts_identical"] == c["prompts"] == 8
    assert c["top1_agreement"] == 1.0 and g["exact_match_difference"] == 0.0
    assert g["metrics"]["exact_match"] == report["metrics"]["adapter"]["exact_match"]
    assert g["size_mb"] < report["sizes_mb"]["merged"] * 0.6  # half-precision matrices beside fp32 safetensors
    if not LLAMA_CPP:
        assert g["llama_cpp"].startswith("not installed (pip install llama-cpp-python")
    else:  # the tiny model's byte tokenizer has no merges: llama.cpp cannot read it (SmolLM2's: docs/guides/merging.md)
        assert g["llama_cpp"].startswith("not compared: the tokenizer has no BPE merges")
    # read back here, independently: its logits are the adapter model's within f16 rounding
    model = AutoModelForCausalLM.from_pretrained(out, gguf_file=g["file"], dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(out, gguf_file=g["file"])
    adapter_cfg = json.loads((finished_run / "adapter" / "adapter_config.json").read_text())
    base = AutoModelForCausalLM.from_pretrained(adapter_cfg["base_model_name_or_path"], dtype=torch.float32)
    adapter = PeftModel.from_pretrained(base, finished_run / "adapter").eval()
    ids = tokenizer(["<|im_start|>user\n3rd of March, 1998<|im_end|>\n"], return_tensors="pt")
    with torch.no_grad():
        ours, theirs = model(**ids).logits, adapter(**ids).logits
    assert torch.allclose(ours, theirs, atol=2e-3 * float(theirs.abs().max()))
    assert not torch.equal(ours, theirs)  # f16 rounds: the comparison is not of a file with itself


def test_card_and_summary_state_the_gguf(gguf_f16):
    from huggingface_hub import ModelCard

    from peftlab.export.merge import summary

    out, report = gguf_f16
    card = ModelCard.load(out / "README.md")
    assert "gguf" in card.data.tags and card.data.library_name == "transformers"
    assert "format=gguf gguf_type=f16" in card.text
    assert f'gguf_file="{report["gguf"]["file"]}"' in card.text
    text = summary(report, "exact_match")
    assert "GGUF (f16) read back by transformers" in text and "identical 8/8 (required identical)" in text
    assert f"merged model: {out}/tiny_llama-lora-f16.gguf" in text


@pytest.mark.parametrize("model", ["tiny_llama", "tiny_qwen2"])
def test_round_trip_f32_exact_f16_close_q8_0_differs(model, tmp_path, tiny_backbone_factory):
    """The writer itself, per architecture (Llama's q/k permutation, Qwen2's biases): f32 reads back
    to the same logits bit for bit; f16 and q8_0 within their rounding, q8_0 further than f16."""
    from transformers import AutoModelForCausalLM

    from peftlab.export.gguf import write_gguf

    backbone = tiny_backbone_factory(model)
    ref_model, tokenizer = backbone.model.eval(), backbone.tokenizer
    ids = tokenizer(["2024-01-03 is a date", "the quick brown fox"], return_tensors="pt", padding=True)
    with torch.no_grad():
        ref = ref_model(**ids).logits
        errors = {}
        for kind in ("f32", "f16", "q8_0"):
            write_gguf(ref_model, tokenizer, tmp_path / f"{kind}.gguf", kind, model)
            read = AutoModelForCausalLM.from_pretrained(tmp_path, gguf_file=f"{kind}.gguf", dtype=torch.float32)
            errors[kind] = float((read.eval()(**ids).logits - ref).abs().max())
    assert errors["f32"] == 0.0
    assert 0 < errors["f16"] < errors["q8_0"] < 0.05 * float(ref.abs().max())


def test_exact_types_gate_their_answers_lossy_types_report_them():
    from peftlab.export.gguf_verify import problems

    checks = {"prompts_identical": 8, "prompts": 8, "probes_identical": 6, "probes": 8}
    entry = {"type": "f16", "exact": True, "checks": checks, "llama_cpp": "not installed"}
    assert problems(entry, "greedy generations") == ["gguf (f16): 2 of 8 test greedy generations differ"]
    assert problems({**entry, "type": "q8_0", "exact": False}, "greedy generations") == []
    tokenizer_off = {**entry, "exact": False, "checks": {**checks, "prompts_identical": 7}}
    assert problems(tokenizer_off, "x") == ["gguf: its tokenizer encodes 1 of 8 test prompts differently"]


def _run(*overrides):
    from peftlab.config import validate

    return validate(compose(["debug=tiny", *overrides]))


def test_refusals_name_what_to_choose(finished_run, tmp_path):
    from peftlab.config import validate
    from peftlab.config.commands import MergeSchema
    from peftlab.export.gguf import check_format

    merge = ["run_dir=x", "format=gguf"]
    with pytest.raises(ConfigError) as err:
        validate(compose([*merge, "gguf_type=q4_k"], config_name="merge"), MergeSchema)
    assert str(err.value) == "gguf_type must be one of f32, f16, bf16, q8_0, got 'q4_k'"
    with pytest.raises(ConfigError, match=r"^dtype: not read with format=gguf, got 'float16'; gguf_type= sets"):
        validate(compose([*merge, "dtype=float16"], config_name="merge"), MergeSchema)
    with pytest.raises(ConfigError) as err:
        check_format(_run("model=tiny_gpt2"), "gguf", False)
    assert str(err.value) == ("format=gguf: the writer does not map architecture 'gpt2'; it maps llama, qwen2 "
                              "(format=safetensors exports any model)")
    with pytest.raises(ConfigError) as err:
        check_format(_run("precision=int8"), "gguf", False)
    assert str(err.value) == ("run_dir: the run trained on a int8 base; format=gguf writes the adapter merged into "
                              "the full-precision base only with dequantize=true (as the safetensors merge does)")
    check_format(_run("precision=int8"), "gguf", True)  # asked for: the full-precision merge
    with pytest.raises(ConfigError, match=r"^dequantize: read only with format=gguf"):
        check_format(_run(), "safetensors", True)
    # the merge stops before it loads or writes anything
    out = tmp_path / "merged"
    with pytest.raises(ConfigError, match="does not map architecture 'gpt2'"):
        merge_run(finished_run, _run("model=tiny_gpt2"), out, MergeOptions(format="gguf"))
    assert list(tmp_path.iterdir()) == []


def test_dry_run_names_the_file_and_its_check(finished_run, tmp_path):
    from peftlab.engine.command_plans import merge_plan

    cfg = compose([f"run_dir={finished_run}", "format=gguf", "gguf_type=q8_0", f"out_dir={tmp_path / 'g'}"],
                  config_name="merge")
    plan = dict(merge_plan(cfg, tmp_path / "log"))
    assert plan["gguf"].startswith("tiny_llama-lora-q8_0.gguf (q8_0) written from the verified merge")
    assert plan["gguf"].endswith("their difference reported")
    assert plan["merges"].endswith("exported in float32")
    assert not (tmp_path / "g").exists()


@pytest.mark.slow
@pytest.mark.skipif(not LLAMA_CPP, reason="llama-cpp-python is not installed (make llamacpp)")
def test_llama_cpp_default_kernels_still_crash_on_q8_0_where_amx_is(tmp_path, cache_dir):
    """export/gguf_verify.py's ``reference_kernels`` loads llama.cpp without its repacking buffers,
    whose AMX q8_0 kernel kills the process on CPUs with AMX (SmolLM2's q8_0 file, llama-cpp-python
    0.3.36). When this test fails, the default path works: the workaround can go."""
    import subprocess
    import sys

    if not getattr(torch.cpu, "_is_amx_tile_supported", lambda: False)():
        pytest.skip("no AMX on this CPU: the crash is AMX's")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from peftlab.export.gguf import write_gguf
    from peftlab.models import resolve_path

    folder = resolve_path(compose(["model=smollm2_135m"]).model, cache_dir)
    path = tmp_path / "smollm2-q8_0.gguf"
    write_gguf(AutoModelForCausalLM.from_pretrained(folder), AutoTokenizer.from_pretrained(folder), path, "q8_0",
               "smollm2")
    # a prompt of 28 tokens: a batch that takes the AMX matrix kernel (a token or two does not)
    ask = ("toks = llm.tokenize(b'<|im_start|>user\\nRewrite 3 May 1998 as YYYY-MM-DD<|im_end|>\\n<|im_start|>"
           "assistant\\n', add_bos=False, special=True)\nprint(next(iter(llm.generate(toks, temp=0.0))))")
    code = f"import llama_cpp, sys\nllm = llama_cpp.Llama(model_path=sys.argv[1], n_ctx=256, verbose=False)\n{ask}"
    plain = ("from peftlab.export.gguf_verify import reference_kernels; import llama_cpp, sys\n"
             "with reference_kernels(): llm = llama_cpp.Llama(model_path=sys.argv[1], n_ctx=256, verbose=False)\n"
             + ask)
    assert subprocess.run([sys.executable, "-c", plain, str(path)], capture_output=True).returncode == 0
    default = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True)
    assert default.returncode != 0, "llama.cpp's default kernels read q8_0 on AMX now: reference_kernels can go"
