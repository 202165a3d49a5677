"""The correctness matrix: every registered method on every model family, on tiny models.

For each (method, family): a few steps lower the loss clearly; the backbone's own weights stay
bitwise unchanged inside the trained model (except full fine-tuning); what trains is exactly what
the method added (plus the task head), and the optimizer holds exactly that; the saved adapter
loads with plain peft and gives identical logits. Then a real training run per cell, which
``peftlab-eval`` reproduces from the run folder. Methods come from the registry: a new method is
in the matrix with no edit here.
"""

from __future__ import annotations

import json

import pytest
import torch

import peftlab.tasks  # noqa: F401  (the task types register: the matrix asks which each method serves)
from peftlab.config import validate
from peftlab.config.plugins import served_task_types
from peftlab.engine.module import PeftLabModule, build_optimizer
from peftlab.errors import ConfigError
from peftlab.methods import METHODS

from conftest import build, compose, wrap

FAMILIES = {  # family -> (model, data, extra overrides)
    "llama": ("tiny_llama", "dates", ["data.max_length=384"]),
    "qwen2": ("tiny_qwen2", "dates", ["data.max_length=384"]),
    "gemma2": ("tiny_gemma2", "dates", ["data.max_length=384"]),
    "gpt2": ("tiny_gpt2", "dates", ["data.max_length=384"]),
    "bert_cls": ("tiny_bert", "reviews", []),
}
# GPT-2 has fused Conv1D layers, which some peft tuners refuse (with a clear message)
MAY_REFUSE = {"gpt2"}
# the fast suite runs every method on one causal LM and on classification; CI's integration run on
# every family (the other architectures: fused Conv1D layers, sliding-window and tied-embedding models)
FAST_FAMILIES = {"llama", "bert_cls"}


def by_family(cells: list[tuple[str, str]], fast=FAST_FAMILIES) -> list:
    """The cells, those of the families beyond ``fast`` marked for CI's integration run."""
    return [pytest.param(m, f, marks=pytest.mark.integration) if f not in fast else (m, f) for m, f in cells]


def fast_few(values: list, fast: set) -> list:
    """``values``, those beyond ``fast`` marked for CI's integration run (a check repeated per method)."""
    return [v if v in fast else pytest.param(v, marks=pytest.mark.integration) for v in values]
# whole runs in the fast suite: one method of each kind on the causal LM (test_method_cell trains every method)
FAST_RUNS = {"lora", "ia3", "prefix", "prompt", "full"}
TASK_TYPES = {"dates": "causal_lm", "reviews": "seq_cls"}
# the cells where the method serves the family's task (trainable tokens: language models only)
CELLS = [(m, f) for m in sorted(METHODS) for f in FAMILIES
         if TASK_TYPES[FAMILIES[f][1]] in served_task_types(METHODS[m].capabilities)]


def _tuner_cells() -> list[tuple[str, str]]:
    """Every peft tuner that passed the capability probe (method=peft), on the family of each task
    type it passed: ``peft:<PEFT_TYPE>``."""
    from peftlab.methods.generic import probe_results

    family = {"causal_lm": "llama", "seq_cls": "bert_cls"}
    # adaption prompt replaces each attention module by a wrapper: the matrix's by-name view of the
    # backbone's weights does not apply to it (the probe trains, reloads and switches it off)
    views_differ = {"ADAPTION_PROMPT"}
    return [(f"peft:{name}", family[kind]) for name, result in probe_results().items() if name not in views_differ
            for kind, found in result["tasks"].items() if found["passed"] and kind in family]


TUNER_CELLS = _tuner_cells()
# method=peft's own path, fast on a few tuners of different kinds; every probed tuner in CI's integration run
FAST_TUNERS = {"peft:LORA", "peft:PROMPT_TUNING", "peft:BOFT", "peft:VBLORA"}


def tuner_cells_by_speed(cells: list[tuple[str, str]]) -> list:
    """The probed tuners' cells, those beyond FAST_TUNERS marked for CI's integration run."""
    return [c if c[0] in FAST_TUNERS else pytest.param(*c, marks=pytest.mark.integration) for c in cells]


