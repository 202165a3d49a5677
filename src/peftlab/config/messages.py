"""One line for every user-facing error from Hydra, OmegaConf or peftlab.

Hydra prints composition errors over several lines with a hint about HYDRA_FULL_ERROR; the
commands let them propagate (``HYDRA_FULL_ERROR=1``) and turn each into one line that names the
key and the bad value. Any other exception is a bug and keeps its full traceback.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from omegaconf.errors import OmegaConfBaseException

from peftlab.config.validate import omegaconf_message
from peftlab.errors import PeftlabError

_NOT_FOUND = re.compile(r"Could not find '(?P<group>[\w/]+)/(?P<choice>[^']+)'")
_OPTIONS = re.compile(r"Available options in '[\w/]+':\n((?:\t.*\n?)*)")


def describe(err: BaseException, overrides: Sequence[str] = ()) -> str:
    """One line for a user-facing error from Hydra, OmegaConf or peftlab (``overrides``: the command
    line, which names the key of an error that does not)."""
    if isinstance(err, PeftlabError):
        return str(err)
    unchosen = unchosen_group(err, overrides)
    if unchosen:
        return unchosen
    text = str(err)
    m = _NOT_FOUND.search(text)
    if m:
        options = _OPTIONS.search(text)
        listed = ", ".join(o.strip() for o in options.group(1).splitlines() if o.strip()) if options else ""
        group = m.group("group")
        return f"{group}={m.group('choice')}: no such config" + (f" (available: {listed})" if listed else "")
    cause = err.__cause__
    if isinstance(cause, OmegaConfBaseException):
        return omegaconf_message(cause)
    if isinstance(err, OmegaConfBaseException):
        return omegaconf_message(err)
    lines = [line.strip() for line in text.splitlines() if line.strip() and "HYDRA_FULL_ERROR" not in line]
    return " ".join(lines[:3]) if lines else type(err).__name__


def unchosen_group(err: BaseException, overrides: Sequence[str]) -> str:
    """The line for a key set inside an optional group nobody chose (``rl.beta=0`` without ``rl=...``):
    Hydra 1.3 fails there with a bare AssertionError from OmegaConf ("" for any other error)."""
    if not (isinstance(err, AssertionError) and "Unexpected type for root: NoneType" in str(err)):
        return ""
    import yaml

    from peftlab.config import CONF_DIR

    # the groups the primary config leaves unchosen (``- rl: null``), and those the command line chose
    defaults = yaml.safe_load((CONF_DIR / "train.yaml").read_text())["defaults"]
    optional = {k for d in defaults if isinstance(d, dict) for k, v in d.items() if v is None}
    chosen = {o.split("=", 1)[0].lstrip("+") for o in overrides if "=" in o and "." not in o.split("=", 1)[0]}
    for override in overrides:
        key = override.split("=", 1)[0]
        group = key.split(".", 1)[0]
        if "." in key and group in optional and group not in chosen and (CONF_DIR / group).is_dir():
            options = ", ".join(sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml")))
            return (f"{key}: no {group} config is chosen, so there is nothing to set (choose one first: "
                    f"{group}=<{options}>)")
    return ""


def user_errors() -> tuple[type, ...]:
    from hydra.errors import HydraException

    return (PeftlabError, HydraException, OmegaConfBaseException)
