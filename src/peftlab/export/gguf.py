"""A merged model written as one GGUF file (llama.cpp's format) with its tokenizer, through the
``gguf`` package's ``GGUFWriter``; read back with transformers' GGUF loader by ``gguf_check.py``.

What the writer does is what llama.cpp's ``convert_hf_to_gguf.py`` does for the architectures
below, and what transformers' GGUF loader undoes: transformers' names mapped to GGUF's
(``TensorNameMap``), the query and key rows of a Llama permuted into llama.cpp's rotary layout
(the loader permutes them back), the shape of the model as ``<arch>.*`` keys, the tokenizer as
``tokenizer.ggml.*`` keys (byte-level BPE, llama.cpp's ``gpt2`` model) with its chat template and
special token ids. Vectors (norms, biases) stay f32, as llama.cpp keeps them; matrices are written
in ``gguf_type``.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch

from peftlab.config.merge import GGUF_TYPES
from peftlab.errors import ConfigError


@dataclass(frozen=True)
class Architecture:
    gguf_name: str  # general.architecture, and the prefix of the shape keys
    permute_qk: bool  # llama.cpp's rotary layout for the query and key rows (transformers undoes it)


# transformers model_type -> how it is written; transformers' GGUF loader reads these back
ARCHITECTURES = {"llama": Architecture("llama", permute_qk=True), "qwen2": Architecture("qwen2", permute_qk=False)}
# the config values that decide the forward pass: each must read back from the file as it was
SHAPE_KEYS = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
              "head_dim", "rms_norm_eps", "rope_theta", "vocab_size", "tie_word_embeddings", "hidden_act",
              "attention_bias", "mlp_bias", "rope_scaling", "sliding_window", "use_sliding_window")
TOKEN_NORMAL, TOKEN_CONTROL, TOKEN_USER_DEFINED, TOKEN_UNUSED = 1, 3, 4, 5


def check_architecture(config: Any, auto_class: Any) -> str:
    """The model's type when the writer maps it (a causal LM of a mapped architecture); otherwise one line."""
    model_type = getattr(config, "model_type", None)
    if model_type not in ARCHITECTURES:
        raise ConfigError(f"format=gguf: the writer does not map architecture {model_type!r}; it maps "
                          f"{', '.join(ARCHITECTURES)} (format=safetensors exports any model)")
    if getattr(auto_class, "__name__", "") != "AutoModelForCausalLM":
        raise ConfigError("format=gguf: only a causal language model is exported as GGUF; this run's model is a "
                          f"{getattr(auto_class, '__name__', auto_class)} (format=safetensors exports it)")
    return model_type


def check_format(run: Any, fmt: str, dequantize: bool, cache_dir: Optional[str] = None) -> None:
    """What format=gguf needs of a run (a mapped causal LM, a full-precision base or dequantize=true),
    checked before any weight loads; dequantize is read by format=gguf only."""
    if fmt != "gguf":
        if dequantize:
            raise ConfigError("dequantize: read only with format=gguf (the safetensors merge of a run on an 8/4-bit "
                              "base always merges into the full-precision base)")
        return
    from peftlab.models import model_config
    from peftlab.tasks import make_task

    check_quantized_base(run.precision.quantize, dequantize)
    check_architecture(model_config(run.model, cache_dir or run.paths.cache_dir), make_task(run.data).auto_class())


def check_quantized_base(quantize: Optional[str], dequantize: bool) -> None:
    """A run trained on an 8/4-bit base exports as GGUF only when the user asks for the full-precision merge."""
    if quantize and not dequantize:
        raise ConfigError(f"run_dir: the run trained on a {quantize} base; format=gguf writes the adapter merged "
                          "into the full-precision base only with dequantize=true (as the safetensors merge does)")
    if dequantize and not quantize:
        raise ConfigError("dequantize: true is read only for a run trained on an int8/nf4/fp4 base; this run's base "
                          "is not quantized")


def file_name(run: Any, gguf_type: str) -> str:
    stem = re.sub(r"[^A-Za-z0-9_.-]+", "-", f"{run.model.name}-{run.method.name}").strip("-.")
    return f"{stem}-{gguf_type}.gguf"


