"""Library chatter that says nothing about a run, dropped where the libraries are first driven:
loading a backbone (transformers' per-file loading bars, deprecations inside the libraries,
advertisements) and building a Trainer (engine/trainer.py adds Lightning's)."""

from __future__ import annotations

import logging
import warnings


class NoAdverts(logging.Filter):
    """Lightning 2.6 logs a tip advertising its cloud logger whenever a Trainer is made; bitsandbytes
    0.50 says at import, on CPUs, that it looks for optional hub kernels (4-bit runs on its own)."""

    def filter(self, record: logging.LogRecord) -> bool:
        text = str(record.msg)
        return not (text.startswith("💡 Tip") or "kernels-community" in text)


def drop_warnings(*patterns: str) -> None:
    for pattern in patterns:
        warnings.filterwarnings("ignore", message=pattern)


def filter_loggers(*names: str) -> None:
    for name in names:
        logger = logging.getLogger(name)
        if not any(isinstance(f, NoAdverts) for f in logger.filters):
            logger.addFilter(NoAdverts())


def quiet_libraries() -> None:
    """transformers' loading bars off; peft's and bitsandbytes' notes that say nothing about the run."""
    import transformers

    transformers.utils.logging.disable_progress_bar()
    drop_warnings(r".*is_gradient_checkpointing.*",
                  # bitsandbytes' 8-bit matmul casts its inputs to fp16 by design (LLM.int8)
                  r".*MatMul8bitLt: inputs will be cast.*",
                  # peft 0.21 checks an AdaLoRA adapter's rank pattern against module names it never
                  # holds (its keys end in .lora_E); AdaLoRA's own loader applies the pattern
                  # (tests/test_method_zoo.py: a reload reproduces the run's test loss)
                  r".*rank_pattern keys did not match any targeted module.*")
    filter_loggers("bitsandbytes.backends.cpu.ops")
