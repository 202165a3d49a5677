"""Version pins and the library behaviour they protect (see pyproject.toml and DESIGN.md).

transformers 5.24 renamed the forward argument ``past_key_values``; with peft 0.21.2 prefix,
prompt and P-tuning models then generate wrong text with no error. The check below compares the
logits of each cached ``generate()`` step with a plain forward over the whole sequence, for every
method: when it fails after an upgrade, the pin in pyproject.toml must stay.
"""

from __future__ import annotations

import pytest
import torch
from packaging.version import Version

from peftlab.methods import METHODS

from conftest import build, moved, wrap


def test_transformers_is_below_the_broken_release():
    import transformers

    assert Version(transformers.__version__) < Version("5.24"), "see the pin in pyproject.toml"


@pytest.mark.parametrize("method", sorted(METHODS))
def test_cached_generation_matches_a_full_forward(cache_dir, method):
    conf, task, bb = build(["model=tiny_llama", f"method={method}"], cache_dir)
    model = moved(wrap(bb, conf.method, task))
    ids = bb.tokenizer("Convert the date 3 March 1998:", return_tensors="pt").input_ids
    out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=6, do_sample=False,
                         min_new_tokens=6, output_logits=True, return_dict_in_generate=True,
                         pad_token_id=bb.tokenizer.pad_token_id)
    steps = torch.stack(out.logits, dim=1)[0]  # (new tokens, vocab)
    with torch.no_grad():
        full = model(input_ids=out.sequences, attention_mask=torch.ones_like(out.sequences)).logits[0]
    n = ids.shape[1]
    expected = full[-out.sequences.shape[1] + n - 1: full.shape[0] - 1]  # virtual tokens come first
    assert torch.allclose(steps, expected, atol=1e-4), (steps - expected).abs().max()


def test_lightning_cloud_advert_is_filtered(caplog):
    """Lightning 2.6 logs a cloud-logger advert from every Trainer; ``quiet_libraries`` filters it.
    When the advert disappears upstream, the filter (peftlab.models.quiet) can go."""
    import logging

    import lightning as L

    from peftlab.models.quiet import quiet_libraries

    quiet_libraries()
    with caplog.at_level(logging.INFO):
        L.Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False)
    assert caplog.records, "Lightning logged nothing at all: the capture is broken"
    assert not [r for r in caplog.records if str(r.msg).startswith("💡")]


def test_bitsandbytes_still_repacks_4bit_weights_for_cpu_inference():
    """peftlab.models.quantized.keep_4bit_weights_trainable switches off a repacking that bitsandbytes 0.50
    does on CPUs with AVX512-BF16: after one eval-mode forward, a training forward of the same layer
    computes with the wrong weights. When this test fails, the workaround can go."""
    bnb = pytest.importorskip("bitsandbytes")
    from bitsandbytes.functional import dequantize_4bit

    torch.manual_seed(0)
    dense = torch.nn.Linear(64, 32, bias=False)
    layer = bnb.nn.Linear4bit(64, 32, bias=False, compute_dtype=torch.float32, quant_type="nf4")
    layer.weight = bnb.nn.Params4bit(dense.weight.data.clone(), requires_grad=False, quant_type="nf4").to("cpu")
    if not layer.support_avx512bf16_for_cpu:
        pytest.skip("this CPU has no AVX512-BF16: bitsandbytes does not repack here")
    expected = dequantize_4bit(layer.weight.data, layer.weight.quant_state).float()
    x = torch.randn(4, 64)
    with torch.no_grad():
        layer.eval()(x)  # an evaluation, as peftlab's zero-shot test
    y = layer.train()(x.requires_grad_())
    assert not torch.allclose(y, x @ expected.T, atol=1e-3)  # the training forward is wrong: the bug

    from peftlab.models.quantized import keep_4bit_weights_trainable

    fixed = bnb.nn.Linear4bit(64, 32, bias=False, compute_dtype=torch.float32, quant_type="nf4")
    fixed.weight = bnb.nn.Params4bit(dense.weight.data.clone(), requires_grad=False, quant_type="nf4").to("cpu")
    keep_4bit_weights_trainable(fixed)
    with torch.no_grad():
        fixed.eval()(x.detach())
    torch.testing.assert_close(fixed.train()(x), x @ expected.T)  # with the workaround it is right


def test_peft_ln_tuning_merge_still_leaves_the_head_wrapped(cache_dir):
    """peft 0.21's LN tuning merge_and_unload keeps the classification head's ModulesToSaveWrapper,
    so the merged folder would load a random head; export/merge.py's unwrap_saved_modules puts the
    trained head in place. When this fails, peft merges it itself and the workaround can go."""
    from peft.utils import ModulesToSaveWrapper

    from peftlab.export.merge import unwrap_saved_modules

    conf, task, bb = build(["model=tiny_bert", "data=reviews", "method=ln_tuning"], cache_dir)
    merged = wrap(bb, conf.method, task).merge_and_unload()
    wrapped = [n for n, m in merged.named_modules() if isinstance(m, ModulesToSaveWrapper)]
    assert wrapped == ["classifier"]
    head = merged.classifier.modules_to_save["default"]
    assert unwrap_saved_modules(merged).classifier is head


def test_torch_still_has_the_cpu_bf16_probes_precision_auto_reads():
    """engine/precision.py reads torch's private CPU probes (getattr with a fallback of False, so a
    torch without them makes precision=auto choose fp32 on every CPU). When this fails, find their
    new names: auto has silently stopped choosing bf16 on CPUs."""
    import torch

    assert callable(torch.ops.mkldnn._is_mkldnn_bf16_supported)
    assert callable(torch.cpu._is_avx512_bf16_supported) and callable(torch.cpu._is_amx_tile_supported)
