"""``MergeSchema``: everything ``peftlab-merge`` reads (re-exported by ``peftlab.config.commands``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Optional

from omegaconf import MISSING

from peftlab.config.checks import check as _check
from peftlab.config.checks import one_of as _one_of
from peftlab.config.schema import PathsSchema
from peftlab.errors import ConfigError

FORMATS = ("safetensors", "gguf")
# the precisions a GGUF file's matrices are written in (vectors, the norms and biases, stay f32)
GGUF_TYPES = ("f32", "f16", "bf16", "q8_0")


@dataclass
class MergeSchema:
    """Everything ``peftlab-merge`` reads."""

    plugins: List[str] = field(default_factory=list)  # your own modules to load first: docs/guides/plugins.md
    run_dir: str = MISSING  # a finished peftlab-train run folder of a mergeable method
    trust_remote_code: bool = False  # a run folder's own setting is never obeyed: the user decides here
    # safetensors: a transformers model folder; gguf: one .gguf file with its tokenizer (llama.cpp's format)
    format: str = "safetensors"
    dtype: Optional[str] = None  # the merged model's dtype (safetensors); null: the dtype the run trained in
    gguf_type: str = "f16"  # format=gguf: the precision of the file's matrices
    # format=gguf of a run trained on an 8/4-bit base: true exports the adapter merged into the
    # full-precision base (what the safetensors merge does), false refuses
    dequantize: bool = False
    out_dir: Optional[str] = None  # null: <run_dir>/merged
    verify_batches: int = 2  # validation batches whose logits are compared
    max_test_examples: Optional[int] = None  # null: the whole test split for the metric check
    min_top1: Optional[float] = None  # top-1 agreement required; null: 1.0 for fp32, 0.99 for bf16/fp16
    paths: PathsSchema = MISSING
    seed: int = 42

    def __post_init__(self) -> None:
        _one_of("format", self.format, FORMATS)
        _one_of("gguf_type", self.gguf_type, GGUF_TYPES)
        if self.dtype is not None:
            _one_of("dtype", self.dtype, ("float32", "bfloat16", "float16"))
            if self.format == "gguf":  # the merge runs in float32; the file's precision is gguf_type's
                raise ConfigError(f"dtype: not read with format=gguf, got {self.dtype!r}; gguf_type= sets the "
                                  f"precision of the file ({', '.join(GGUF_TYPES)})")
        _check(self.verify_batches > 0, "verify_batches", "must be > 0", self.verify_batches)
        m = self.max_test_examples
        _check(m is None or m > 0, "max_test_examples", "must be > 0 or null", m)
        t = self.min_top1
        _check(t is None or 0 < t <= 1, "min_top1", "must be in (0, 1] or null", t)
