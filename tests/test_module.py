"""The LightningModule's pieces without a Trainer: the sparse-head loss, the schedule, checkpoints."""

from __future__ import annotations


import pytest
import torch
import torch.nn.functional as F

from conftest import compose
from peftlab.config import validate
from peftlab.data.collators import CausalLMCollator
from peftlab.data.tokenize import PromptFormat, encode
from peftlab.methods import apply_method
from peftlab.module import PeftLabModule, answer_token_nll, lr_lambda


def batch_for(tok, n=4):
    fmt = PromptFormat.for_tokenizer(tok, "auto", None)
    exs = [encode(tok, fmt, f"Date number {i} " * (i + 1), f"2020-01-0{i + 1}", 256) for i in range(n)]
    return CausalLMCollator(tok.pad_token_id, generation=True)(exs)


@pytest.mark.parametrize("method", ["lora", "full"])
def test_sparse_head_loss_equals_full_vocabulary_loss(tiny_backbone_factory, method):
    bb = tiny_backbone_factory()
    model = apply_method(bb.model, validate(compose([f"method={method}", "model=tiny_llama"])).method, "causal_lm")
    model.eval()
    batch = batch_for(bb.tokenizer)
    nll, n = answer_token_nll(model, batch)
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    ref = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]).float(), batch["labels"][:, 1:].reshape(-1),
                          ignore_index=-100, reduction="sum")
    assert n == (batch["labels"][:, 1:] != -100).sum()
    assert torch.allclose(nll, ref, rtol=1e-5, atol=1e-5)


def test_warmup_then_cosine_schedule():
    f = lr_lambda(total_steps=100, warmup_ratio=0.1, schedule="cosine", min_ratio=0.0)
    assert f(0) < f(5) < f(9) <= 1.0
    assert f(10) == pytest.approx(1.0)
    assert f(55) == pytest.approx(0.5, abs=1e-9)
    assert f(100) == pytest.approx(0.0, abs=1e-9)
    assert lr_lambda(100, 0.0, "linear", 0.1)(50) == pytest.approx(0.55)


def test_checkpoint_holds_trainable_parameters_only(tiny_backbone_factory):
    bb = tiny_backbone_factory()
    model = apply_method(bb.model, validate(compose(["model=tiny_llama"])).method, "causal_lm")
    module = PeftLabModule(model, bb.tokenizer)
    ckpt = {"state_dict": module.state_dict()}
    module.on_save_checkpoint(ckpt)
    trainable = {n for n, p in module.named_parameters() if p.requires_grad}
    assert set(ckpt["state_dict"]) == trainable
    assert all("lora_" in k for k in ckpt["state_dict"])


def test_generate_is_greedy_and_strips_the_prompt(tiny_backbone_factory):
    bb = tiny_backbone_factory()
    module = PeftLabModule(bb.model.eval(), bb.tokenizer, max_new_tokens=5)
    batch = batch_for(bb.tokenizer, n=2)
    first = module.generate(batch["gen_input_ids"], batch["gen_attention_mask"])
    assert first == module.generate(batch["gen_input_ids"], batch["gen_attention_mask"])
    alone = module.generate(batch["gen_input_ids"][1:, -int(batch["gen_attention_mask"][1].sum()):],
                            batch["gen_attention_mask"][1:, -int(batch["gen_attention_mask"][1].sum()):])
    assert first[1] == alone[0]  # left padding does not change the continuation
