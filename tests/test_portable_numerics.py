"""Portable numerics: a gate that compares two forward passes allows the rounding of the dtype for
the size of the computation (``forward_tolerance``), so that a result does not depend on which CPU,
BLAS or weight layout ran it; and a real mismatch is still refused."""

from __future__ import annotations

import math

import pytest
import torch

from peftlab.export.verify import (
    FORWARD_SLACK,
    Tolerance,
    compare,
    forward_tolerance,
    logits_tolerance,
    problems,
    reduction_length,
    tolerance,
)

INPUTS = torch.tensor([[1, 15, 27, 99, 4, 8, 16, 23, 42], [3, 5, 7, 11, 13, 17, 19, 23, 29]])


# --- the rule ---------------------------------------------------------------------------------------
def test_the_tolerance_is_a_few_eps_of_the_dtype_times_sqrt_of_the_reduction_times_the_magnitude():
    eps32, eps16 = torch.finfo(torch.float32).eps, torch.finfo(torch.bfloat16).eps
    assert forward_tolerance("float32", 448, 1.0) == pytest.approx(FORWARD_SLACK * eps32 * math.sqrt(448))
    assert forward_tolerance(torch.float32, 448, 1.0) == forward_tolerance("float32", 448, 1.0)
    assert forward_tolerance("float32", 448, 1.0) == pytest.approx(1.01e-5, rel=0.01)  # the tiny models
    assert forward_tolerance("float32", 63_936, 1.0) == pytest.approx(1.206e-4, rel=0.01)  # SmolLM2-135M
    # linear in the magnitude, sqrt in the length, the dtype's eps
    assert forward_tolerance("float32", 448, 50.0) == pytest.approx(50 * forward_tolerance("float32", 448, 1.0))
    assert forward_tolerance("float32", 4 * 448, 1.0) == pytest.approx(2 * forward_tolerance("float32", 448, 1.0))
    assert forward_tolerance("bfloat16", 448, 1.0) == pytest.approx(eps16 / eps32 * forward_tolerance(
        "float32", 448, 1.0))
    assert forward_tolerance("float64", 448, 1.0) < 1e-13
    assert forward_tolerance("float32", 0, 1.0) == pytest.approx(FORWARD_SLACK * eps32)  # one term at least
    # a non-finite reference: nothing is within a NaN tolerance
    for bad in (math.nan, math.inf):
        assert not 0.0 <= forward_tolerance("float32", 448, bad)


def test_the_reduction_length_is_read_from_the_model_config():
    from transformers import GPT2Config, LlamaConfig

    tiny = LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4)
    assert reduction_length(tiny) == 2 * (64 + 128) + 64 == 448
    smollm2 = LlamaConfig(hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9)
    assert reduction_length(smollm2) == 63_936
    gpt2 = GPT2Config(n_embd=32, n_layer=3, n_head=2)  # n_inner=None: 4 x n_embd
    assert reduction_length(gpt2) == 3 * (32 + 128) + 32


# --- the rule against this CPU ----------------------------------------------------------------------
def _logits(model, inputs=INPUTS) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=inputs).logits


def test_another_summation_order_is_within_the_tolerance_and_a_perturbed_weight_is_not(tiny_backbone_factory):
    """The same function computed in another order (weights stored column-major, one row alone
    instead of in a batch, the exact float64 forward) stays within the tolerance; a weight a
    thousandth off does not."""
    model = tiny_backbone_factory().model.eval()
    expected = _logits(model)
    allowed = logits_tolerance(model, expected)
    assert 0 < allowed < 1e-3 * float(expected.abs().max())
    assert float((_logits(model, INPUTS[:1]) - expected[:1]).abs().max()) <= allowed
    exact = _logits(model.double()).float()
    model.float()
    assert float((exact - expected).abs().max()) <= allowed
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.Linear):
                module.weight.data = module.weight.data.t().contiguous().t()  # the same values, column-major
    assert not model.model.layers[0].mlp.up_proj.weight.is_contiguous()
    assert float((_logits(model) - expected).abs().max()) <= allowed
    with torch.no_grad():
        model.model.layers[1].mlp.down_proj.weight.mul_(1.001)
    assert float((_logits(model) - expected).abs().max()) > allowed