def hydra_value(value) -> str:
    """A value as a Hydra override writes it."""
    if isinstance(value, dict):
        return "{" + ",".join(f"{k}:{hydra_value(v)}" for k, v in value.items()) + "}"
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(hydra_value(v) for v in value) + "]"
    return str(value)


def method_overrides(method: str, family: str) -> list[str]:
    """``method=<name>``, or for a probed tuner ``method=peft`` with the options the probe gave it."""
    if not method.startswith("peft:"):
        return [f"method={method}"]
    from peftlab.methods.generic import probe_results

    name = method.split(":", 1)[1]
    options = probe_results()[name]["tasks"][TASK_TYPES[FAMILIES[family][1]]].get("options", {})
    return ["method=peft", f"method.peft_type={name}", f"method.options={hydra_value(options)}"]


def setup_cell(method: str, family: str, cache_dir, extra=()):
    from peftlab.data.datamodule import TaskDataModule

    model_name, data_name, overrides = FAMILIES[family]
    conf, task, bb = build([f"model={model_name}", f"data={data_name}", *method_overrides(method, family), *overrides,
                            *extra], cache_dir)
    return conf, task, bb, TaskDataModule(task, bb.tokenizer, seed=0)


def wrap_or_skip(bb, conf, task, family):
    try:
        return wrap(bb, conf.method, task)
    except ConfigError as err:
        if family in MAY_REFUSE and "not supported" in str(err):
            assert str(err).startswith(f"method ({conf.method.name}): ") and "\n" not in str(err)
            pytest.skip(f"{conf.method.name} refuses {family}: {err}")
        raise


