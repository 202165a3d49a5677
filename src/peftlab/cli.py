"""Running a Hydra app as a command: user mistakes become one line on stderr and exit status 2.

Hydra prints composition errors over several lines with a hint about HYDRA_FULL_ERROR; peftlab
lets them propagate (``HYDRA_FULL_ERROR=1``) and turns each into one line that names the key and
the bad value. Any other exception is a bug and keeps its full traceback.
"""

from __future__ import annotations

import logging
import os
import re
import sys
from pathlib import Path
from typing import Callable

from omegaconf.errors import OmegaConfBaseException

from peftlab.errors import PeftlabError

_NOT_FOUND = re.compile(r"Could not find '(?P<group>[\w/]+)/(?P<choice>[^']+)'")
_OPTIONS = re.compile(r"Available options in '[\w/]+':\n((?:\t.*\n?)*)")


def describe(err: BaseException) -> str:
    """One line for a user-facing error from Hydra, OmegaConf or peftlab."""
    from peftlab.config.validate import omegaconf_message

    if isinstance(err, PeftlabError):
        return str(err)
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
    first = next((line for line in text.splitlines() if line.strip()), type(err).__name__)
    return first.strip()


def _user_errors() -> tuple[type, ...]:
    from hydra.errors import HydraException

    return (PeftlabError, HydraException, OmegaConfBaseException)


def check_explicit_run_dir(argv: list[str]) -> None:
    """Refuse ``hydra.run.dir=<folder of a finished run>`` before Hydra writes into it."""
    from peftlab.outputs import check_fresh_run_dir

    for arg in argv:
        if arg.startswith("hydra.run.dir="):
            check_fresh_run_dir(Path(arg.split("=", 1)[1]))


class _QuietJobFailure:
    """stderr without Hydra's "Error executing job with overrides" line, which repeats the
    command line of a single run before peftlab's own one-line message."""

    def __init__(self, stream):
        self.stream = stream

    def write(self, text: str) -> int:
        if text.startswith("Error executing job with overrides"):
            return len(text)
        return self.stream.write(text)

    def __getattr__(self, name: str):
        return getattr(self.stream, name)


class _NoAdverts(logging.Filter):
    """Lightning 2.6 logs a tip advertising its cloud logger whenever a Trainer is made."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("💡 Tip")


def quiet_libraries() -> None:
    """Drop library chatter that says nothing about the run (per-file loading bars, deprecations
    inside the libraries themselves, advertisements)."""
    import warnings

    import transformers

    transformers.utils.logging.disable_progress_bar()
    for pattern in (r".*is_gradient_checkpointing.*", r".*isinstance\(treespec, LeafSpec\).*",
                    r".*does not have many workers.*", r".*Found \d+ module\(s\) in eval mode.*"):
        warnings.filterwarnings("ignore", message=pattern)
    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero"):
        if not any(isinstance(f, _NoAdverts) for f in logging.getLogger(name).filters):
            logging.getLogger(name).addFilter(_NoAdverts())


def run_app(hydra_main: Callable[[], object], prog: str) -> None:
    os.environ["HYDRA_FULL_ERROR"] = "1"
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    quiet_libraries()
    multirun = any(a in ("-m", "--multirun") for a in sys.argv[1:])
    stderr = sys.stderr
    if not multirun:
        sys.stderr = _QuietJobFailure(stderr)
    try:
        check_explicit_run_dir(sys.argv[1:])
        hydra_main()
    except _user_errors() as err:
        print(f"{prog}: error: {describe(err)}", file=stderr)
        sys.exit(2)
    finally:
        sys.stderr = stderr
