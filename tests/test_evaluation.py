"""Evaluation runs each prompt once: one forward over prompt + reference answer gives the loss and
the prompts' KV cache, and greedy decoding continues from that cache. It must give the loss of the
right-padded forward and the generations of a plain ``generate`` from the prompts."""

from __future__ import annotations

import pytest
import torch

from conftest import build, moved, wrap

CASES = [("tiny_llama", "lora", True), ("tiny_qwen2", "lora", True), ("tiny_gpt2", "lora", True),
         ("tiny_llama", "ia3", True), ("tiny_llama", "full", True),
         ("tiny_gemma2", "lora", False),  # sliding-window cache layers: the prompts run again
         ("tiny_llama", "prefix", False), ("tiny_llama", "prompt", False)]  # virtual tokens: run again


@pytest.mark.parametrize("model_name,method,shares", CASES, ids=lambda c: str(c))
def test_one_pass_evaluation_equals_the_loss_and_the_generations_of_two(cache_dir, model_name, method, shares):
    from peftlab.data.datamodule import TaskDataModule
    from peftlab.tasks.generation import generate, score_and_generate
    from peftlab.tasks.heads import answer_logits

    conf, task, bb = build([f"model={model_name}", f"method={method}", "data.max_eval_examples=8",
                            "data.max_new_tokens=6"], cache_dir)
    model = moved(wrap(bb, conf.method, task))
    data = TaskDataModule(task, bb.tokenizer, seed=0)
    batch = next(iter(data.val_dataloader()))
    width = batch["gen_input_ids"].shape[1]
    lengths = []
    embed = model.get_input_embeddings()
    handle = embed.register_forward_pre_hook(lambda module, args: lengths.append(args[0].shape[1]))
    try:
        logits, targets, texts = score_and_generate(model, bb.tokenizer, batch, conf.data.max_new_tokens)
    finally:
        handle.remove()
    with torch.no_grad():
        expected_logits, expected_targets = answer_logits(model, batch)  # the right-padded forward
    assert torch.equal(targets, expected_targets)
    assert torch.allclose(logits, expected_logits, atol=1e-4, rtol=1e-4), (logits - expected_logits).abs().max()
    assert texts == generate(model, bb.tokenizer, batch["gen_input_ids"], batch["gen_attention_mask"],
                             conf.data.max_new_tokens)
    assert (width not in lengths) == shares  # shared: the prompts never run on their own


def test_split_loss_is_weighted_by_what_it_averages_over_and_keeps_nan():
    """The loss mean weighs each batch by its token (or example) count, and a NaN loss stays NaN."""
    from peftlab.tasks.metrics import SplitMetrics

    metrics = SplitMetrics()
    metrics.update_loss(torch.tensor(3.0), 3)  # three tokens with loss 1
    metrics.update_loss(torch.tensor(3.0), 1)  # one token with loss 3
    assert metrics.compute()["loss"] == 1.5
    metrics.reset()
    metrics.update_loss(torch.tensor(float("nan")), 2)
    metrics.update_loss(torch.tensor(1.0), 1)
    assert torch.isnan(torch.tensor(metrics.compute()["loss"]))
