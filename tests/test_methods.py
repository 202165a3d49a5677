"""The correctness matrix: every method on every model family, on tiny models.

For each (method, family): a few steps lower the loss; the base weights stay bitwise unchanged
(except full fine-tuning); the optimizer holds exactly the method's parameters; the saved adapter
loads with plain peft and gives identical logits. Then a real training run per cell, which
``peftlab-eval`` reproduces from the run folder.
"""

from __future__ import annotations

import json

import pytest
import torch

from conftest import compose
from peftlab.config import validate
from peftlab.data import TaskDataModule
from peftlab.data.sources import resolve_labels
from peftlab.errors import ConfigError
from peftlab.methods import METHODS, apply_method
from peftlab.models import auto_class, load_backbone
from peftlab.module import PeftLabModule, build_optimizer

FAMILIES = {  # family -> (model, data, extra overrides)
    "llama": ("tiny_llama", "dates", ["data.max_length=384"]),
    "gpt2": ("tiny_gpt2", "dates", ["data.max_length=384"]),
    "bert_cls": ("tiny_bert", "reviews", []),
}
# what each method's trainable parameter names contain (peft names them so)
METHOD_PARAMS = {"lora": ("lora_",), "ia3": ("ia3_",), "prefix": ("prompt_encoder",), "prompt": ("prompt_encoder",),
                 "ptuning": ("prompt_encoder",)}
CELLS = [(m, f) for m in sorted(METHODS) for f in FAMILIES]


def setup_cell(method: str, family: str, cache_dir, extra=()):
    model_name, data_name, overrides = FAMILIES[family]
    conf = validate(compose([f"model={model_name}", f"data={data_name}", f"method={method}", *overrides, *extra]))
    labels = resolve_labels(conf.data) if conf.data.task_type == "seq_cls" else None
    bb = load_backbone(conf.model, cache_dir, conf.data.task_type, labels=labels)
    data = TaskDataModule(conf.data, bb.tokenizer, seed=0)
    return conf, bb, data, labels


