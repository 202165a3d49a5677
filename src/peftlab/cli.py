"""Running a Hydra app as a command: user mistakes become one line on stderr and exit status 2.

Hydra prints composition errors over several lines with a hint about HYDRA_FULL_ERROR; peftlab
lets them propagate (``HYDRA_FULL_ERROR=1``) and turns each into one line that names the key and
the bad value. Any other exception is a bug and keeps its full traceback.

Before Hydra starts (and writes anything), the command line is checked: an explicit
``hydra.run.dir`` must not hold a finished run and is locked for this process, and a rerun file
given with ``--config-dir <run folder> --config-name rerun`` is read as data first: Hydra would
otherwise instantiate what it names (its own callbacks, logging handlers) before peftlab sees it.
"""

from __future__ import annotations

import atexit
import logging
import os
import re
import sys
from pathlib import Path
from typing import Callable, Optional

from omegaconf.errors import OmegaConfBaseException

from peftlab.distributed import SECONDARY, launched_world_size
from peftlab.errors import ConfigError, PeftlabError

_NOT_FOUND = re.compile(r"Could not find '(?P<group>[\w/]+)/(?P<choice>[^']+)'")
_OPTIONS = re.compile(r"Available options in '[\w/]+':\n((?:\t.*\n?)*)")
RERUN_DEFAULTS = ["schema_train", {"hydra": "default"}, "_self_"]  # what peftlab writes into rerun.yaml


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
    lines = [line.strip() for line in text.splitlines() if line.strip() and "HYDRA_FULL_ERROR" not in line]
    return " ".join(lines[:3]) if lines else type(err).__name__


def _user_errors() -> tuple[type, ...]:
    from hydra.errors import HydraException

    return (PeftlabError, HydraException, OmegaConfBaseException)


def _option(argv: list[str], *names: str) -> Optional[str]:
    """The value of ``--name value`` / ``--name=value`` on the command line."""
    for i, arg in enumerate(argv):
        for name in names:
            if arg == name and i + 1 < len(argv):
                return argv[i + 1]
            if arg.startswith(name + "="):
                return arg.split("=", 1)[1]
    return None


def check_rerun_file(argv: list[str]) -> None:
    """A rerun file (``--config-name rerun`` in a run folder) is data: it may not configure Hydra,
    may not pull in other configs, and may name only allowed classes."""
    import yaml

    from peftlab.config.targets import disallowed_targets

    folder, name = _option(argv, "--config-dir", "-cd"), _option(argv, "--config-name", "-cn")
    if folder is None or name is None:
        return
    path = Path(folder) / (name if name.endswith(".yaml") else f"{name}.yaml")
    if path.name != "rerun.yaml" or not path.is_file():
        return
    try:
        data = yaml.safe_load(path.read_text())
    except (yaml.YAMLError, UnicodeDecodeError) as err:
        raise ConfigError(f"{path}: not a readable rerun file ({str(err).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: not a readable rerun file (not a mapping)")
    if "hydra" in data:
        raise ConfigError(f"{path}: hydra: a rerun file may not configure Hydra (peftlab never writes this key)")
    if data.get("defaults") != RERUN_DEFAULTS:
        raise ConfigError(f"{path}: defaults: a rerun file lists exactly {RERUN_DEFAULTS}, got {data.get('defaults')}")
    bad = disallowed_targets({k: v for k, v in data.items() if k != "defaults"}, "")
    if bad:
        raise ConfigError(f"{path}: {bad[0]}")
    remote = (data.get("model") or {}).get("trust_remote_code") if isinstance(data.get("model"), dict) else None
    if remote and "model.trust_remote_code=true" not in argv:
        raise ConfigError(f"{path}: model.trust_remote_code: true is not obeyed from a file; add "
                          "model.trust_remote_code=true to the command line if you trust that model's code")


