"""What the methods beyond the plain ones ask of the framework: AdaLoRA's per-step hook and loss
term, BOFT's CPU limits, trainable tokens, LoRA's initialisations and LoRA+. (The correctness
matrix in test_methods.py covers every registered method's training, freezing and reload.)"""

from __future__ import annotations

import dataclasses
import json
import warnings

import pytest
import torch

from peftlab.config import validate
from peftlab.engine.module import build_optimizer
from peftlab.errors import ConfigError
from peftlab.methods import METHODS, MethodHooks, save_adapter

from conftest import build, compose, wrap


def tiny(method: str, cache_dir, *extra: str, model: str = "tiny_llama"):
    from peftlab.data.datamodule import TaskDataModule

    conf, task, bb = build([f"model={model}", "data=dates", f"method={method}", "data.max_length=384", *extra],
                           cache_dir)
    return conf, task, bb, TaskDataModule(task, bb.tokenizer, seed=0)


def logits(model, batch) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits


def train_steps(model, task, batch, optimizer, n: int = 4) -> None:
    model.eval()  # no dropout: deterministic
    for _ in range(n):
        total, count = task.loss(model, batch)
        (total / count).backward()
        optimizer.step()
        optimizer.zero_grad()


def small_run(tmp_path, *overrides: str) -> dict:
    from conftest import train

    run_dir = tmp_path / "run"
    cfg = compose(["model=tiny_llama", "data=dates", "data.max_length=384", "data.max_eval_examples=8",
                   "trainer.enable_progress_bar=false", "callbacks.checkpoint=null", "logger=none",
                   "zero_shot=false", "optim.lr=1e-2", *overrides], run_dir=run_dir)
    run_dir.mkdir()
    return train(cfg)


# --- AdaLoRA ----------------------------------------------------------------------------------------
def test_adalora_hook_runs_once_per_optimizer_step(tmp_path, monkeypatch):
    """The method's after_step hook is called after every optimizer step (not every accumulated batch),
    with that step's gradients in place; its loss term joins the training loss."""
    from peftlab.methods import adalora

    seen: list[tuple[int, bool]] = []

    def record(model, step):
        seen.append((step, all(p.grad is not None for p in model.parameters() if p.requires_grad)))
        adalora.allocate(model, step)

    spec = METHODS["adalora"]
    monkeypatch.setitem(METHODS, "adalora", dataclasses.replace(
        spec, hooks=MethodHooks(after_step=record, loss_term=spec.hooks.loss_term)))
    small_run(tmp_path, "method=adalora", "trainer.max_steps=6", "trainer.accumulate_grad_batches=2",
              "trainer.val_check_interval=6", "method.deltaT=1")
    assert seen == [(step, True) for step in range(6)]


def test_adalora_prunes_to_its_budget(tmp_path):
    """After the run the kept singular values are exactly target_r per adapted layer on average, the
    saved adapter records that pattern, and peftlab-eval's reload reproduces the run's test loss."""
    from conftest import evaluate_cfg

    metrics = small_run(tmp_path, "method=adalora", "trainer.max_steps=12", "trainer.val_check_interval=12",
                        "method.deltaT=1", "method.init_r=6", "method.target_r=2")
    saved = json.loads((tmp_path / "run" / "adapter" / "adapter_config.json").read_text())
    pattern = saved["rank_pattern"]
    assert pattern and all(len(mask) == 6 for mask in pattern.values())
    assert sum(sum(mask) for mask in pattern.values()) == 2 * len(pattern)
    assert len({sum(mask) for mask in pattern.values()}) > 1  # the budget moved between layers
    ecfg = compose([f"run_dir={tmp_path / 'run'}", "data.max_eval_examples=8"], config_name="eval",
                   run_dir=tmp_path / "eval")
    (tmp_path / "eval").mkdir()
    assert evaluate_cfg(ecfg)["metrics"]["loss"] == pytest.approx(metrics["test"]["loss"], rel=1e-4)


