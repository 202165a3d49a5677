"""Which weights the test split scores, chosen on the validation split: the final ones, or
(``validation.select=best``) those of the check with the best validation metric. ``BestCheck``
follows the checks while training and keeps the best one's trainable weights in
``checkpoints/best/``; ``select_weights`` puts them back in place; ``validate_chosen`` measures the
weights chosen, which metrics.json records as ``val``.

A killed run resumes to the same choice: the history of checks travels in every checkpoint, and a
step checkpoint is written before that step's validation, so a run resumed from one validates that
step first (Lightning would skip it). ``resume_from=`` into another folder is a new run: its choice
is among its own checks."""

from __future__ import annotations

import itertools
import logging
from pathlib import Path
from typing import Any, Optional

import lightning as L
import torch
from lightning.pytorch.trainer.states import TrainerFn

from peftlab.engine.trainer import split_metrics
from peftlab.runs.files import atomic_path

log = logging.getLogger("peftlab.train")


class BestCheck(L.Callback):
    """The best validation check's trainable weights (an equal later score keeps the earlier)."""

    def __init__(self, run_dir: Path, metric: str, greater_is_better: bool):
        self.folder = Path(run_dir) / "checkpoints" / "best"
        self.metric, self.greater = metric, greater_is_better
        self.checks: dict[int, float] = {}  # step -> score of every check of this run
        self.best: Optional[int] = None
        self._restored: Optional[dict[str, Any]] = None

    # ------------------------------------------------------------------------------- checkpoints
    def state_dict(self) -> dict[str, Any]:
        return {"folder": str(self.folder), "checks": dict(self.checks), "best": self.best}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._restored = state_dict

    def on_train_start(self, trainer: L.Trainer, pl_module: Any) -> None:
        state, self._restored = self._restored, None
        if state is None or state.get("folder") != str(self.folder):  # a new run, perhaps from a checkpoint
            return
        self.checks = {int(k): float(v) for k, v in state["checks"].items()}
        self.best = state["best"]
        if _restored_at_a_check(trainer) and trainer.global_step not in self.checks:
            # the checkpoint was written before this step's validation, which the resumed fit skips
            self._record(trainer, pl_module, _validate_now(trainer, pl_module)[self.metric])

    # ------------------------------------------------------------------------------------ checks
    def on_validation_end(self, trainer: L.Trainer, pl_module: Any) -> None:
        if trainer.sanity_checking or trainer.state.fn != TrainerFn.FITTING:  # not trainer.validate() after fit
            return
        self._record(trainer, pl_module, float(trainer.callback_metrics[f"val/{self.metric}"]))

    def _record(self, trainer: L.Trainer, pl_module: Any, score: float) -> None:
        step = int(trainer.global_step)
        self.checks[step] = score
        best = self.checks.get(self.best) if self.best is not None else None
        if best is not None and not (score > best if self.greater else score < best):
            return
        previous, self.best = self.best, step
        if trainer.is_global_zero:
            from safetensors.torch import save_file

            weights = {n: p.detach().cpu().contiguous() for n, p in pl_module.named_parameters() if p.requires_grad}
            self.folder.mkdir(parents=True, exist_ok=True)
            with atomic_path(self.path(step), overwrite=True) as tmp:
                save_file(weights, str(tmp))
            if previous is not None and previous != step:
                self.path(previous).unlink(missing_ok=True)

    def path(self, step: int) -> Path:
        return self.folder / f"step-{step}.safetensors"


def _restored_at_a_check(trainer: L.Trainer) -> bool:
    """Whether the batch the restored fit ended on was one after which Lightning validates."""
    every = trainer.val_check_batch
    if not isinstance(every, int) or every <= 0:
        return False
    progress = trainer.fit_loop.epoch_loop.batch_progress
    done = progress.total.ready if trainer.check_val_every_n_epoch is None else progress.current.ready
    return done > 0 and done % every == 0


@torch.no_grad()
def _validate_now(trainer: L.Trainer, pl_module: Any) -> dict[str, float]:
    """The task's metrics on the validation split, measured outside Lightning's loops."""
    metrics = pl_module.task.metrics(full=True).to(pl_module.device)
    loader = trainer.datamodule.val_dataloader()
    limit = trainer.limit_val_batches  # as Lightning's loop reads it: a count, or a share of the batches
    count = min(limit, len(loader)) if isinstance(limit, int) else int(len(loader) * limit)
    was_training = pl_module.model.training
    pl_module.model.eval()
    try:
        for batch in itertools.islice(loader, count):
            batch = pl_module.transfer_batch_to_device(batch, pl_module.device, 0)
            pl_module.task.evaluate_batch(pl_module.model, pl_module.tokenizer, batch, metrics)
        return metrics.compute()
    finally:
        pl_module.model.train(was_training)


def select_weights(trainer: L.Trainer, module: Any, best: Optional[BestCheck]) -> dict[str, Any]:
    """Put the chosen weights in place in ``module``; returns what metrics.json records of the choice."""
    last = {"select": "last", "step": int(trainer.global_step)}
    if best is None:
        return last
    trainer.strategy.barrier()  # the first process has written the file every process reads
    if best.best is None:  # no check ran (trainer.limit_val_batches=0 is refused before)
        return {**last, "note": "no validation check ran: the final weights"}
    from safetensors.torch import load_file

    weights = load_file(str(best.path(best.best)))
    expected = {n for n, p in module.named_parameters() if p.requires_grad}
    if set(weights) != expected:
        raise RuntimeError(f"{best.path(best.best)} does not hold this run's trainable weights")
    module.load_state_dict(weights, strict=False)
    score = best.checks[best.best]
    log.info("validation.select=best: the weights of step %d (val.%s %s; the run ended at step %d)",
             best.best, best.metric, score, trainer.global_step)
    return {"select": "best", "step": best.best, "metric": f"val.{best.metric}", "score": score,
            "checkpoint": str(best.path(best.best)), "last_step": int(trainer.global_step),
            "checks": {str(k): v for k, v in sorted(best.checks.items())}}


def validate_chosen(trainer: L.Trainer, module: Any, data: Any) -> dict[str, float]:
    """The task's metrics (generation included) on the validation split, on the weights in place."""
    module.full_validation = True
    results = trainer.validate(module, datamodule=data, verbose=False)
    return split_metrics(results[0], "val")
