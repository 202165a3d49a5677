"""Load a backbone and its tokenizer: from a pip package, a random init, the hub (hf://<id>) or a folder.

Every backbone is loaded with ``from_pretrained`` from a folder that plain transformers can load
too (packaged GGUF files and random-init models are written once into ``paths.cache_dir``), so an
adapter's ``base_model_name_or_path`` always names a loadable base.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Optional

import torch

from peftlab.config.checks import hub_id
from peftlab.config.schema import ModelSchema
from peftlab.errors import ConfigError
from peftlab.models.quantized import keep_4bit_weights_trainable
from peftlab.models.quiet import quiet_libraries
from peftlab.models.sources import (
    arch_config,
    build_random,
    cache_folder,
    check_cache_writable,
    convert_gguf,
    package_dir,
    random_tokenizer,
)
from peftlab.tasks import Task

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16, "float64": torch.float64}


@dataclass
class Backbone:
    model: torch.nn.Module
    tokenizer: Any
    path: str  # what from_pretrained loaded: a local folder or a hub id


def display_name(cfg: ModelSchema) -> str:
    return cfg.name_or_path if cfg.name_or_path else cfg.name


def resolve_path(cfg: ModelSchema, cache_dir: str | os.PathLike) -> str:
    """A local folder (or hub id) that ``from_pretrained`` loads for ``cfg``, building it if needed."""
    cache = Path(os.path.expanduser(str(cache_dir)))
    if cfg.name_or_path:  # hf://<hub id> (the network), or a local folder (``~`` is the user's home)
        return hub_id(cfg.name_or_path) or os.path.expanduser(cfg.name_or_path)
    if cfg.source == "package_gguf":
        return str(convert_gguf(cfg, cache))
    if cfg.source == "package_folder":
        folder = package_dir(cfg.package) / cfg.file
        if not (folder / "config.json").is_file():
            raise ConfigError(f"model.file: no HF model folder {cfg.file!r} in the package {cfg.package!r}")
        return str(folder)
    if cfg.source == "random":
        return str(build_random(cfg, cache))
    raise ConfigError(f"model.source: {cfg.source!r} models have no weights to load (use peftlab-params)")


def load_backbone(cfg: ModelSchema, cache_dir: str | os.PathLike, task: Task, dtype: str = "float32",
                  quantization: Any = None, device_map: Any = None) -> Backbone:
    """The backbone for ``task`` (its auto class, with its head arguments) and its tokenizer, with a
    pad token set. ``quantization`` (a BitsAndBytesConfig) loads the weights quantized, through
    ``from_pretrained`` onto ``device_map``; nothing is cast after loading."""
    from transformers import AutoTokenizer

    quiet_libraries()
    path = resolve_path(cfg, cache_dir)
    common = _load_options(cfg, path)
    with _loading(cfg, path):
        tokenizer = AutoTokenizer.from_pretrained(path, **common)
        quantized = {"quantization_config": quantization, "device_map": device_map} if quantization else {}
        model = task.auto_class().from_pretrained(path, dtype=DTYPES[dtype], **common, **task.model_kwargs(),
                                                  **quantized)
    if quantization:
        keep_4bit_weights_trainable(model)
    ensure_pad_token(tokenizer, model)
    return Backbone(model=model, tokenizer=tokenizer, path=path)


def load_tokenizer(cfg: ModelSchema, cache_dir: str | os.PathLike) -> tuple[Any, str]:
    """(the tokenizer ``load_backbone`` would load, where it comes from), reading no weights and
    building nothing (the dry run): a random-init model's tokenizer is made in memory, a packaged
    GGUF's is read from its converted folder or, before the conversion, from the file itself."""
    from transformers import AutoTokenizer

    quiet_libraries()
    cache = Path(os.path.expanduser(str(cache_dir)))
    folder = cache_folder(cfg, cache)
    if folder is not None and not (folder / "config.json").is_file():  # built on first use: the cache must take it
        check_cache_writable(folder.parent)
        if cfg.source == "random":
            tokenizer = random_tokenizer(cfg)
            ensure_pad_token(tokenizer)
            return tokenizer, f"random init (model.init_seed={cfg.init_seed}), built into {folder} on first use"
        with _loading(cfg, str(folder)):
            tokenizer = AutoTokenizer.from_pretrained(package_dir(cfg.package), gguf_file=cfg.file)
        ensure_pad_token(tokenizer)
        return tokenizer, f"{package_dir(cfg.package) / cfg.file}, converted once into {folder} on first use"
    path = resolve_path(cfg, cache_dir)  # a folder that exists, or a hub id: nothing is built
    with _loading(cfg, path):
        tokenizer = AutoTokenizer.from_pretrained(path, **_load_options(cfg, path))
    ensure_pad_token(tokenizer)
    return tokenizer, path


