"""The user's own code as plug-ins: where it may come from, and the record of what was loaded.

Code is loaded from two places only, both the user's own:

- the installed packages that declare an entry point in the group ``peftlab.plugins`` (the
  convention of pytest and friends), loaded by every command as it starts;
- the command line's ``plugins=[mypkg.rewards,...]`` (or the Python API's overrides), modules
  imported by name.

A plug-in module registers what it brings when it is imported: methods, task types, rewards,
preference losses, data formats (``peftlab.plugins`` has the functions), and may add a folder of
its own configs to Hydra's search path (``register_config_dir``). Its classes may be named in a
``_target_`` (callbacks, optimizers) with no environment variable.

A run folder, a rerun file or a config someone else wrote is data: the plug-ins it names are never
imported from it. A command that reads one refuses it when it names a plug-in this process has not
loaded (``check_loaded``), with the line that says how to load it.
"""

from __future__ import annotations

import importlib
import re
from importlib.metadata import entry_points
from pathlib import Path
from typing import Iterable, Optional

from peftlab.errors import ConfigError

GROUP = "peftlab.plugins"
KEY = "plugins"
_NAME = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*")

_LOADED: dict[str, str] = {}  # module -> where it came from ("command line" or "entry point <dist> <name>")
_CONFIG_DIRS: list[Path] = []
_ENTRY_POINTS_READ: list[bool] = []


def loaded() -> dict[str, str]:
    """The plug-in modules this process loaded, each with where it came from."""
    return dict(_LOADED)


def config_dirs() -> list[Path]:
    """The plug-ins' config folders, in the order they were registered (Hydra searches them after
    peftlab's own conf/)."""
    return list(_CONFIG_DIRS)


def register_config_dir(folder: str | Path) -> None:
    """Add ``folder`` (holding group folders such as ``model/``, ``data/``, ``experiment/``) to
    Hydra's search path: its options sit beside peftlab's (``model=my_model``)."""
    path = Path(folder).resolve()
    if not path.is_dir():
        raise ConfigError(f"{KEY}: register_config_dir({str(folder)!r}): not a folder")
    if path not in _CONFIG_DIRS:
        _CONFIG_DIRS.append(path)


def _import(module: str, source: str, key: str) -> None:
    if module in _LOADED:
        return
    if not _NAME.fullmatch(module):
        raise ConfigError(f"{key}: {module!r} is not a module name (e.g. plugins=[mypkg.rewards])")
    try:
        importlib.import_module(module)
    except ModuleNotFoundError as err:
        if err.name is not None and module.startswith(err.name):
            raise ConfigError(f"{key}: no module named {module!r} (install the package that provides it, or put "
                              "its folder on PYTHONPATH)") from None
        raise ConfigError(f"{key}: {module!r} cannot be imported: {type(err).__name__}: {err}") from None
    except ConfigError as err:
        raise ConfigError(f"{key}: {module!r}: {err}") from None
    except Exception as err:  # noqa: BLE001  (the user's code failing on import, whatever the error)
        first = str(err).splitlines()[0] if str(err) else ""
        raise ConfigError(f"{key}: {module!r} cannot be imported: {type(err).__name__}: {first}") from None
    _LOADED[module] = source


def load_entry_points() -> None:
    """Import every installed package's ``peftlab.plugins`` entry point (once per process)."""
    if _ENTRY_POINTS_READ:
        return
    _ENTRY_POINTS_READ.append(True)
    for point in sorted(entry_points(group=GROUP), key=lambda p: p.name):
        dist = getattr(point.dist, "name", None) or "?"
        module, _, attr = point.value.partition(":")
        module = module.strip()
        _import(module, f"entry point {point.name} of {dist}",
                f"entry point {point.name!r} of the installed package {dist} (group {GROUP})")
        if attr:  # module:function: the function registers
            getattr(importlib.import_module(module), attr.strip())()


def command_line_plugins(argv: Iterable[str]) -> list[str]:
    """The modules ``plugins=`` names on a command line (``plugins=a``, ``plugins=[a,b]``, with ``+`` or
    ``++``), in order."""
    names: list[str] = []
    for arg in argv:
        key, sep, value = arg.lstrip("+~").partition("=")
        if sep and key == KEY:
            value = value.strip()
            if value.startswith("[") and value.endswith("]"):
                value = value[1:-1]
            names += [n.strip().strip("'\"") for n in value.split(",") if n.strip()]
    return names


def load(argv: Iterable[str]) -> None:
    """What a command loads as it starts: the installed entry points, then the modules its own
    command line names (never call this with arguments read from a file)."""
    load_entry_points()
    for module in command_line_plugins(argv):
        _import(module, "command line", KEY)


def restore(modules: dict[str, str]) -> None:
    """Load in a sweep job's own process what the sweep's process loaded (``loaded()``), by name."""
    load_entry_points()
    for module, source in modules.items():
        _import(module, source, KEY)


def unloaded(names: Optional[Iterable[str]]) -> list[str]:
    return [str(n) for n in (names or []) if str(n) not in _LOADED]


def check_loaded(names: Optional[Iterable[str]], where: str = KEY) -> None:
    """Refuse plug-ins named by a config or a run folder that this process has not loaded: they are
    never imported from there."""
    missing = unloaded(names)
    if missing:
        listed = ",".join(missing)
        raise ConfigError(f"{where}: names the plug-in {', '.join(map(repr, missing))}, which this command has not "
                          f"loaded (code is loaded only from your own command line or environment: add "
                          f"plugins=[{listed}] to the command, or install the package that provides it)")


def allowed_prefixes() -> tuple[str, ...]:
    """The packages of the loaded plug-ins, whose classes a ``_target_`` may name."""
    return tuple(sorted({m.split(".")[0] + "." for m in _LOADED}))
