"""Which classes a config may name in a ``_target_``: Hydra instantiates them, so a config written
by someone else (a run folder's rerun.yaml, a shared experiment) could otherwise run any code.

Allowed: torch optimizers and schedulers, Lightning callbacks and loggers, peftlab's own classes,
and the prefixes the user lists in the environment variable ``PEFTLAB_ALLOWED_TARGETS``
(comma-separated, e.g. ``mylab.callbacks.``): the user's machine decides, never a config file."""

from __future__ import annotations

import os
from typing import Any, Iterator

ALLOWED_PREFIXES = ("torch.optim.", "lightning.pytorch.callbacks.", "lightning.pytorch.loggers.", "peftlab.")
ENV = "PEFTLAB_ALLOWED_TARGETS"


def allowed_prefixes() -> tuple[str, ...]:
    extra = [p.strip() for p in os.environ.get(ENV, "").split(",") if p.strip()]
    return (*ALLOWED_PREFIXES, *extra)


def targets(node: Any, key: str) -> Iterator[tuple[str, Any]]:
    """Every (full key, value) of a ``_target_`` at or below ``node`` (nested ones too: Hydra
    instantiates arguments that have their own ``_target_``)."""
    if isinstance(node, dict) or hasattr(node, "items"):
        for k, v in node.items():
            full = f"{key}.{k}" if key else str(k)
            if k == "_target_":
                yield full, v
            else:
                yield from targets(v, full)
    elif isinstance(node, (list, tuple)):
        for i, v in enumerate(node):
            yield from targets(v, f"{key}[{i}]")


def disallowed_targets(node: Any, key: str) -> list[str]:
    """One line per ``_target_`` outside the allow-list."""
    allowed = allowed_prefixes()
    return [f"{full}: {value!r} is not a class peftlab instantiates (allowed: {', '.join(allowed)}; "
            f"add a prefix to {ENV} to allow your own)"
            for full, value in targets(node, key) if not (isinstance(value, str) and value.startswith(allowed))]


def instantiate(node: Any, key: str, **kwargs: Any) -> Any:
    """Hydra's ``instantiate`` for a node the user configured: refused outside the allow-list, and
    a failure is one line naming the key, the class and the reason."""
    from hydra.errors import InstantiationException
    from hydra.utils import instantiate as hydra_instantiate

    from peftlab.errors import ConfigError

    bad = disallowed_targets(node, key)
    if bad:
        raise ConfigError(bad[0])
    try:
        return hydra_instantiate(node, _convert_="all", **kwargs)
    except InstantiationException as err:
        lines = [line.strip() for line in str(err).splitlines() if line.strip()]
        reason = " ".join(line for line in lines[1:] if not line.startswith("full_key:")) or lines[0]
        raise ConfigError(f"{key}: cannot build {node.get('_target_')}: {reason}") from None