def _load_options(cfg: ModelSchema, path: str) -> dict[str, Any]:
    local = os.path.isdir(path)
    if cfg.name_or_path and not local and hub_id(cfg.name_or_path) is None:
        raise ConfigError(f"model.name_or_path: no such folder {path!r} (a hub model is named hf://<id>; only "
                          "that reaches the network)")
    return dict(revision=cfg.revision, trust_remote_code=cfg.trust_remote_code,
                local_files_only=local or cfg.local_files_only)


@contextlib.contextmanager
def _loading(cfg: ModelSchema, path: str) -> Iterator[None]:
    """What transformers refuses while loading ``path`` as one line naming the model."""
    try:
        yield
    except (OSError, ValueError) as err:
        where = "model.name_or_path" if cfg.name_or_path else f"model={cfg.name}"
        reason = str(err).splitlines()[0]
        if "custom code" in reason:
            reason = ("its code lives in the model folder and runs only if you allow it (model.trust_remote_code=true "
                      "on the peftlab-train command line, trust_remote_code=true for peftlab-eval and peftlab-merge)")
        elif cfg.local_files_only and not os.path.isdir(path):
            reason = ("a hub model that a run folder names is read from the local cache only, and it is not there "
                      "(download it first, e.g. peftlab-train with its model once)")
        raise ConfigError(f"{where}: cannot load {path!r}: {reason}") from None


def ensure_pad_token(tokenizer, model=None) -> None:
    """Batched training and generation need a pad token; reuse EOS where the model has none."""
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    if model is None:
        return
    if getattr(model.config, "pad_token_id", None) is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    gen = getattr(model, "generation_config", None)
    if gen is not None and gen.pad_token_id is None:
        gen.pad_token_id = tokenizer.pad_token_id


def enable_gradient_checkpointing(model) -> None:
    """Recompute activations in the backward pass; inputs require grad so that adapters on a
    frozen backbone still receive gradients."""
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.enable_input_require_grads()
    model.config.use_cache = False


def model_config(cfg: ModelSchema, cache_dir: str | os.PathLike):
    """The transformers config of ``cfg`` without touching any weights."""
    from transformers import AutoConfig

    if cfg.name_or_path is None and cfg.source in ("meta", "random"):
        return arch_config(cfg, random_tokenizer(cfg) if cfg.source == "random" else None)
    if cfg.name_or_path is None and cfg.source == "package_gguf":
        cached = sorted((Path(os.path.expanduser(str(cache_dir))) / "models").glob(f"{cfg.name}-*/config.json"))
        if cached:
            return AutoConfig.from_pretrained(cached[-1].parent)
        return AutoConfig.from_pretrained(package_dir(cfg.package), gguf_file=cfg.file)
    path = resolve_path(cfg, cache_dir)
    return AutoConfig.from_pretrained(path, revision=cfg.revision, trust_remote_code=cfg.trust_remote_code,
                                      local_files_only=os.path.isdir(path) or cfg.local_files_only)


def build_on_meta(cfg: ModelSchema, task: Task, cache_dir: str | os.PathLike):
    """The model for ``task`` with every tensor on the meta device: shapes, no memory."""
    config = model_config(cfg, cache_dir)
    for key, value in task.model_kwargs().items():
        setattr(config, key, value)
    if getattr(config, "pad_token_id", None) is None:  # batched heads find the last token by the pad id
        config.pad_token_id = getattr(config, "eos_token_id", None) or 0
    with torch.device("meta"):
        return task.auto_class().from_config(config)


def load_run_model(model_cfg: ModelSchema, run_dir: Optional[Path], cache_dir: str, task: Task, dtype: str):
    """(model, tokenizer): the base model, or a run's adapter on it (its whole model when the run
    saved a whole model instead of an adapter)."""
    backbone = load_backbone(model_cfg, cache_dir, task, dtype)
    if run_dir is None:
        return backbone.model, backbone.tokenizer
    adapter = Path(run_dir) / "adapter"
    if (adapter / "adapter_config.json").is_file():
        from peftlab.runs.adapters import load_adapter

        return load_adapter(backbone.model, adapter, "run_dir"), backbone.tokenizer
    if not (adapter / "config.json").is_file():
        raise ConfigError(f"run_dir: {adapter} holds neither a peft adapter (adapter_config.json) nor a whole "
                          "model (config.json)")
    return task.auto_class().from_pretrained(adapter, dtype=DTYPES[dtype], local_files_only=True), backbone.tokenizer