# --- the merge's tolerance --------------------------------------------------------------------------
def test_an_fp32_merge_tolerance_is_scaled_to_the_model_before_it_gates():
    tol = tolerance("float32", 8)
    assert tol.exact and tol.max_abs is None and tol.rounding == "float32" and tol.min_top1 == 1.0
    report = {"checks": {"reloaded": {"max_abs_error_fp64": 1e-6, "top1_agreement": 1.0, "probes": 2,
                                      "probes_identical": 2}},
              "metrics": {"adapter": {"exact_match": 0.5}, "merged": {"exact_match": 0.5}}, "probe_name": "x"}
    with pytest.raises(ValueError, match="Tolerance.at"):
        problems(report, tol, "exact_match")
    scaled = tol.at(448, 5.0)
    assert scaled.max_abs == pytest.approx(forward_tolerance("float32", 448, 5.0))
    assert scaled.top1_tie == pytest.approx(2 * scaled.max_abs) and "448" in scaled.why
    assert problems(report, scaled, "exact_match") == []
    # a model whose own fp32 forward rounds more than the rule says (FourierFT): that much is allowed
    assert tol.at(448, 5.0, measured=1e-3).max_abs == 1e-3
    assert tol.at(448, 5.0, measured=1e-9).max_abs == scaled.max_abs
    assert tol.at(448, 5.0, measured=math.inf).max_abs == scaled.max_abs  # a broken reference widens nothing
    assert math.isnan(tol.at(448, math.nan, measured=1e-3).max_abs)
    report["checks"]["reloaded"]["max_abs_error_fp64"] = 2 * scaled.max_abs
    assert [p for p in problems(report, scaled, "exact_match") if "max logit error" in p]
    # a lossy export is not scaled; a tolerance given as a number stays that number
    assert tolerance("bfloat16", 8).at(448, 5.0) == tolerance("bfloat16", 8)
    strict = Tolerance(max_abs=-1.0, min_top1=1.0, metric_slack=0.0)
    assert strict.exact and strict.at(448, 5.0) == strict
    assert tolerance("float64", 8).rounding == "float32"  # the merge runs in fp32 whatever the export's dtype


def test_top1_agreement_forgives_a_near_tie_broken_the_other_way_only_within_the_tie():
    ref = torch.tensor([[1.0, 1.0 + 4e-6, -2.0], [0.0, 3.0, 1.0]])
    other = torch.tensor([[1.0 + 3e-6, 1.0, -2.0], [0.0, 3.0, 1.0]])  # the first position's near-tie broken
    pair = [{"all": ref, "answer": ref}], [{"all": other, "answer": other}]
    assert compare(*pair)["top1_agreement"] == 0.5
    assert compare(*pair, tie=1e-5)["top1_agreement"] == 1.0
    far = torch.tensor([[0.0, 0.0, 5.0], [0.0, 3.0, 1.0]])  # a token the reference puts far below: no tie
    assert compare(*pair[:1], [{"all": far, "answer": far}], tie=1e-5)["top1_agreement"] == 0.5
    nan = torch.full_like(ref, math.nan)
    assert compare(*pair[:1], [{"all": nan, "answer": nan}], tie=1e-5)["top1_agreement"] == 0.0


# --- why an svd combination reloaded otherwise ------------------------------------------------------
def test_peft_svd_combination_leaves_strided_factors_which_combine_stores_as_saved(tiny_backbone_factory, tmp_path):
    """peft keeps a row slice of LAPACK's column-major Vh as the combination's lora_A; it saves it
    row-major. export/combine.py makes them contiguous, so the adapter in memory is the one on
    disk, byte for byte and layout for layout (the reload then runs the same kernels on them)."""
    from peft import LoraConfig, PeftModel, get_peft_model
    from safetensors.torch import load_file

    from peftlab.export.combine import make_contiguous

    torch.manual_seed(0)
    config = LoraConfig(r=4, target_modules=["q_proj", "v_proj", "up_proj"], init_lora_weights=False)
    model = get_peft_model(tiny_backbone_factory().model, config, adapter_name="a").eval()
    model.add_adapter("b", config)
    model.add_weighted_adapter(["a", "b"], [0.7, 0.5], "svd", combination_type="svd")
    strided = [k for k, p in model.named_parameters() if ".svd." in k and not p.is_contiguous()]
    assert strided and all(".lora_A." in k for k in strided), \
        "peft's svd factors are laid out otherwise now: the note in export/combine.py is out of date"
    assert all(p.stride() == (1, p.shape[1]) for k, p in model.named_parameters() if k in strided)
    model.set_adapter("svd")
    before = _logits(model)
    assert make_contiguous(model, "svd") == len(strided)
    assert all(p.is_contiguous() for k, p in model.named_parameters() if ".svd." in k)
    assert float((_logits(model) - before).abs().max()) <= logits_tolerance(model, before)
    model.save_pretrained(tmp_path, selected_adapters=["svd"])
    saved = load_file(tmp_path / "svd" / "adapter_model.safetensors")
    ours = {k: p for k, p in model.named_parameters() if ".svd." in k}
    assert len(saved) == len(ours)
    for key, tensor in saved.items():  # a copy of the saved bytes: equal by construction
        param = ours[key.replace(".weight", ".svd.weight")]
        assert torch.equal(param, tensor) and param.stride() == tensor.stride()
    reloaded = PeftModel.from_pretrained(tiny_backbone_factory().model, tmp_path / "svd").eval()
    assert float((_logits(reloaded) - before).abs().max()) <= logits_tolerance(reloaded, before)