@pytest.mark.parametrize("method,family", CELLS)
def test_method_cell(method, family, cache_dir, tmp_path):
    from peft import PeftModel

    torch.manual_seed(0)
    conf, bb, data, labels = setup_cell(method, family, cache_dir)
    task = conf.data.task_type
    base_state = {k: v.clone() for k, v in bb.model.state_dict().items()}
    model = apply_method(bb.model, conf.method, task, bb.tokenizer, bb.path)
    module = PeftLabModule(model, bb.tokenizer, conf.optim, task_type=task, labels=labels)

    # the optimizer holds exactly the trainable parameters, and those are the method's
    optimizer = build_optimizer(model, conf.optim)
    in_optimizer = {id(p) for group in optimizer.param_groups for p in group["params"]}
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    assert in_optimizer == {id(p) for p in trainable.values()}
    if method == "full":
        assert len(trainable) == len(list(model.parameters()))
    else:
        head = ("classifier", "score")  # seq_cls heads train with every method
        assert all(any(k in n for k in METHOD_PARAMS[method] + head) for n in trainable), list(trainable)

    # a few steps on one batch lower the loss
    batch = next(iter(data.train_dataloader()))
    for g in optimizer.param_groups:
        g["lr"] = 1e-2
    model.train()
    losses = []
    for _ in range(6):
        total, count = module.steps.loss(model, batch)
        loss = total / count
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < losses[0], losses

    # the base weights did not move (full fine-tuning aside)
    model.eval()
    if method != "full":
        base = model.get_base_model()
        moved = [k for k, v in base.state_dict().items()
                 if k in base_state and not any(t in k for t in ("lora_", "ia3_", "modules_to_save", "original_module"))
                 and not torch.equal(v, base_state[k])]
        assert not moved, moved

    # the adapter reloads with plain peft / transformers and gives identical logits
    model.save_pretrained(tmp_path / "adapter")
    if method == "full":
        reloaded = auto_class(task).from_pretrained(tmp_path / "adapter")
    else:
        kwargs = {"num_labels": len(labels)} if labels else {}
        reloaded = PeftModel.from_pretrained(auto_class(task).from_pretrained(bb.path, **kwargs), tmp_path / "adapter")
    reloaded.eval()
    with torch.no_grad():
        a = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        b = reloaded(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    assert torch.equal(a, b)


@pytest.mark.parametrize("method,family", CELLS)
def test_training_run_and_eval_reproduce(method, family, cache_dir, tmp_path):
    """A real (in-process) training run per cell; peftlab-eval on its folder gives its test metrics."""
    from peftlab.eval import evaluate_cfg
    from peftlab.train import train

    model_name, data_name, overrides = FAMILIES[family]
    run_dir = tmp_path / "run"
    common = [f"model={model_name}", f"data={data_name}", *overrides, "data.max_eval_examples=8",
              "trainer.enable_progress_bar=false"]
    cfg = compose([*common, f"method={method}", "trainer.max_steps=8", "trainer.val_check_interval=8",
                   "optim.lr=1e-2", "callbacks.checkpoint=null", "logger=none"], run_dir=run_dir)
    run_dir.mkdir()
    metrics = train(cfg)
    assert metrics["train"]["steps"] == 8
    assert metrics["test"]["loss"] != metrics["zero_shot"]["loss"]  # the trained weights reached the test
    saved = json.loads((run_dir / "metrics.json").read_text())
    assert saved["test"] == metrics["test"] and saved["method"] == method

    ecfg = compose([f"run_dir={run_dir}", "data.max_eval_examples=8"], config_name="eval", run_dir=tmp_path / "eval")
    (tmp_path / "eval").mkdir()
    report = evaluate_cfg(ecfg)
    for key, value in metrics["test"].items():
        assert report["metrics"][key] == pytest.approx(value, rel=1e-4, abs=1e-6), key


# --- guards for known failures -------------------------------------------------------------------
def test_prefix_refuses_gradient_checkpointing():
    with pytest.raises(ConfigError, match="method=prefix cannot train with model.gradient_checkpointing=true"):
        validate(compose(["method=prefix", "model.gradient_checkpointing=true"]))


@pytest.mark.parametrize("method", ["lora", "prompt", "ptuning", "ia3", "full"])
def test_gradient_checkpointing_still_trains(method, cache_dir):
    from peftlab.models import enable_gradient_checkpointing

    conf, bb, data, _ = setup_cell(method, "llama", cache_dir)
    enable_gradient_checkpointing(bb.model)
    model = apply_method(bb.model, conf.method, "causal_lm", bb.tokenizer, bb.path).train()
    module = PeftLabModule(model, bb.tokenizer, conf.optim)
    total, count = module.steps.loss(model, next(iter(data.train_dataloader())))
    (total / count).backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert grads and all(g is not None for g in grads)


def test_prompt_init_text_must_be_in_the_vocabulary(cache_dir):
    conf, bb, _, _ = setup_cell("prompt", "llama", cache_dir, ["method.init=text", "method.init_text='Convert dates'"])
    model = apply_method(bb.model, conf.method, "causal_lm", bb.tokenizer, bb.path)
    ids = bb.tokenizer("Convert dates", add_special_tokens=False).input_ids
    emb = model.prompt_encoder.default.embedding.weight
    assert torch.equal(emb[: len(ids)], bb.model.get_input_embeddings().weight[ids])
    bb.tokenizer.add_tokens(["<brand-new>"])  # a token the model has no embedding for
    conf2, bb2, _, _ = setup_cell("prompt", "llama", cache_dir, ["method.init=text", "method.init_text='<brand-new>'"])
    with pytest.raises(ConfigError, match=r"method.init_text: '<brand-new>' gives token ids \[\d+\] outside"):
        apply_method(bb2.model, conf2.method, "causal_lm", bb.tokenizer, bb2.path)


PREFIX_TEXT = "Rewrite the date below as a bare ISO date."  # the byte-level tokenizer: a token per byte


def test_prefix_init_text_starts_from_the_models_own_keys_and_values(cache_dir):
    """init=text: the prefix model on x gives exactly the base model's outputs on (the first
    num_virtual_tokens tokens of init_text as a system turn, then x)."""
    conf, bb, _, _ = setup_cell("prefix", "llama", cache_dir, ["method.init=text", f"method.init_text='{PREFIX_TEXT}'"])
    n = conf.method.num_virtual_tokens
    init_ids = bb.tokenizer.apply_chat_template([{"role": "system", "content": PREFIX_TEXT}], tokenize=True,
                                                return_dict=False, return_tensors="pt")[:, :n]
    ids = bb.tokenizer("3 March 1998 ->", return_tensors="pt").input_ids
    with torch.no_grad():
        expected = bb.model(input_ids=torch.cat([init_ids, ids], 1)).logits[:, n:]
    model = apply_method(bb.model, conf.method, "causal_lm", bb.tokenizer, bb.path).eval()
    with torch.no_grad():
        got = model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("family,extra,message", [
    ("llama", ["method.init_text='too short'"],
     "method.init_text: 9 tokens, fewer than method.num_virtual_tokens=20: it must give a key and value for "
     "every prefix position"),
    ("bert_cls", [f"method.init_text='{PREFIX_TEXT}'"],
     "method.init=text: prefixes are computed by a causal LM's forward pass; this task is seq_cls"),
])
def test_prefix_init_text_refusals(family, extra, message, cache_dir):
    conf, bb, _, _ = setup_cell("prefix", family, cache_dir, ["method.init=text", *extra])
    with pytest.raises(ConfigError) as err:
        apply_method(bb.model, conf.method, conf.data.task_type, bb.tokenizer, bb.path)
    assert str(err.value) == message


def test_peft_disable_adapter_still_crashes_for_classification_prompt_learning(cache_dir):
    """peftlab tests the untouched base before wrapping instead of using disable_adapter(), which
    crashes in peft 0.21.2 for SEQ_CLS prompt-learning models. When this test fails, peft fixed it."""
    conf, bb, data, labels = setup_cell("prompt", "bert_cls", cache_dir)
    model = apply_method(bb.model, conf.method, "seq_cls")
    batch = next(iter(data.test_dataloader()))
    with pytest.raises(UnboundLocalError):
        with model.disable_adapter():
            model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])


