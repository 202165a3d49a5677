"""Which classes a config may name in a ``_target_``: Hydra instantiates them, so a config written
by someone else (a run folder's rerun.yaml, a shared experiment) could otherwise run any code.

Allowed: torch optimizers and schedulers, Lightning callbacks and loggers, peftlab's own callbacks,
the packages of the plug-ins the user loaded (``plugins=[mylab.callbacks]`` or an installed
``peftlab.plugins`` entry point: config/user_plugins.py), and the prefixes listed in the environment
variable ``PEFTLAB_ALLOWED_TARGETS`` (comma-separated, e.g. ``mylab.callbacks.``): the user's command
line and machine decide, never a config file.
Validation checks the names (cheaply, before any work); before anything is built the names are
resolved and the objects checked: a class, defined under its allowed prefix, of the kind its
slot takes (``torch.optim.Optimizer.zero_grad`` is a name under an allowed prefix but no class; a
logger is a class under an allowed prefix but no callback).

Files read as data (a run's config, its overrides, a rerun file) may also call no resolver that
reads the environment or decodes text (``${oc.env:...}``): see ``disallowed_resolvers``."""

from __future__ import annotations

import os
import re
from typing import Any, Iterator

ALLOWED_PREFIXES = ("torch.optim.", "lightning.pytorch.callbacks.", "lightning.pytorch.loggers.", "peftlab.")
ENV = "PEFTLAB_ALLOWED_TARGETS"
# resolvers a file read as data may use: they read nothing outside the config
SAFE_RESOLVERS = ("oc.select", "now", "hydra")


def allowed_prefixes() -> tuple[str, ...]:
    from peftlab.config.user_plugins import allowed_prefixes as plugin_packages

    extra = [p.strip() for p in os.environ.get(ENV, "").split(",") if p.strip()]
    return (*ALLOWED_PREFIXES, *plugin_packages(), *extra)


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


def wrong_objects(node: Any, key: str, kinds: tuple[str, ...] = ()) -> list[str]:
    """One line per allowed ``_target_`` name that does not resolve to a class defined under its
    prefix, or, for the node's own target, to a subclass of one of ``kinds`` (dotted names: what the
    slot takes, a Lightning callback for ``callbacks.*``). Imports the named modules: call it once
    the config is valid, before building."""
    from hydra.utils import get_object

    found = []
    for full, value in targets(node, key):
        prefix = next((p for p in allowed_prefixes() if isinstance(value, str) and value.startswith(p)), None)
        if prefix is None:
            continue  # disallowed_targets names it
        try:
            obj = get_object(value)
        except Exception as err:  # noqa: BLE001  (an import error of any kind is the same mistake)
            found.append(f"{full}: {value!r} cannot be imported ({type(err).__name__})")
            continue
        wanted = tuple(get_object(k) for k in kinds) if full == f"{key}._target_" else ()
        if not isinstance(obj, type) or not (obj.__module__ + ".").startswith(prefix):
            found.append(f"{full}: {value!r} is not a class defined under {prefix}")
        elif wanted and not issubclass(obj, wanted):
            found.append(f"{full}: {value!r} is not a {' or '.join(k.__module__ + '.' + k.__name__ for k in wanted)}")
    return found


def disallowed_resolvers(node: Any, key: str) -> list[str]:
    """One line per value that calls a resolver outside SAFE_RESOLVERS (``${oc.env:HOME}``), for
    configs read as data: what such a file says may not read the environment or decode text."""
    found = []
    if isinstance(node, dict) or hasattr(node, "items"):
        for k, v in node.items():
            found += disallowed_resolvers(v, f"{key}.{k}" if key else str(k))
    elif isinstance(node, (list, tuple)):
        for i, v in enumerate(node):
            found += disallowed_resolvers(v, f"{key}[{i}]")
    elif isinstance(node, str):
        for name in re.findall(r"\$\{\s*([\w.\-]+)\s*:", node):
            if name not in SAFE_RESOLVERS:
                found.append(f"{key}: {node!r} calls the resolver {name}, which a file read as data may not "
                             f"(allowed: {', '.join(SAFE_RESOLVERS)})")
    return found


def instantiate(node: Any, key: str, kinds: tuple[str, ...] = (), **kwargs: Any) -> Any:
    """Hydra's ``instantiate`` for a node the user configured: refused outside the allow-list, and
    a failure is one line naming the key, the class and the reason."""
    from hydra.errors import InstantiationException
    from hydra.utils import instantiate as hydra_instantiate

    from peftlab.errors import ConfigError

    bad = disallowed_targets(node, key) or wrong_objects(node, key, kinds)
    if bad:
        raise ConfigError(bad[0])
    try:
        return hydra_instantiate(node, _convert_="all", **kwargs)
    except InstantiationException as err:
        lines = [line.strip() for line in str(err).splitlines() if line.strip()]
        reason = " ".join(line for line in lines[1:] if not line.startswith("full_key:")) or lines[0]
        raise ConfigError(f"{key}: cannot build {node.get('_target_')}: {reason}") from None