def _rope_theta(config: Any) -> Optional[float]:
    params = getattr(config, "rope_parameters", None) or {}
    return params.get("rope_theta", getattr(config, "rope_theta", None))


def config_value(config: Any, key: str) -> Any:
    if key == "rope_theta":
        return _rope_theta(config)
    if key == "rope_scaling":
        params = getattr(config, "rope_parameters", None) or {}
        return params.get("rope_type", "default") if params else getattr(config, "rope_scaling", None)
    if key == "head_dim":
        return getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    return getattr(config, key, None)


def check_read_back(written: Any, read: Any) -> None:
    """Every value of SHAPE_KEYS the file reads back as: one line naming the first that does not."""
    for key in SHAPE_KEYS:
        a, b = config_value(written, key), config_value(read, key)
        if a is None or (isinstance(a, bool) and not a and b is None):
            continue
        if not (a == b or (isinstance(a, float) and isinstance(b, float) and abs(a - b) <= 1e-6 * abs(a))):
            raise ConfigError(f"format=gguf: the model's {key}={a!r} is not carried by a GGUF file as transformers "
                              f"reads it (it reads {b!r}); format=safetensors exports this model")


def permute(weights: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's rotary layout: each head's two halves interleaved (``LlamaModel.permute``)."""
    return (weights.reshape(n_head, 2, weights.shape[0] // n_head // 2, *weights.shape[1:])
            .swapaxes(1, 2).reshape(weights.shape))


def write_tensor(writer: Any, name: str, data: np.ndarray, gguf_type: str) -> None:
    """A vector in f32; a matrix in ``gguf_type`` (q8_0 where its rows split into 32-wide blocks, else f16)."""
    import gguf

    data = np.ascontiguousarray(data, dtype=np.float32)
    if data.ndim == 1 or gguf_type == "f32":
        writer.add_tensor(name, data)
    elif gguf_type == "f16" or (gguf_type == "q8_0" and data.shape[-1] % 32):
        writer.add_tensor(name, data.astype(np.float16))
    else:
        qtype = gguf.GGMLQuantizationType.BF16 if gguf_type == "bf16" else gguf.GGMLQuantizationType.Q8_0
        writer.add_tensor(name, gguf.quants.quantize(data, qtype), raw_dtype=qtype)


def file_type(gguf_type: str) -> int:
    import gguf

    return {"f32": gguf.LlamaFileType.ALL_F32, "f16": gguf.LlamaFileType.MOSTLY_F16,
            "bf16": gguf.LlamaFileType.MOSTLY_BF16, "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0}[gguf_type]


def write_gguf(model: Any, tokenizer: Any, path: Path, gguf_type: str, name: str) -> None:
    """``model`` (a transformers causal LM of a mapped architecture) and ``tokenizer`` as one GGUF file."""
    import gguf

    if gguf_type not in GGUF_TYPES:
        raise ConfigError(f"gguf_type must be one of {', '.join(GGUF_TYPES)}, got {gguf_type!r}")
    config = model.config
    arch = ARCHITECTURES[check_architecture(config, _causal_lm())]
    writer = gguf.GGUFWriter(path, arch.gguf_name)
    _write_shape(writer, config, name, gguf_type)
    _write_tokenizer(writer, tokenizer, config.vocab_size)
    n_head, n_kv = config.num_attention_heads, config.num_key_value_heads or config.num_attention_heads
    names = gguf.get_tensor_name_map(_model_arch(arch.gguf_name), config.num_hidden_layers)
    tied = bool(getattr(config, "tie_word_embeddings", False))
    with torch.no_grad():
        for hf_name, tensor in model.state_dict().items():
            if tied and hf_name == "lm_head.weight":
                continue  # llama.cpp writes no output matrix for tied embeddings
            base, _, suffix = hf_name.rpartition(".")
            gguf_name = names.get_name(base)
            if gguf_name is None:
                raise ConfigError(f"format=gguf: no GGUF name for the tensor {hf_name!r} of architecture "
                                  f"{arch.gguf_name}; format=safetensors exports this model")
            data = tensor.detach().to(torch.float32).cpu().numpy()
            if arch.permute_qk and gguf_name.endswith((".attn_q", ".attn_k")):
                data = permute(data, n_head if gguf_name.endswith(".attn_q") else n_kv)
            write_tensor(writer, f"{gguf_name}.{suffix}", data, gguf_type)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def _causal_lm() -> Any:
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM


def _model_arch(gguf_name: str) -> Any:
    import gguf

    return next(a for a, n in gguf.MODEL_ARCH_NAMES.items() if n == gguf_name)


def _write_shape(writer: Any, config: Any, name: str, gguf_type: str) -> None:
    head_dim = config_value(config, "head_dim")
    writer.add_name(name)
    writer.add_type("model")
    writer.add_file_type(file_type(gguf_type))
    if gguf_type == "q8_0":
        import gguf

        writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads or config.num_attention_heads)
    writer.add_rope_dimension_count(head_dim)
    writer.add_key_length(head_dim)
    writer.add_value_length(head_dim)
    if _rope_theta(config) is not None:
        writer.add_rope_freq_base(float(_rope_theta(config)))
    writer.add_layer_norm_rms_eps(float(config.rms_norm_eps))
    writer.add_vocab_size(config.vocab_size)


def _byte_level(state: dict[str, Any]) -> bool:
    """Whether a tokenizers JSON state is byte-level BPE (the pre-tokenizer or decoder is ByteLevel)."""
    text = json.dumps([state.get("pre_tokenizer"), state.get("decoder")])
    return state["model"].get("type") == "BPE" and '"ByteLevel"' in text


def _pre_name(state: dict[str, Any]) -> str:
    """llama.cpp's name of the split the tokenizer makes before BPE (transformers' GGUF reader
    rebuilds the split from it); ``default``: GPT-2's."""
    from transformers.integrations.gguf.gguf_tokenizer_mapping import GGUF_PRE_TOKENIZER_SPLITS

    text = json.dumps(state.get("pre_tokenizer"))
    return next((n for n, split in GGUF_PRE_TOKENIZER_SPLITS.items() if json.dumps(split)[1:-1] in text), "default")


