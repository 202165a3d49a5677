"""The reference a policy is held to, on the policy's own weights (preference training and RL).

With an adapter the reference needs no second model: it is the same base with the adapter switched
off (``adapter_off``: the base, which a fresh adapter leaves unchanged), or a frozen copy of the
adapter the run started from, loaded as a second, inactive adapter (``frozen_adapter``: after SFT the
reference is the SFT model, not the base). The reference is always run in eval mode: no dropout, no
random draws.
"""

from __future__ import annotations

import contextlib
from typing import Any, Callable, Iterable, Iterator

FROZEN = "reference"  # the name of the frozen starting adapter beside the policy's


@contextlib.contextmanager
def eval_mode(model: Any) -> Iterator[None]:
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


def adapter_off(model: Any):
    """The same weights with the adapter switched off; the model itself where it has no adapter."""
    return model.disable_adapter() if hasattr(model, "disable_adapter") else contextlib.nullcontext()


@contextlib.contextmanager
def use_adapter(model: Any, name: str) -> Iterator[None]:
    """``name`` active for the block, then the policy's adapter again (its parameters train on)."""
    active = model.active_adapter
    model.set_adapter(name)
    try:
        yield
    finally:
        model.set_adapter(active)


def as_reference(model: Any, mode: str):
    """The policy's weights as its reference: the frozen starting adapter where one was loaded, else
    the adapter switched off (and the untouched model, where there is no adapter)."""
    if mode == "frozen_adapter":
        if FROZEN not in getattr(model, "peft_config", {}):
            raise RuntimeError("the frozen reference adapter is not loaded (before_training loads it)")
        return use_adapter(model, FROZEN)
    return adapter_off(model)


def load_frozen(model: Any, folder: str, name: str = FROZEN, key: str = "init_adapter") -> int:
    """Load the adapter in ``folder`` beside the policy's as ``name``, frozen and inactive; its bytes."""
    if name not in getattr(model, "peft_config", {}):
        from peftlab.runs.adapters import load_adapter

        load_adapter(model, folder, key, name)  # the policy's adapter stays the active one
    return param_bytes(p for n, p in model.named_parameters() if f".{name}." in n)


def param_bytes(parameters: Iterable[Any]) -> int:
    return sum(p.numel() * p.element_size() for p in parameters)


class Clock:
    """Adds each call's wall time to its phase in ``seconds`` (where an RL step's time goes)."""

    def __init__(self, seconds: dict[str, float]):
        self.seconds = seconds

    def __call__(self, phase: str, fn: Callable, *args: Any) -> Any:
        import time

        import torch

        start = time.perf_counter()
        try:
            return fn(*args)
        finally:
            if torch.cuda.is_available():  # the phase's kernels, not only their launch
                torch.cuda.synchronize()
            self.seconds[phase] += time.perf_counter() - start
