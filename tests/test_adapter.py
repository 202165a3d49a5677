"""The saved adapter loads with plain peft and gives the in-framework logits, bit for bit."""

from __future__ import annotations

import pytest
import torch

from conftest import compose
from peftlab.config import validate
from peftlab.methods import apply_method, count_parameters
from peftlab.module import answer_token_nll
from test_module import batch_for


def _train_a_little(model, batch, steps=3, lr=1e-2):
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    model.train()
    losses = []
    for _ in range(steps):
        nll, n = answer_token_nll(model, batch)
        loss = nll / n
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
    return losses


@pytest.mark.parametrize("overrides", [[], ["method.use_dora=true"], ["method.use_rslora=true"],
                                       ["method.target_modules=[q_proj,v_proj]"]])
def test_lora_adapter_reloads_with_plain_peft(tiny_backbone_factory, tmp_path, overrides):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    bb = tiny_backbone_factory()
    frozen = {k: v.clone() for k, v in bb.model.state_dict().items()}
    conf = validate(compose(["model=tiny_llama", *overrides]))
    model = apply_method(bb.model, conf.method, "causal_lm")
    batch = batch_for(bb.tokenizer)
    losses = _train_a_little(model, batch)
    assert losses[-1] < losses[0]
    model.eval()
    model.save_pretrained(tmp_path / "adapter")
    base = AutoModelForCausalLM.from_pretrained(bb.path)
    for k, v in base.state_dict().items():  # the base weights did not move
        assert torch.equal(v, frozen[k]), k
    reloaded = PeftModel.from_pretrained(base, tmp_path / "adapter").eval()
    with torch.no_grad():
        a = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        b = reloaded(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    assert torch.equal(a, b)


def test_only_adapter_parameters_train(tiny_backbone_factory):
    bb = tiny_backbone_factory()
    model = apply_method(bb.model, validate(compose(["model=tiny_llama"])).method, "causal_lm")
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    assert names and all("lora_" in n for n in names)
    counts = count_parameters(model)
    assert counts["trainable"] == sum(p.numel() for p in model.parameters() if p.requires_grad)


def test_full_fine_tuning_trains_every_weight(tiny_backbone_factory, tmp_path):
    from transformers import AutoModelForCausalLM

    bb = tiny_backbone_factory()
    model = apply_method(bb.model, validate(compose(["model=tiny_llama", "method=full"])).method, "causal_lm")
    assert all(p.requires_grad for p in model.parameters())
    batch = batch_for(bb.tokenizer)
    _train_a_little(model, batch)
    model.eval().save_pretrained(tmp_path / "full")
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "full").eval()
    with torch.no_grad():
        a = model(input_ids=batch["input_ids"]).logits
        b = reloaded(input_ids=batch["input_ids"]).logits
    assert torch.equal(a, b)