def _write_tokenizer(writer: Any, tokenizer: Any, vocab_size: int) -> None:
    state = json.loads(tokenizer.backend_tokenizer.to_str())
    if not _byte_level(state):
        raise ConfigError(f"format=gguf: the writer maps byte-level BPE tokenizers (llama.cpp's gpt2 model); this "
                          f"model's is {state['model'].get('type')} (format=safetensors exports it)")
    vocab = tokenizer.get_vocab()
    size = max(vocab_size, max(vocab.values()) + 1)
    tokens, types = [f"[PAD{i}]" for i in range(size)], [TOKEN_UNUSED] * size
    for token, i in vocab.items():
        tokens[i], types[i] = token, TOKEN_NORMAL
    for i, added in tokenizer.added_tokens_decoder.items():
        types[i] = TOKEN_CONTROL if added.special else TOKEN_USER_DEFINED
    merges = [m if isinstance(m, str) else " ".join(m) for m in state["model"].get("merges") or []]
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(_pre_name(state))
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    if merges:
        writer.add_token_merges(merges)
    else:  # no merges (a byte vocabulary): an empty list is not written, and readers then rebuild them from scores
        writer.add_token_scores([0.0] * size)
    for key, add in (("bos", writer.add_bos_token_id), ("eos", writer.add_eos_token_id),
                     ("unk", writer.add_unk_token_id), ("pad", writer.add_pad_token_id)):
        if getattr(tokenizer, f"{key}_token_id", None) is not None:
            add(getattr(tokenizer, f"{key}_token_id"))
    probe = tokenizer("a").input_ids
    writer.add_add_bos_token(bool(probe) and probe[0] == tokenizer.bos_token_id)
    writer.add_add_eos_token(bool(probe) and probe[-1] == tokenizer.eos_token_id)
    template = getattr(tokenizer, "chat_template", None)
    if isinstance(template, str):
        writer.add_chat_template(template)
