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

from conftest import build, wrap


def test_transformers_is_below_the_broken_release():
    import transformers

    assert Version(transformers.__version__) < Version("5.24"), "see the pin in pyproject.toml"


@pytest.mark.parametrize("method", sorted(METHODS))
def test_cached_generation_matches_a_full_forward(cache_dir, method):
    conf, task, bb = build(["model=tiny_llama", f"method={method}"], cache_dir)
    model = wrap(bb, conf.method, task)
    torch.manual_seed(0)
    with torch.no_grad():  # move the trainable weights so the method changes the outputs
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p) * 0.05)
    model.eval()
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
    When the advert disappears upstream, the filter (peftlab.cli) can go."""
    import logging

    import lightning as L

    from peftlab.cli import quiet_libraries

    quiet_libraries()
    with caplog.at_level(logging.INFO):
        L.Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False)
    assert caplog.records, "Lightning logged nothing at all: the capture is broken"
    assert not [r for r in caplog.records if str(r.msg).startswith("💡")]
