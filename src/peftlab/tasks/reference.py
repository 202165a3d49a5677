"""The reference a policy is held to, on the policy's own weights: one strategy for preference
training and online RL (``Reference``).

With an adapter the reference needs no second model: it is the same base with the adapter switched
off (``adapter_off``: the base, which a fresh adapter leaves unchanged), or a frozen copy of the
adapter the run started from, loaded as a second, inactive adapter (``frozen_adapter``: after SFT the
reference is the SFT model, not the base). The reference is always run in eval mode: no dropout, no
random draws.
"""

from __future__ import annotations

import contextlib
from typing import Any, Callable, Iterable, Iterator, Optional

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


class Reference:
    """The reference of ``preference.reference`` / ``rl.reference``: ``adapter_off`` (the policy's
    base, its adapter switched off), ``frozen_adapter`` (the adapter the run starts from, loaded
    frozen beside the policy's), ``separate`` (a second full copy of the backbone, the way without
    PEFT) or ``none``. ``bytes``: what it holds beside the policy's own weights."""

    def __init__(self, mode: str, init_adapter: Optional[str] = None):
        self.mode, self.init_adapter = mode, init_adapter
        self.model: Any = None  # separate: the frozen copy
        self.bytes = 0

    def before_wrapping(self, backbone: Any) -> None:
        if self.mode == "separate":  # copied before the method changes the backbone
            import copy

            self.model = copy.deepcopy(backbone).eval().requires_grad_(False)
            self.bytes = param_bytes(self.model.parameters())

    def before_training(self, model: Any) -> None:
        if self.mode == "frozen_adapter":
            self.bytes = load_frozen(model, self.init_adapter)

    def __call__(self, policy: Any, fn: Callable, batch: dict[str, Any], *args: Any) -> Any:
        """``fn(model, batch, *args)`` on the reference: without gradient, in eval mode (no dropout,
        no random draws), on the policy's own weights where the reference is not a copy."""
        import torch

        with torch.no_grad(), eval_mode(policy):
            if self.model is not None:
                return fn(self.model.to(batch["input_ids"].device), batch, *args)
            with as_reference(policy, self.mode):
                return fn(policy, batch, *args)
