"""The ``trainer`` group: the arguments of ``lightning.Trainer`` a run may change, each checked
here before any work, with the combinations Lightning would reject only once training started."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

from peftlab.config.checks import check as _check


@dataclass
class TrainerSchema:
    """Arguments of ``lightning.Trainer`` that a run may change."""

    max_steps: int = 60  # the default job's length (make run): the figures of the README and docs/ are of 60 steps
    max_epochs: int = -1
    # an int: validate every N training batches; a float in (0, 1]: a fraction of an epoch (needs
    # check_val_every_n_epoch); null: once an epoch
    val_check_interval: Any = 30
    # null: validation counts training batches across epochs (val_check_interval), not epochs
    check_val_every_n_epoch: Optional[int] = None
    log_every_n_steps: int = 10
    accumulate_grad_batches: int = 1
    gradient_clip_val: Optional[float] = 1.0
    # an int: that many batches; a float in [0, 1]: that fraction; null: all
    limit_train_batches: Any = None
    limit_val_batches: Any = None
    limit_test_batches: Any = None
    num_sanity_val_steps: int = 0
    fast_dev_run: Any = False
    # warn: deterministic algorithms where torch has them (bitwise-equal reruns on CPU), a warning elsewhere;
    # true: an error elsewhere; false: torch's own choice
    deterministic: Any = "warn"
    enable_progress_bar: bool = True

    def __post_init__(self) -> None:
        _check(self.max_steps > 0 or self.max_steps == -1, "trainer.max_steps", "must be > 0 (or -1 for epochs)",
               self.max_steps)
        _check(self.max_steps > 0 or self.max_epochs > 0, "trainer.max_epochs",
               "must be > 0 when trainer.max_steps is -1", self.max_epochs)
        _check(self.log_every_n_steps > 0, "trainer.log_every_n_steps", "must be > 0", self.log_every_n_steps)
        _check(self.accumulate_grad_batches > 0, "trainer.accumulate_grad_batches", "must be > 0",
               self.accumulate_grad_batches)
        g = self.gradient_clip_val
        _check(g is None or g > 0, "trainer.gradient_clip_val", "must be > 0 or null", g)
        self._check_limits()
        self._check_validation()
        d = self.deterministic
        _check(isinstance(d, bool) or d == "warn", "trainer.deterministic", "must be true, false or warn", d)
        f = self.fast_dev_run
        _check(isinstance(f, bool) or (isinstance(f, int) and f >= 0), "trainer.fast_dev_run",
               "must be true, false or a number of batches >= 0", f)
        _check(self.num_sanity_val_steps >= -1, "trainer.num_sanity_val_steps", "must be >= 0 (or -1 for all)",
               self.num_sanity_val_steps)

    def _check_limits(self) -> None:
        """Lightning's limits: training and testing something (a limit of 0 would train or test
        nothing and still report), validation may be switched off with 0."""
        for key, least in (("limit_train_batches", 1), ("limit_val_batches", 0), ("limit_test_batches", 1)):
            v = getattr(self, key)
            count = isinstance(v, int) and not isinstance(v, bool) and v >= least
            share = isinstance(v, float) and (0 < v <= 1 if least else 0 <= v <= 1)
            what = ("a count of batches >= 1, a fraction in (0, 1]" if least
                    else "a count of batches, a fraction in [0, 1]")
            _check(v is None or count or share, f"trainer.{key}", f"must be {what} or null", v)

    def _check_validation(self) -> None:
        v, every = self.val_check_interval, self.check_val_every_n_epoch
        ok = v is None or (isinstance(v, int) and not isinstance(v, bool) and v > 0) or (
            isinstance(v, float) and 0 < v <= 1)
        _check(ok, "trainer.val_check_interval", "must be a positive integer, a fraction in (0, 1] or null", v)
        _check(every is None or every > 0, "trainer.check_val_every_n_epoch", "must be > 0 or null", every)
        _check(not isinstance(v, float) or every is not None, "trainer.val_check_interval",
               "is a fraction of an epoch, which needs trainer.check_val_every_n_epoch (null here: validation "
               "counts training batches, so give a number of batches)", v)
