"""The saved adapter loads with plain peft and gives the in-framework logits, bit for bit; the
backbone's own weights inside the trained model do not move."""

from __future__ import annotations

import pytest
import torch
from test_methods import base_view
from test_module import batch_for

from peftlab.methods import count_parameters

from conftest import build, wrap


def _train_a_little(model, task, batch, steps=3, lr=1e-2):
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    model.train()
    losses = []
    for _ in range(steps):
        nll, n = task.loss(model, batch)
        loss = nll / n
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
    return losses


@pytest.mark.parametrize("overrides", [[], ["method.use_dora=true"], ["method.use_rslora=true"],
                                       ["method.target_modules=[q_proj,v_proj]"]])
def test_lora_adapter_reloads_with_plain_peft(cache_dir, tmp_path, overrides):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    conf, task, bb = build(["model=tiny_llama", *overrides], cache_dir)
    original = {k: v.detach().clone() for k, v in bb.model.named_parameters()}
    torch.manual_seed(0)  # the adapter's initialisation: the same whatever ran before in this process
    model = wrap(bb, conf.method, task)
    batch = batch_for(bb.tokenizer)
    losses = _train_a_little(model, task, batch)
    assert losses[-1] < 0.98 * losses[0], losses
    view = base_view(model)  # the trained model's own copies of the backbone's weights
    assert [k for k, v in original.items() if not torch.equal(view[k], v)] == []
    model.eval()
    model.save_pretrained(tmp_path / "adapter")
    reloaded = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(bb.path), tmp_path / "adapter").eval()
    with torch.no_grad():
        a = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        b = reloaded(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    assert torch.equal(a, b)


def test_only_adapter_parameters_train(cache_dir):
    conf, task, bb = build(["model=tiny_llama"], cache_dir)
    model = wrap(bb, conf.method, task)
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    assert names and all(".lora_A." in n or ".lora_B." in n for n in names)
    counts = count_parameters(model)
    assert counts["trainable"] == sum(p.numel() for p in model.parameters() if p.requires_grad)


def test_full_fine_tuning_trains_every_weight(cache_dir, tmp_path):
    from transformers import AutoModelForCausalLM

    conf, task, bb = build(["model=tiny_llama", "method=full"], cache_dir)
    original = {k: v.detach().clone() for k, v in bb.model.named_parameters()}
    model = wrap(bb, conf.method, task)
    assert all(p.requires_grad for p in model.parameters())
    batch = batch_for(bb.tokenizer)
    _train_a_little(model, task, batch, lr=1e-3)
    moved = [k for k, v in model.named_parameters() if not torch.equal(v, original[k])]
    assert len(moved) == len(original)  # every weight trained
    model.eval().save_pretrained(tmp_path / "full")
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "full").eval()
    with torch.no_grad():
        a = model(input_ids=batch["input_ids"]).logits
        b = reloaded(input_ids=batch["input_ids"]).logits
    assert torch.equal(a, b)
