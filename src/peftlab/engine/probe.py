"""The capability probe of peft's tuners (``method=peft``): what each one does on each task type,
measured on the tiny models, never declared by hand.

For one tuner and one task type: wrap a fresh tiny backbone through ``apply_method`` (the path
training takes), see whether the fresh tuner leaves the logits as they were, train a few steps on
one batch (the loss must fall), save, reload with plain transformers + peft (identical logits),
switch it off (the base's logits again), and merge the reloaded model where peft offers it (the
merged model must give the adapter's logits). ``passed``: it trained, reloaded and switched off.
"The same logits" is within ``forward_tolerance`` (export/verify.py) of the reference's magnitude:
a reload, a switched-off tuner or a merge computes the same function by other kernels or layouts,
whose last bits differ between CPUs.
scripts/probe_peft_tuners.py runs every tuner and writes methods/peft_tuners.json.
"""

from __future__ import annotations

import tempfile
from functools import lru_cache
from typing import Any

import torch

from peftlab.errors import ConfigError


def probed_task_types() -> dict[str, tuple[str, str]]:
    """task type -> (tiny model, shipped data) it is probed on (each task type's ``probe_setup``)."""
    from peftlab.tasks import TASKS

    return {name: cls.probe_setup for name, cls in TASKS.items() if cls.probe_setup is not None}


# options a tuner cannot go without on the tiny models, whose layers are 32 to 128 wide (what the
# probe passes, recorded with its result: the same tuner on a real model takes peft's defaults)
NEEDS = {
    "ADALORA": {"total_step": 10}, "VBLORA": {"vector_length": 16}, "SHIRA": {"r": 4}, "WAVEFT": {"n_frequency": 64},
    "ROAD": {"group_size": 8}, "C3A": {"block_size": 16},
    "PROMPT_TUNING": {"num_virtual_tokens": 4}, "MULTITASK_PROMPT_TUNING": {"num_virtual_tokens": 4},
    "PREFIX_TUNING": {"num_virtual_tokens": 4}, "P_TUNING": {"num_virtual_tokens": 4, "encoder_hidden_size": 16},
    "CARTRIDGE": {"num_virtual_tokens": 4}, "ADAPTION_PROMPT": {"adapter_len": 4, "adapter_layers": 1},
}
TARGETS = (["q_proj", "v_proj"], ["query", "value"])  # the attention projections, when peft has no default
STEPS = 4


def _first_line(err: BaseException) -> str:
    return (str(err).splitlines() or [type(err).__name__])[0][:200]


def probe(peft_type: str, task_type: str, cache_dir: str) -> dict[str, Any]:
    """What ``peft_type`` does on ``task_type``; ``reason`` says where it stopped if it did."""
    result: dict[str, Any] = {"passed": False}
    options = dict(NEEDS.get(peft_type, {}))
    try:
        return _probe(peft_type, task_type, cache_dir, options, result)
    except ConfigError as err:
        if "target_modules" not in str(err) or "target_modules" in options:
            return {**result, "reason": _first_line(err)}
        options["target_modules"] = _targets(task_type, cache_dir)  # peft has no default targets for this model
        try:
            return _probe(peft_type, task_type, cache_dir, options, {"passed": False})
        except Exception as second:  # noqa: BLE001  (whatever a tuner raises is its result)
            return {"passed": False, "options": options, "reason": _first_line(second)}
    except Exception as err:  # noqa: BLE001
        return {**result, "reason": f"{type(err).__name__}: {_first_line(err)}"}


def _probe(peft_type: str, task_type: str, cache_dir: str, options: dict, result: dict) -> dict[str, Any]:
    from peftlab.models import load_backbone

    result["options"] = options
    conf, task, batch = _setup(*probed_task_types()[task_type], cache_dir)
    torch.manual_seed(0)
    backbone = load_backbone(conf.model, cache_dir, task)
    base = _logits(backbone.model.eval(), batch)
    model = _wrap(peft_type, options, backbone, task, batch)
    result["starts_as_base"] = _same(_logits(model.eval(), batch), base, model)
    losses = _train(model, task, batch)
    result["trains"] = all(map(torch.isfinite, torch.tensor(losses))) and losses[-1] < losses[0]
    if not result["trains"]:
        return {**result, "reason": f"the loss did not fall in {STEPS} steps ({losses[0]:.4f} -> {losses[-1]:.4f})"}
    trained = _logits(model.eval(), batch)
    reloaded, fresh_base = _reload(model, conf, cache_dir, task, batch)
    result["reloads"] = _same(_logits(reloaded, batch), trained, reloaded)
    if not result["reloads"]:
        return {**result, "reason": "the reloaded adapter gives other logits (is all it trained in the folder?)"}
    try:
        with reloaded.disable_adapter():
            result["switches_off"] = _same(_logits(reloaded, batch), fresh_base, reloaded)
    except Exception as err:  # noqa: BLE001
        result["switches_off"] = False
        return {**result, "reason": f"switching it off fails: {_first_line(err)}"}
    if not result["switches_off"]:
        return {**result, "reason": "switched off, it does not give the base's logits"}
    result["passed"] = True
    result["merges"] = _merges(reloaded, batch, trained)
    return result