def test_adalora_loss_term_is_peft_orthogonality_penalty(cache_dir):
    """peft adds the penalty only to a loss computed from labels: peftlab's term equals what it adds."""
    from peftlab.methods.adalora import orthogonality_penalty

    conf, task, bb, data = tiny("adalora", cache_dir, "method.orth_reg_weight=0.5")
    model = wrap(bb, conf.method, task)
    for n, p in model.named_parameters():  # away from peft's init, where P and Q are near-orthogonal
        if "lora_A" in n or "lora_B" in n:
            p.data.normal_(0, 0.3)
    ids = torch.randint(0, 200, (2, 12))
    with torch.no_grad():
        with_penalty = model(input_ids=ids, labels=ids).loss
        out = model(input_ids=ids)
        plain = torch.nn.functional.cross_entropy(out.logits[:, :-1].reshape(-1, out.logits.shape[-1]),
                                                  ids[:, 1:].reshape(-1))
        term = orthogonality_penalty(model)
    assert term > 0.01
    assert with_penalty.item() == pytest.approx((plain + term).item(), rel=1e-5)


def test_adalora_refuses_resume_and_an_impossible_schedule(tmp_path):
    ckpt = tmp_path / "last.ckpt"
    ckpt.write_bytes(b"x")
    with pytest.raises(ConfigError, match="resume_from: method=adalora cannot resume exactly"):
        validate(compose(["method=adalora", f"resume_from={ckpt}"]))
    with pytest.raises(ConfigError, match=r"method.total_step must be the run's number of optimizer steps \(> 0; "
                                          r"set it when trainer.max_steps is -1\), got -1"):
        validate(compose(["method=adalora", "trainer.max_steps=-1", "trainer.max_epochs=1"]))
    with pytest.raises(ConfigError, match=r"method.tinit_share plus method.tfinal_share must leave steps to prune "
                                          r"in \(of total_step=10: 5 \+ 5 steps\), got 0.5"):
        validate(compose(["method=adalora", "trainer.max_steps=10", "method.tinit_share=0.5",
                          "method.tfinal_share=0.5"]))


# --- BOFT -------------------------------------------------------------------------------------------
@pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU path")
def test_boft_on_cpu_trains_one_butterfly_factor_and_says_so(cache_dir):
    conf, task, bb, _ = tiny("boft", cache_dir)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = wrap(bb, conf.method, task)
    assert not [w for w in caught if "CUDA extension" in str(w.message)]  # peft was told there is none
    assert model.base_model.model.model.layers[0].self_attn.q_proj.boft_P.shape[0] == 1
    conf2, task2, bb2, _ = tiny("boft", cache_dir, "method.boft_n_butterfly_factor=2")
    with pytest.raises(ConfigError, match=r"^method.boft_n_butterfly_factor must be 1 without a GPU \(peft builds "
                                          r"more butterfly factors only with its CUDA extension\), got 2$"):
        wrap(bb2, conf2.method, task2)


@pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU path")
def test_peft_still_builds_one_butterfly_factor_without_its_extension():
    """The refusal above stays while this holds: when peft builds two factors on CPU, drop it."""
    from peft import BOFTConfig
    from peft.tuners.boft.layer import Linear

    from peftlab.methods.orthogonal import no_cuda_extension

    no_cuda_extension()
    layer = Linear(torch.nn.Linear(16, 16), "default", BOFTConfig(boft_block_size=4, boft_n_butterfly_factor=2))
    assert layer.boft_P.shape[0] == 1


# --- trainable tokens -------------------------------------------------------------------------------
def test_trainable_tokens_train_only_their_rows(cache_dir):
    conf, task, bb, data = tiny("trainable_tokens", cache_dir)
    chosen = sorted(i for i in set(bb.tokenizer.all_special_ids) if i < bb.model.get_input_embeddings().num_embeddings)
    before = bb.model.get_input_embeddings().weight.detach().clone()
    model = wrap(bb, conf.method, task)
    optimizer = build_optimizer(model, conf.optim)
    for g in optimizer.param_groups:
        g["lr"] = 1e-1
    train_steps(model, task, next(iter(data.train_dataloader())), optimizer)
    merged = model.merge_and_unload().get_input_embeddings().weight.detach()
    changed = sorted(torch.nonzero((merged != before).any(dim=1)).flatten().tolist())
    assert changed and set(changed) <= set(chosen)


def test_trainable_tokens_refuse_an_unknown_token(cache_dir):
    conf, task, bb, _ = tiny("trainable_tokens", cache_dir, "method.tokens=[not-a-token-here]")
    with pytest.raises(ConfigError, match=r"^method.tokens: 'not-a-token-here' is not a token of the tokenizer"):
        wrap(bb, conf.method, task)


