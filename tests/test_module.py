"""The LightningModule's pieces without a Trainer: the sparse-head loss on every family, the
schedule, checkpoints and their key check, generation."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from peftlab.data.collators import CausalLMCollator
from peftlab.data.tokenize import PromptFormat, encode
from peftlab.engine.module import PeftLabModule, build_scheduler
from peftlab.errors import ConfigError
from peftlab.tasks.heads import answer_logits

from conftest import build, wrap


def batch_for(tok, n=4):
    fmt = PromptFormat.for_tokenizer(tok, "auto", None)
    exs = [encode(tok, fmt, f"Date number {i} " * (i + 1), f"2020-01-0{i + 1}", 256) for i in range(n)]
    return CausalLMCollator(tok.pad_token_id, generation=True)(exs)


def full_vocabulary_loss(model, batch) -> torch.Tensor:
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    logits = logits[:, -batch["labels"].shape[1]:]  # prompt methods' virtual tokens come first
    return F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]).float(), batch["labels"][:, 1:].reshape(-1),
                           ignore_index=-100, reduction="sum")


@pytest.mark.parametrize("model_name", ["tiny_llama", "tiny_qwen2", "tiny_gemma2", "tiny_gpt2"])
@pytest.mark.parametrize("method", ["lora", "full", "prompt"])
def test_sparse_head_loss_equals_full_vocabulary_loss(cache_dir, model_name, method):
    """The loss applies the head to the labelled positions only and must equal the loss on the
    model's own full logits, on every family (Gemma 2 soft-caps its logits after the head)."""
    conf, task, bb = build([f"model={model_name}", f"method={method}"], cache_dir)
    model = wrap(bb, conf.method, task).eval()
    batch = batch_for(bb.tokenizer)
    with torch.no_grad():
        nll, n = task.loss(model, batch)
        ref = full_vocabulary_loss(model, batch)
    assert n == (batch["labels"][:, 1:] != -100).sum()
    torch.testing.assert_close(nll, ref, rtol=1e-5, atol=1e-5)


def test_a_head_applied_by_hand_would_miss_gemma2s_soft_capping(cache_dir):
    """Why the loss asks the model for its own logits: projecting the hidden states with the output
    layer directly skips Gemma 2's final soft-capping and gives other logits."""
    _, task, bb = build(["model=tiny_gemma2"], cache_dir)
    assert bb.model.config.final_logit_softcapping
    batch = batch_for(bb.tokenizer)
    with torch.no_grad():
        out = bb.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], output_hidden_states=True)
        mask = batch["labels"][:, 1:] != -100
        by_hand = bb.model.get_output_embeddings()(out.hidden_states[-1][:, :-1][mask]).float()
        logits, targets = answer_logits(bb.model, batch)
    torch.testing.assert_close(logits, out.logits[:, :-1][mask].float())  # the model's own logits
    assert (by_hand - logits).abs().max() > 1e-2


def test_warmup_then_cosine_schedule():
    """transformers' schedule: linear warmup from 0 over ceil(warmup_ratio * steps), then cosine to
    min_lr_ratio of the learning rate."""
    from peftlab.config.schema import OptimSchema

    def lrs(**kwargs):
        opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
        sched = build_scheduler(opt, OptimSchema(**kwargs), total_steps=100)
        out = []
        for _ in range(101):
            out.append(opt.param_groups[0]["lr"])
            opt.step()
            sched.step()
        return out

    f = lrs(warmup_ratio=0.1)
    assert f[0] == 0.0 and f[5] == pytest.approx(0.5) and f[10] == pytest.approx(1.0)
    assert f[55] == pytest.approx(0.5, abs=1e-9) and f[100] == pytest.approx(0.0, abs=1e-9)
    assert lrs(warmup_ratio=0.1, min_lr_ratio=0.1)[100] == pytest.approx(0.1)
    assert lrs(warmup_ratio=0.0, scheduler="linear")[50] == pytest.approx(0.5)
    assert set(lrs(warmup_ratio=0.0, scheduler="constant")) == {1.0}