def base_view(model: torch.nn.Module) -> dict[str, torch.nn.Parameter]:
    """The wrapped model's own copies of the backbone's parameters, by the backbone's names (peft
    moves a wrapped layer's weight to ``<layer>.base_layer`` and a saved module to
    ``<module>.original_module``); parameters peft added keep names the backbone never had."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return {name.replace(".base_layer.", ".").replace(".original_module.", "."): p
            for name, p in base.named_parameters(remove_duplicate=False)}


@pytest.mark.parametrize("method,family", by_family(CELLS) + tuner_cells_by_speed(TUNER_CELLS))
def test_method_cell(method, family, cache_dir, tmp_path):
    from peft import PeftModel

    torch.manual_seed(0)
    conf, task, bb, data = setup_cell(method, family, cache_dir)
    original = {k: v.detach().clone() for k, v in bb.model.named_parameters(remove_duplicate=False)}
    model = wrap_or_skip(bb, conf, task, family)
    view = base_view(model)
    assert set(original) <= set(view)  # nothing of the backbone was lost
    adapter = type(conf.method).capabilities.adapter

    # what trains is what the method added (and the task head's trained copy); the optimizer holds exactly that
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    backbone_own = {id(view[k]) for k in original}
    assert trainable and (not trainable & backbone_own if adapter else trainable == backbone_own)
    optimizer = build_optimizer(model, conf.optim)
    assert {id(p) for group in optimizer.param_groups for p in group["params"]} == trainable

    # a few steps on one batch, without dropout so that the loss is deterministic
    batch = next(iter(data.train_dataloader()))
    for g in optimizer.param_groups:
        g["lr"] = 1e-2 if adapter else 1e-3
    model.eval()
    losses = []
    for _ in range(6):
        total, count = task.loss(model, batch)
        loss = total / count
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    # deterministic, so any fall is the method's doing: the first step goes downhill, and the loss falls
    # by far more than float32 round-off (1e-7 relative); on random tiny models prompt methods move least
    assert losses[1] < losses[0], losses
    assert losses[0] - min(losses) > 1e-4 * losses[0], losses

    # the backbone's own weights, inside the trained model, did not move (full fine-tuning aside)
    if adapter:
        moved = [k for k, v in original.items() if not torch.equal(view[k].detach(), v)]
        assert not moved, moved

    # the adapter reloads with plain peft / transformers and gives identical logits
    model.save_pretrained(tmp_path / "adapter")
    if adapter:
        reloaded = PeftModel.from_pretrained(task.auto_class().from_pretrained(bb.path, **task.model_kwargs()),
                                             tmp_path / "adapter")
    else:
        reloaded = task.auto_class().from_pretrained(tmp_path / "adapter")
    reloaded.eval()
    with torch.no_grad():
        a = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        b = reloaded(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    assert torch.equal(a, b)


@pytest.mark.parametrize("method,family", [
    c if c[1] == "llama" and c[0] in FAST_RUNS else pytest.param(*c, marks=pytest.mark.integration)
    for c in CELLS if c[1] in ("llama", "gpt2", "bert_cls")])
def test_training_run_and_eval_reproduce(method, family, cache_dir, tmp_path):
    """A real (in-process) training run per cell; peftlab-eval on its folder gives its test metrics.
    No merge and no forgetting measurement here: tests/test_merge.py merges every mergeable method
    and tests/test_forgetting.py measures forgetting."""
    from conftest import evaluate_cfg, train

    model_name, data_name, overrides = FAMILIES[family]
    run_dir = tmp_path / "run"
    common = [f"model={model_name}", f"data={data_name}", *overrides, "data.max_eval_examples=8",
              "trainer.enable_progress_bar=false"]
    cfg = compose([*common, f"method={method}", "trainer.max_steps=8", "trainer.val_check_interval=8",
                   "optim.lr=1e-2", "callbacks.checkpoint=null", "logger=none", "merge_after=false", "forgetting=null"],
                  run_dir=run_dir)
    run_dir.mkdir()
    try:
        metrics = train(cfg)
    except ConfigError as err:
        if family in MAY_REFUSE and "not supported" in str(err):
            pytest.skip(f"{method} refuses {family}: {err}")
        raise
    assert metrics["train"]["steps"] == 8
    assert metrics["test"]["loss"] != metrics["zero_shot"]["loss"]  # the trained weights reached the test
    saved = json.loads((run_dir / "metrics.json").read_text())
    assert saved["test"] == metrics["test"] and saved["method"] == method

    ecfg = compose([f"run_dir={run_dir}", "data.max_eval_examples=8"], config_name="eval", run_dir=tmp_path / "eval")
    (tmp_path / "eval").mkdir()
    report = evaluate_cfg(ecfg)
    for key, value in metrics["test"].items():
        assert report["metrics"][key] == pytest.approx(value, rel=1e-4, abs=1e-6), key


# --- method-specific behaviour --------------------------------------------------------------------
def test_prefix_refuses_gradient_checkpointing():
    with pytest.raises(ConfigError, match="method=prefix cannot train with model.gradient_checkpointing=true"):
        validate(compose(["method=prefix", "model.gradient_checkpointing=true"]))


@pytest.mark.parametrize("method", fast_few([m for m in sorted(METHODS) if m != "prefix"],
                                            {"lora", "ia3", "prompt", "full", "vera"}))
def test_gradient_checkpointing_still_trains(method, cache_dir):
    from peftlab.models import enable_gradient_checkpointing

    conf, task, bb, data = setup_cell(method, "llama", cache_dir)
    enable_gradient_checkpointing(bb.model)
    model = wrap(bb, conf.method, task).train()
    total, count = task.loss(model, next(iter(data.train_dataloader())))
    (total / count).backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert grads and all(g is not None for g in grads)


def test_prompt_init_text_must_be_in_the_vocabulary(cache_dir):
    text = ["method.init=text", "method.init_text='Convert dates'"]
    conf, task, bb, _ = setup_cell("prompt", "llama", cache_dir, text)
    model = wrap(bb, conf.method, task)
    ids = bb.tokenizer("Convert dates", add_special_tokens=False).input_ids
    emb = model.prompt_encoder.default.embedding.weight
    assert torch.equal(emb[: len(ids)], bb.model.get_input_embeddings().weight[ids])
    unknown = ["method.init=text", "method.init_text='<brand-new>'"]
    conf2, task2, bb2, _ = setup_cell("prompt", "llama", cache_dir, unknown)
    bb2.tokenizer.add_tokens(["<brand-new>"])  # a token the model has no embedding for
    with pytest.raises(ConfigError, match=r"method.init_text: '<brand-new>' gives token ids \[\d+\] outside"):
        wrap(bb2, conf2.method, task2)


PREFIX_TEXT = "Rewrite the date below as a bare ISO date."  # the byte-level tokenizer: a token per byte


def test_prefix_init_text_starts_from_the_models_own_keys_and_values(cache_dir):
    """init=text: the prefix model on x gives exactly the base model's outputs on (the first
    num_virtual_tokens tokens of init_text as a system turn, then x)."""
    text = ["method.init=text", f"method.init_text='{PREFIX_TEXT}'"]
    conf, task, bb, _ = setup_cell("prefix", "llama", cache_dir, text)
    n = conf.method.num_virtual_tokens
    init_ids = bb.tokenizer.apply_chat_template([{"role": "system", "content": PREFIX_TEXT}], tokenize=True,
                                                return_dict=False, return_tensors="pt")[:, :n]
    ids = bb.tokenizer("3 March 1998 ->", return_tensors="pt").input_ids
    with torch.no_grad():
        expected = bb.model(input_ids=torch.cat([init_ids, ids], 1)).logits[:, n:]
    model = wrap(bb, conf.method, task).eval()
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
    conf, task, bb, _ = setup_cell("prefix", family, cache_dir, ["method.init=text", *extra])
    with pytest.raises(ConfigError) as err:
        wrap(bb, conf.method, task)
    assert str(err.value) == message


def test_peft_disable_adapter_still_crashes_for_classification_prompt_learning(cache_dir):
    """peftlab tests the untouched base before wrapping instead of using disable_adapter(), which
    crashes in peft 0.21.2 for SEQ_CLS prompt-learning models. When this test fails, peft fixed it."""
    conf, task, bb, data = setup_cell("prompt", "bert_cls", cache_dir)
    model = wrap(bb, conf.method, task)
    batch = next(iter(data.test_dataloader()))
    with pytest.raises(UnboundLocalError):
        with model.disable_adapter():
            model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])


def test_zero_shot_of_classification_prompt_learning_is_the_untouched_base(cache_dir, tmp_path):
    """The zero-shot figures are those of the backbone before it was wrapped: its loss on the test
    split, computed here from a fresh backbone, equals the run's zero-shot loss."""
    import lightning as L

    from conftest import train

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    common = ["model=tiny_bert", "data=reviews", "data.max_eval_examples=16", "trainer.enable_progress_bar=false"]
    metrics = train(compose([*common, "method=prompt", "trainer.max_steps=2", "callbacks.checkpoint=null",
                             "logger=none"], run_dir=run_dir))
    L.seed_everything(42)  # the seed train() loads the backbone (and its new head) under
    conf, task, bb, data = setup_cell("prompt", "bert_cls", cache_dir, ["data.max_eval_examples=16"])
    split = task.metrics(full=True)
    with torch.no_grad():
        for batch in data.test_dataloader():
            task.evaluate_batch(bb.model.eval(), bb.tokenizer, batch, split)
    assert split.compute()["loss"] == pytest.approx(metrics["zero_shot"]["loss"], rel=1e-5)
    assert metrics["test"]["loss"] != pytest.approx(metrics["zero_shot"]["loss"], rel=1e-5)


@pytest.mark.parametrize("method,overrides,encoder_key", [
    ("prefix", ["method.prefix_projection=true", "method.encoder_hidden_size=32"], "prompt_encoder.default.transform"),
    ("ptuning", [], "prompt_encoder.default.mlp_head"),
])
def test_resume_restores_the_prompt_encoder_from_the_checkpoint(method, overrides, encoder_key, cache_dir, tmp_path):
    """The adapter holds only the final virtual tokens; the Lightning checkpoint holds the encoder."""
    import lightning as L
    from safetensors.torch import load_file

    from peftlab.engine.trainer import make_trainer

    def fresh(seed):
        L.seed_everything(seed)
        conf, task, bb, data = setup_cell(method, "llama", cache_dir, [
            *overrides, "trainer.max_steps=3", "trainer.enable_progress_bar=false", "logger=none",
            "callbacks.checkpoint.every_n_train_steps=3", "trainer.limit_val_batches=0", "data.max_eval_examples=4"])
        conf.paths.run_dir = str(tmp_path)
        conf.callbacks["checkpoint"]["dirpath"] = str(tmp_path / "checkpoints")
        model = wrap(bb, conf.method, task)
        return conf, model, PeftLabModule(model, task, bb.tokenizer, conf.optim), data

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
