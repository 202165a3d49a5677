"""Range checks for schema ``__post_init__`` methods: each raises one line with the full key and the
bad value (``method.r must be > 0, got -1``)."""

from __future__ import annotations

from typing import Any

from peftlab.errors import ConfigError


def check(ok: bool, key: str, requirement: str, value: Any) -> None:
    if not ok:
        raise ConfigError(f"{key} {requirement}, got {value!r}")


def one_of(key: str, value: Any, choices: tuple | list) -> None:
    check(value in choices, key, "must be one of " + ", ".join(map(str, choices)), value)


def module_names(key: str, value: Any, nullable: bool = False) -> None:
    """``'all-linear'``, a regular expression, or a non-empty list of module names (or null)."""
    ok = (nullable and value is None) or (isinstance(value, str) and value != "") or (
        isinstance(value, (list, tuple)) and len(value) > 0 and all(isinstance(t, str) and t for t in value))
    check(ok, key, ("must be null, " if nullable else "must be ") + "'all-linear' or a non-empty list of module names",
          value)


HUB = "hf://"  # a model or data set on the Hugging Face hub is named hf://<id>: the network only when asked


def hub_id(value: str | None) -> str | None:
    """The hub id of ``hf://<id>``; None for anything else (a local path)."""
    return value[len(HUB):] if isinstance(value, str) and value.startswith(HUB) else None