def test_min_lr_ratio_needs_the_cosine_schedule():
    from peftlab.config.schema import OptimSchema

    with pytest.raises(ConfigError, match="optim.min_lr_ratio applies to optim.scheduler=cosine only"):
        OptimSchema(scheduler="linear", min_lr_ratio=0.1)


def test_checkpoint_holds_trainable_parameters_only(cache_dir, causal_task):
    conf, task, bb = build(["model=tiny_llama"], cache_dir)
    module = PeftLabModule(wrap(bb, conf.method, task), task, bb.tokenizer)
    ckpt = {"state_dict": module.state_dict()}
    module.on_save_checkpoint(ckpt)
    assert set(ckpt["state_dict"]) == module.trainable_names()
    assert all("lora_" in k for k in ckpt["state_dict"])
    module.on_load_checkpoint(ckpt)  # its own checkpoint fits


@pytest.mark.parametrize("other", [["method.r=4"], ["method.target_modules=[q_proj]"], ["method=ia3"]])
def test_a_checkpoint_of_another_method_is_refused_by_name(cache_dir, other):
    conf, task, bb = build(["model=tiny_llama"], cache_dir)
    module = PeftLabModule(wrap(bb, conf.method, task), task, bb.tokenizer)
    conf2, task2, bb2 = build(["model=tiny_llama", *other], cache_dir)
    module2 = PeftLabModule(wrap(bb2, conf2.method, task2), task2, bb2.tokenizer)
    ckpt = {"state_dict": module2.state_dict()}
    module2.on_save_checkpoint(ckpt)
    saved, expected = set(ckpt["state_dict"]), module.trainable_names()
    with pytest.raises(ConfigError) as err:
        module.on_load_checkpoint(ckpt)
    message = str(err.value)
    assert message.startswith("resume_from: the checkpoint does not fit this run's trainable parameters (")
    if saved == expected:  # another rank: the same names, other shapes
        assert "28 of different shape, e.g. " in message and ": [4, 128] in the checkpoint, [8, 128] here" in message
    else:
        assert f"missing {sorted(expected - saved)[0]}" in message
    assert "\n" not in message


def test_generate_is_greedy_and_strips_the_prompt(cache_dir, causal_task):
    _, task, bb = build(["model=tiny_llama", "data.max_new_tokens=5"], cache_dir)
    batch = batch_for(bb.tokenizer, n=2)
    model = bb.model.eval()
    first = task.probe(model, bb.tokenizer, batch)
    assert first == task.probe(model, bb.tokenizer, batch)
    width = int(batch["gen_attention_mask"][1].sum())
    alone = task.probe(model, bb.tokenizer, {"gen_input_ids": batch["gen_input_ids"][1:, -width:],
                                             "gen_attention_mask": batch["gen_attention_mask"][1:, -width:]})
    assert first[1] == alone[0]  # left padding does not change the continuation


def test_generation_stops_at_every_end_token_of_the_generation_config(cache_dir):
    """A chat model often ends a turn with a token other than the tokenizer's EOS (its generation
    config lists several): greedy decoding must stop at any of them."""
    from peftlab.tasks.generation import end_tokens, generate

    _, task, bb = build(["model=tiny_llama", "data.max_new_tokens=12"], cache_dir)
    model = bb.model.eval()
    batch = batch_for(bb.tokenizer, n=1)
    ids, mask = batch["gen_input_ids"], batch["gen_attention_mask"]
    with torch.no_grad():
        free = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=12, do_sample=False,
                              eos_token_id=None, pad_token_id=bb.tokenizer.pad_token_id)
    stop = int(free[0, ids.shape[1] + 2])  # the third token the model would produce
    model.generation_config.eos_token_id = [stop]
    assert stop in end_tokens(model, bb.tokenizer) and bb.tokenizer.eos_token_id in end_tokens(model, bb.tokenizer)
    text = generate(model, bb.tokenizer, ids, mask, 12)[0]
    expected = bb.tokenizer.decode(free[0, ids.shape[1]:], skip_special_tokens=True)
    assert len(text) < len(expected.strip()) and expected.startswith(text)