def check_explicit_run_dir(argv: list[str]) -> Optional[Path]:
    """``hydra.run.dir=<folder>``: refuse a folder that holds a finished run, and lock the folder
    before Hydra writes into it, so that a second command aimed at it stops at once. Returns the
    folder this process now holds."""
    from peftlab.outputs import check_fresh_run_dir, lock_folder

    folder = None
    for arg in argv:
        if arg.startswith("hydra.run.dir="):
            folder = Path(arg.split("=", 1)[1])
    if folder is None:
        if launched_world_size() > 1 and not any(a in ("-m", "--multirun") for a in argv):
            raise ConfigError("hydra.run.dir: give the run folder when torchrun or srun starts the processes "
                              "(each would pick its own timestamped folder otherwise)")
        return None
    check_fresh_run_dir(folder)
    existed = folder.exists()
    lock_folder(folder)
    if not existed:
        atexit.register(_drop_if_empty, folder)
    return folder


def _drop_if_empty(folder: Path) -> None:
    """A folder this process created for a run that never started holds only its lock file."""
    if folder.is_dir() and [p.name for p in folder.iterdir()] == [".lock"]:
        (folder / ".lock").unlink(missing_ok=True)
        folder.rmdir()


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
    """Lightning 2.6 logs a tip advertising its cloud logger whenever a Trainer is made; bitsandbytes
    0.50 says at import, on CPUs, that it looks for optional hub kernels (4-bit runs on its own)."""

    def filter(self, record: logging.LogRecord) -> bool:
        text = str(record.msg)
        return not (text.startswith("💡 Tip") or "kernels-community" in text)


def quiet_libraries() -> None:
    """Drop library chatter that says nothing about the run (per-file loading bars, deprecations
    inside the libraries themselves, advertisements). Called by the jobs, once the config is valid."""
    import warnings

    import transformers

    transformers.utils.logging.disable_progress_bar()
    for pattern in (r".*is_gradient_checkpointing.*", r".*isinstance\(treespec, LeafSpec\).*",
                    r".*does not have many workers.*", r".*Found \d+ module\(s\) in eval mode.*",
                    # peftlab's metrics are torchmetrics, reduced across processes before they are logged
                    r".*It is recommended to use `self.log\(.*sync_dist=True.*",
                    # bitsandbytes' 8-bit matmul casts its inputs to fp16 by design (LLM.int8)
                    r".*MatMul8bitLt: inputs will be cast.*",
                    # peft 0.21 checks an AdaLoRA adapter's rank pattern against module names it never
                    # holds (its keys end in .lora_E); AdaLoRA's own loader applies the pattern
                    # (tests/test_method_zoo.py: a reload reproduces the run's test loss)
                    r".*rank_pattern keys did not match any targeted module.*"):
        warnings.filterwarnings("ignore", message=pattern)
    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero",
                 "bitsandbytes.backends.cpu.ops"):
        if not any(isinstance(f, _NoAdverts) for f in logging.getLogger(name).filters):
            logging.getLogger(name).addFilter(_NoAdverts())
    # Lightning prints its messages itself when it loads before logging is set up; under Hydra they
    # go to the run's log like every other message, once
    lightning_logger = logging.getLogger("lightning")
    if logging.getLogger().handlers:
        for handler in list(lightning_logger.handlers):
            if type(handler) is logging.StreamHandler:
                lightning_logger.removeHandler(handler)


def run_app(hydra_main: Callable[[], object], prog: str,
            prepare_argv: Optional[Callable[[list[str]], list[str]]] = None) -> None:
    os.environ["HYDRA_FULL_ERROR"] = "1"
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    multirun = any(a in ("-m", "--multirun") for a in sys.argv[1:])
    stderr = sys.stderr
    if not multirun:
        sys.stderr = _QuietJobFailure(stderr)
    held = None
    try:
        if SECONDARY:  # a second process of a distributed run: the first holds the folder and writes it
            sys.argv[1:] = [*sys.argv[1:], "hydra/job_logging=stdout", "hydra.output_subdir=null"]
        else:
            if prepare_argv is not None:
                sys.argv[1:] = prepare_argv(sys.argv[1:])
            check_rerun_file(sys.argv[1:])
            held = check_explicit_run_dir(sys.argv[1:])
        hydra_main()
    except _user_errors() as err:
        if held is not None:  # this process's folder: what Hydra wrote for a run that never started goes
            from peftlab.outputs import discard_unstarted_run_dir

            discard_unstarted_run_dir(held)
        print(f"{prog}: error: {describe(err)}", file=stderr)
        sys.exit(2)
    finally:
        sys.stderr = stderr
