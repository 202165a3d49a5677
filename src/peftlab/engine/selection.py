"""Which weights the test split scores, chosen on the validation split: the final ones, or
(``validation.select=best``) those of the check with the best validation metric, kept by the
trainer's best-checkpoint callback (engine/trainer.py) and put back in place here; then the
validation of the weights chosen, which metrics.json records as ``val``."""

from __future__ import annotations

import logging
from typing import Any, Optional

import lightning as L
from lightning.pytorch.callbacks import ModelCheckpoint

from peftlab.engine.checkpoints import read_checkpoint
from peftlab.engine.trainer import split_metrics

log = logging.getLogger("peftlab.train")


def select_weights(trainer: L.Trainer, module: Any, best: Optional[ModelCheckpoint]) -> dict[str, Any]:
    """Put the chosen weights in place in ``module``; returns what metrics.json records of the choice."""
    last = {"select": "last", "step": int(trainer.global_step)}
    if best is None:
        return last
    trainer.strategy.barrier()  # the first process has written the file every process reads
    if not best.best_model_path:  # no check ran (trainer.limit_val_batches=0 is refused before)
        return {**last, "note": "no validation check ran: the final weights"}
    checkpoint = read_checkpoint(best.best_model_path)
    module.on_load_checkpoint(checkpoint)  # exactly this run's trainable parameters
    module.load_state_dict(checkpoint["state_dict"], strict=False)
    score = float(best.best_model_score) if best.best_model_score is not None else None
    log.info("validation.select=best: the weights of step %d (%s %s; the run ended at step %d)",
             checkpoint["global_step"], best.monitor, score, trainer.global_step)
    return {"select": "best", "step": int(checkpoint["global_step"]), "metric": best.monitor.replace("/", "."),
            "score": score, "checkpoint": str(best.best_model_path), "last_step": int(trainer.global_step)}


def validate_chosen(trainer: L.Trainer, module: Any, data: Any) -> dict[str, float]:
    """The task's metrics (generation included) on the validation split, on the weights in place."""
    module.full_validation = True
    results = trainer.validate(module, datamodule=data, verbose=False)
    return split_metrics(results[0], "val")
