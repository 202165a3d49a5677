"""Merge verification and export: the library behind ``peftlab-merge`` and training's
``merge_after`` (``merge.py``: the merge as named steps; ``verify.py``: the checks;
``references.py``: what the merge is checked against, measured once)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

from omegaconf import DictConfig

import peftlab.methods  # noqa: F401  (registers the method schemas a run folder's config names)
from peftlab.config import validate
from peftlab.config.commands import MergeSchema
from peftlab.errors import ConfigError
from peftlab.runs.config import read_run_config
from peftlab.runs.folders import check_no_link, claim_output
from peftlab.runs.locks import check_not_held, folder_lock


def merge_from_config(cfg: DictConfig, log_dir: Optional[Path] = None) -> dict[str, Any]:
    """The work of ``peftlab-merge`` and ``peftlab.merge()``: the run folder's adapter merged into
    ``out_dir`` (default ``<run_dir>/merged``), with a copy of the report in ``log_dir``."""
    conf, run, out = merge_target(cfg)
    run_dir = Path(conf.run_dir)
    from peftlab.export.merge import MergeOptions, merge_run  # the heavy libraries, once the config is valid

    options = MergeOptions(dtype=conf.dtype, cache_dir=conf.paths.cache_dir, verify_batches=conf.verify_batches,
                           max_test_examples=conf.max_test_examples, min_top1=conf.min_top1, format=conf.format,
                           gguf_type=conf.gguf_type, dequantize=conf.dequantize)
    if not out.resolve().is_relative_to(run_dir.resolve()):  # the run folder is only read: no byte of it changes
        return merge_run(run_dir, run, out, options, log_dir)
    with folder_lock(run_dir, key="run_dir"):  # writing into the run folder: no other command there meanwhile
        return merge_run(run_dir, run, out, options, log_dir)


def merge_target(cfg: DictConfig) -> tuple[MergeSchema, Any, Path]:
    """(the validated config, the run's config, the folder the merged model goes to), everything
    checked that can be before a model loads: the run is a finished run (its adapter files readable)
    of a mergeable method, and the merged model goes to a new folder outside the run, or to
    ``<run_dir>/merged``."""
    conf = validate(cfg, MergeSchema)
    run_dir = Path(conf.run_dir)
    # the run folder says which model and task; never whether to run remote code
    run = read_run_config(run_dir, trust_remote_code=conf.trust_remote_code)
    out = Path(conf.out_dir) if conf.out_dir else run_dir / "merged"
    if not out.resolve().is_relative_to(run_dir.resolve()):
        if out.exists() or out.is_symlink():  # a merged model is written whole, into a new folder
            raise ConfigError(f"out_dir: {out} already exists; it is never overwritten")
        claim_output(out, "out_dir")
    elif out.resolve() != (run_dir / "merged").resolve():
        raise ConfigError(f"out_dir: {out} is inside the run folder {run_dir}, where peftlab writes only "
                          f"{run_dir / 'merged'}; give a folder outside it")
    else:
        check_no_link(run_dir, "merged", "out_dir")
    check_not_held(run_dir, key="run_dir")
    from peftlab.export.merge import check_mergeable  # the heavy libraries, once the config is valid

    check_mergeable(run_dir, run)
    if out.exists():
        raise ConfigError(f"out_dir: {out} already exists; it is never overwritten")
    return conf, run, out