def _wrap(peft_type: str, options: dict, backbone: Any, task: Any, batch: dict[str, Any]):
    """The tuner applied as training applies it (``options`` gains what a token tuner needs)."""
    from peftlab.config.plugins import method_schema
    from peftlab.methods import BuildContext, apply_method

    if "token_indices" in _fields(peft_type):
        options.setdefault("token_indices", sorted(set(batch["input_ids"].flatten().tolist()))[:64])
        # without it, peft 0.21's TrainableTokensConfig wraps nothing that the forward uses: nothing trains
        embedding = backbone.model.get_input_embeddings()
        options.setdefault("target_modules", [next(n for n, m in backbone.model.named_modules() if m is embedding
                                                   ).rsplit(".", 1)[-1]])
    schema = method_schema("peft")(peft_type=peft_type, options=options)
    try:
        return apply_method(backbone.model, schema, BuildContext(task, backbone.model, backbone.tokenizer,
                                                                 backbone.path))
    except ConfigError:
        raise
    except Exception as err:  # noqa: BLE001
        raise ConfigError(f"method (peft): {_first_line(err)}") from None


def _train(model, task, batch) -> list[float]:
    """STEPS optimizer steps on one batch, in evaluation mode (no dropout: any fall is the tuner's)."""
    from peftlab.methods import trainable_parameters

    optimizer = torch.optim.AdamW(trainable_parameters(model), lr=1e-2)
    losses = []
    for _ in range(STEPS):
        total, count = task.loss(model, batch)
        (total / count).backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(float(total / count))
    return losses


def _reload(model, conf, cache_dir: str, task, batch):
    """(the saved adapter on a fresh base by plain peft, that fresh base's own logits)."""
    from peft import PeftModel

    from peftlab.models import load_backbone

    with tempfile.TemporaryDirectory() as folder:
        model.save_pretrained(folder)
        torch.manual_seed(1)  # another seed: a task head missing from the adapter shows as other logits
        fresh = load_backbone(conf.model, cache_dir, task).model.eval()
        fresh_base = _logits(fresh, batch)
        return PeftModel.from_pretrained(fresh, folder).eval(), fresh_base


def _merges(model, batch, expected) -> Any:
    """True: merge_and_unload gives the adapter's logits; False (with why) or None: no merge."""
    if getattr(model.active_peft_config, "is_prompt_learning", False):
        return None
    try:
        merged = model.merge_and_unload().eval()
    except Exception:  # noqa: BLE001  (peft refuses merging for many tuners)
        return False
    return _same(_logits(merged, batch), expected, merged)


@lru_cache(maxsize=None)
def _setup(model_name: str, data_name: str, cache_dir: str):
    """(validated config, task, one training batch): the same for every tuner."""
    from hydra import compose, initialize_config_dir
    from omegaconf import open_dict

    from peftlab.config import CONF_DIR, validate
    from peftlab.data.datamodule import TaskDataModule
    from peftlab.models import load_backbone
    from peftlab.tasks import make_task

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("train", overrides=[f"model={model_name}", f"data={data_name}", "data.max_length=384",
                                          "method=lora", "logger=none"])
    with open_dict(cfg):
        cfg.paths.run_dir = "unused"  # validated as training validates, never written
    conf = validate(cfg)
    task = make_task(conf.data)
    tokenizer = load_backbone(conf.model, cache_dir, task).tokenizer
    batch = next(iter(TaskDataModule(task, tokenizer, seed=0).train_dataloader()))
    return conf, task, batch


def _fields(peft_type: str) -> set[str]:
    import dataclasses

    from peftlab.methods.generic import config_class

    return {f.name for f in dataclasses.fields(config_class(peft_type))}


def _targets(task_type: str, cache_dir: str) -> list[str]:
    from peftlab.models import build_on_meta

    conf, task, _ = _setup(*probed_task_types()[task_type], cache_dir)
    names = {n.rsplit(".", 1)[-1] for n, _ in build_on_meta(conf.model, task, cache_dir).named_modules()}
    return next(t for t in TARGETS if set(t) <= names)


def _same(got: torch.Tensor, expected: torch.Tensor, model) -> bool:
    """Whether ``got`` is ``expected`` up to the rounding of ``model``'s forward (NaN never is)."""
    from peftlab.export.verify import logits_tolerance

    return got.shape == expected.shape and bool((got - expected).abs().max() <= logits_tolerance(model, expected))


def _logits(model, batch) -> torch.Tensor:
    """The logits at the input's positions (prompt learning puts virtual tokens before them)."""
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.float()
    return logits[:, -batch["input_ids"].shape[1]:] if logits.dim() == 3 else logits