def test_zero_shot_of_classification_prompt_learning_is_the_untouched_base(cache_dir, tmp_path):
    from peftlab.train import train

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    common = ["model=tiny_bert", "data=reviews", "data.max_eval_examples=16", "trainer.enable_progress_bar=false"]
    metrics = train(compose([*common, "method=prompt", "trainer.max_steps=2", "callbacks.checkpoint=null",
                             "logger=none"], run_dir=run_dir))
    import lightning as L

    L.seed_everything(42)  # the seed train() loads the backbone (and its new head) under
    conf, bb, data, labels = setup_cell("prompt", "bert_cls", cache_dir, ["data.max_eval_examples=16"])
    module = PeftLabModule(bb.model.eval(), bb.tokenizer, task_type="seq_cls", labels=labels)
    batch = next(iter(data.test_dataloader()))
    module.steps.evaluate(bb.model, batch, module.test_metrics)
    assert module.test_metrics.compute()["accuracy"] == pytest.approx(metrics["zero_shot"]["accuracy"])


@pytest.mark.parametrize("method,overrides,encoder_key", [
    ("prefix", ["method.prefix_projection=true", "method.encoder_hidden_size=32"], "prompt_encoder.default.transform"),
    ("ptuning", [], "prompt_encoder.default.mlp_head"),
])
def test_resume_restores_the_prompt_encoder_from_the_checkpoint(method, overrides, encoder_key, cache_dir, tmp_path):
    """The adapter holds only the final virtual tokens; the Lightning checkpoint holds the encoder."""
    import lightning as L
    from safetensors.torch import load_file

    from peftlab.trainer import make_trainer

    def fresh(seed):
        L.seed_everything(seed)
        conf, bb, data, _ = setup_cell(method, "llama", cache_dir, [
            *overrides, "trainer.max_steps=3", "trainer.enable_progress_bar=false", "logger=none",
            "callbacks.checkpoint.every_n_train_steps=3", "trainer.limit_val_batches=0", "data.max_eval_examples=4"])
        conf.paths.run_dir = str(tmp_path)
        conf.callbacks["checkpoint"]["dirpath"] = str(tmp_path / "checkpoints")
        model = apply_method(bb.model, conf.method, "causal_lm", bb.tokenizer, bb.path)
        return conf, model, PeftLabModule(model, bb.tokenizer, conf.optim), data

    conf, model, module, data = fresh(0)
    make_trainer(conf).fit(module, datamodule=data)
    trained = {k: v.clone() for k, v in module.state_dict().items() if encoder_key in k}
    assert trained
    ckpt = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=False)
    assert set(trained) <= set(ckpt["state_dict"])

    model.save_pretrained(tmp_path / "adapter")
    saved = load_file(tmp_path / "adapter" / "adapter_model.safetensors")
    assert not any(encoder_key.split(".", 2)[-1] in k for k in saved)  # the encoder is not in the adapter

    conf2, _, module2, data2 = fresh(1)  # a different init of the encoder
    assert any(not torch.equal(module2.state_dict()[k], v) for k, v in trained.items())
    make_trainer(conf2).fit(module2, datamodule=data2, ckpt_path=str(tmp_path / "checkpoints" / "last.ckpt"))
    for k, v in trained.items():
        assert torch.equal(module2.state_dict()[k], v), k