# --- LoRA initialisations and LoRA+ ----------------------------------------------------------------
@pytest.mark.parametrize("init", ["pissa", "olora"])
def test_lora_inits_that_move_the_base_save_an_adapter_for_the_original_base(init, cache_dir, tmp_path):
    """The fresh model computes what the base computes; the adapter off does not; the saved adapter
    (converted, rank 2r) on the original base gives the trained model's outputs."""
    from peft import PeftModel

    conf, task, bb, data = tiny("lora", cache_dir, f"method.init={init}", "method.r=4")
    batch = next(iter(data.train_dataloader()))
    base = logits(bb.model, batch)
    model = wrap(bb, conf.method, task)
    assert torch.allclose(logits(model, batch), base, atol=1e-4)
    with model.disable_adapter():
        assert not torch.allclose(logits(model, batch), base, atol=1e-2)
    optimizer = build_optimizer(model, conf.optim)
    train_steps(model, task, batch, optimizer)
    trained = logits(model, batch)
    save_adapter(model, conf.method, tmp_path / "adapter")
    saved = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert saved["r"] == 8 and saved["init_lora_weights"] is True
    original = task.auto_class().from_pretrained(bb.path, **task.model_kwargs())
    reloaded = PeftModel.from_pretrained(original, tmp_path / "adapter").eval()
    assert torch.allclose(logits(reloaded, batch), trained, atol=1e-4)
    assert not torch.allclose(trained, base, atol=1e-3)  # it did train


def test_pissa_refuses_the_adapter_off_reference():
    from peftlab.tasks import make_task

    conf = validate(compose(["data=date_prefs", "method=lora", "method.init=pissa"]))
    assert make_task(conf.data, run=conf).check(conf) == [
        "preference.reference=adapter_off: method.init=pissa moves part of every targeted weight into the adapter, "
        "so the base is not the model the run starts from; use preference.reference=precomputed"]
    conf = validate(compose(["data=date_prefs", "method=lora", "method.init=eva"]))
    assert make_task(conf.data, run=conf).check(conf) == []


def test_eva_starts_from_the_training_batches(cache_dir):
    """A comes from the layer inputs of the drawn batches: the same batches give the same A, a fresh
    model does not move (B = 0), and a command without data is refused."""
    from peftlab.methods import BuildContext, apply_method

    def eva_model():
        torch.manual_seed(0)
        conf, task, bb, data = tiny("lora", cache_dir, "method.init=eva", "method.init_batches=2")
        ctx = BuildContext(task, bb.model, bb.tokenizer, bb.path, batches=data.sample_batches)
        batch = next(iter(data.train_dataloader()))
        base = logits(bb.model, batch)
        return apply_method(bb.model, conf.method, ctx), base, batch

    a, base, batch = eva_model()
    b, _, _ = eva_model()
    first_a = {n: p for n, p in a.named_parameters() if "lora_A" in n}
    first_b = dict(b.named_parameters())
    assert first_a and all(torch.equal(p, first_b[n]) for n, p in first_a.items())
    assert torch.allclose(logits(a, batch), base, atol=1e-5)
    torch.manual_seed(0)
    conf, task, bb, _ = tiny("lora", cache_dir)
    default = wrap(bb, conf.method, task)
    assert not torch.equal(dict(default.named_parameters())[next(iter(first_a))], next(iter(first_a.values())))
    conf, task, bb, _ = tiny("lora", cache_dir, "method.init=eva")
    with pytest.raises(ConfigError, match="method.init=eva looks at training batches, and this command has none"):
        apply_method(bb.model, conf.method, BuildContext(task, bb.model, bb.tokenizer, bb.path))


def test_loraplus_gives_b_its_own_learning_rate(cache_dir):
    conf, task, bb, _ = tiny("lora", cache_dir, "method.loraplus_lr_ratio=16", "optim.lr=1e-3")
    model = wrap(bb, conf.method, task)
    groups = build_optimizer(model, conf.optim, conf.method).param_groups
    names = {id(p): n for n, p in model.named_parameters()}
    by_lr = {g["lr"]: {names[id(p)] for p in g["params"]} for g in groups}
    assert set(by_lr) == {1e-3, 16e-3}
    assert all("lora_B" in n for n in by_lr[16e-3]) and not any("lora_B" in n for n in by_lr[1e-3])
    assert len(by_lr[1e-3]) + len(by_lr[16e-3]) == sum(p.requires_grad for p in model.parameters())
    plain = build_optimizer(model, conf.optim).param_groups  # without the method: one group
    assert len(plain) == 1
