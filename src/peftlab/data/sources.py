"""Read a task's examples into train/val/test lists of records, with errors that name the file,
the line and the field (records.py reads one file, as written).

``data.path`` is one of: ``builtin:<name>`` (shipped with peftlab), ``packaged:<name>`` (a real data
set that ``make data`` fetched into the cache: data/packaged.py; never the network), a local json/jsonl/csv/parquet
file, a local folder of ``train.*``/``val.*``/``test.*`` files, or a hub data set named ``hf://<id>`` (network;
with ``data.local_files_only``, set for the data a run folder names, the local cache only).
"""

from __future__ import annotations

import hashlib
import random
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Optional

from peftlab.config.checks import hub_id
from peftlab.config.schema import DataSchema
from peftlab.data.formats import DEFAULT_FORMAT
from peftlab.data.packaged import packaged_folder
from peftlab.data.records import SUFFIXES, WHERE, accepting, read_file  # noqa: F401  (WHERE: re-exported)
from peftlab.errors import DataError

BUILTIN_DIR = Path(__file__).resolve().parent / "files"
PROSE_DIR = BUILTIN_DIR / "prose"  # general text for the forgetting measurement, not a task
SPLIT_NAMES = {"train": ("train",), "val": ("val", "validation", "valid", "dev"), "test": ("test",)}

Splits = dict[str, list[dict[str, Any]]]


def builtin_tasks() -> list[str]:
    return sorted(p.name for p in BUILTIN_DIR.iterdir() if p.is_dir() and p != PROSE_DIR)


def _split_files(folder: Path) -> dict[str, Path]:
    found = {}
    for split, names in SPLIT_NAMES.items():
        for name in names:
            for suffix in SUFFIXES:
                if (folder / f"{name}{suffix}").is_file():
                    found.setdefault(split, folder / f"{name}{suffix}")
    return found


def _split_fractions(rows: list, cfg: DataSchema, source: str, need: tuple[str, ...]) -> Splits:
    """Split ``rows`` (the data's only split) into train and the ``need``-ed eval splits."""
    rows = list(rows)
    random.Random(cfg.split_seed).shuffle(rows)
    out: Splits = {}
    for split in need:
        frac = cfg.val_fraction if split == "val" else cfg.test_fraction
        n = max(1, round(frac * len(rows))) if frac > 0 else 0
        if n == 0:
            raise DataError(f"{source} has no {split} split and data.{split}_fraction is 0")
        out[split], rows = rows[:n], rows[n:]
    out["train"] = rows
    return out


def _load_local(path: Path, cfg: DataSchema, fields: dict[str, str]) -> tuple[Splits, dict[str, str]]:
    if path.is_dir():
        files = _split_files(path)
        if "train" not in files:
            raise DataError(f"data.path: no train file in {path} (expected train.jsonl / .json / .csv / .parquet)")
        splits = {split: read_file(f, fields, cfg.columns) for split, f in files.items()}
        where = {split: str(f) for split, f in files.items()}
    else:
        splits = {"train": read_file(path, fields, cfg.columns)}
        where = {"train": str(path)}
    missing = tuple(s for s in ("val", "test") if s not in splits)
    if missing:
        source = where["train"]
        extra = _split_fractions(splits["train"], cfg, source, missing)
        splits.update(extra)
        for split in extra:
            where[split] = f"{source} ({split} part)"
    return splits, where


@contextmanager
def hub_offline() -> Iterator[None]:
    """Inside, every request to the hub is refused and a data set comes from the local cache only
    (datasets and huggingface_hub read their offline switches when they are called)."""
    import datasets.config
    from huggingface_hub import constants

    saved = datasets.config.HF_HUB_OFFLINE, constants.HF_HUB_OFFLINE
    datasets.config.HF_HUB_OFFLINE = constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        datasets.config.HF_HUB_OFFLINE, constants.HF_HUB_OFFLINE = saved


def _hub_data_set(cfg: DataSchema, name: str) -> Any:
    """The hub data set ``name``; with ``data.local_files_only`` (a run folder's data) from the local
    cache only, every request to the hub refused."""
    import datasets

    try:
        if cfg.local_files_only:
            with hub_offline():
                return datasets.load_dataset(name, cfg.hub_config)
        return datasets.load_dataset(name, cfg.hub_config)
    except Exception as err:  # datasets wraps its errors in many types
        if cfg.local_files_only:
            raise DataError(f"data.path: the hub data set {name!r} that a run folder names is read from the local "
                            "cache only, and it is not there (load it once with network, or give data.path= a "
                            "local copy)") from None
        raise DataError(f"data.path: cannot load the data set {name!r}: {str(err).splitlines()[0]}") from None


def _load_hub(cfg: DataSchema, fields: dict[str, str], name: str) -> tuple[Splits, dict[str, str]]:
    dsd = _hub_data_set(cfg, name)
    wanted = {"train": cfg.train_split, "val": cfg.val_split, "test": cfg.test_split}
    splits, where = {}, {}
    for split, split_name in wanted.items():
        for candidate in (split_name, *SPLIT_NAMES[split]):
            if candidate in dsd:
                splits[split], where[split] = dsd[candidate].to_list(), f"{name}[{candidate}]"
                break
    accept = accepting(fields, cfg.columns)
    for split, rows in splits.items():
        splits[split] = [accept(row, f"{where[split]} row {i + 1}") for i, row in enumerate(rows)]
    if "train" not in splits:
        raise DataError(f"data.train_split: {cfg.train_split!r} is not a split of {cfg.path!r} "
                        f"(splits: {', '.join(dsd.keys())})")
    missing = tuple(s for s in ("val", "test") if s not in splits)
    if missing:
        extra = _split_fractions(splits["train"], cfg, where["train"], missing)
        splits.update(extra)
        where.update({s: f"{where['train']} ({s} part)" for s in extra})
    return splits, where


def answer_fields(cfg: DataSchema) -> dict[str, str]:
    """The fields of a prompt -> answer (or text -> label) record: data key -> field name; none for
    the other formats (``data.format``), whose records are checked as they are read as conversations."""
    if cfg.format != DEFAULT_FORMAT:
        return {}
    return {"prompt_field": cfg.prompt_field, "response_field": cfg.response_field}


def _check_splits(splits: Splits, where: dict[str, str]) -> None:
    for split, rows in splits.items():
        if not rows:
            raise DataError(f"{where[split]}: the {split} split is empty")


def load_splits(cfg: DataSchema, fields: Optional[dict[str, str]] = None) -> Splits:
    """The task's train, val and test records, each holding ``fields`` (data key -> field name;
    by default the prompt and the answer of ``data.format=prompt_response``)."""
    fields = answer_fields(cfg) if fields is None else fields
    if cfg.path.startswith("builtin:"):
        name = cfg.path.split(":", 1)[1]
        folder = BUILTIN_DIR / name
        if not folder.is_dir():
            raise DataError(f"data.path: no builtin task {name!r} (builtin: {', '.join(builtin_tasks())})")
        splits, where = _load_local(folder, cfg, fields)
    elif cfg.path.startswith("packaged:"):  # fetched into the cache by `make data`; a missing one is an error
        splits, where = _load_local(packaged_folder(cfg.path.split(":", 1)[1]), cfg, fields)
    else:
        path = Path(cfg.path).expanduser()
        if hub_id(cfg.path) is not None:
            splits, where = _load_hub(cfg, fields, hub_id(cfg.path))
        elif path.exists():
            splits, where = _load_local(path, cfg, fields)
        else:
            raise DataError(f"data.path: no such file or folder: {cfg.path} (a hub data set is named hf://<id>; only "
                            "that reaches the network)")
    _check_splits(splits, where)
    if cfg.max_train_examples:
        splits["train"] = splits["train"][: cfg.max_train_examples]
    if cfg.max_eval_examples:
        for split in ("val", "test"):
            splits[split] = splits[split][: cfg.max_eval_examples]
    return splits


def fingerprint(cfg: DataSchema) -> dict[str, str]:
    """The sha256 of every local file the data is read from (none for a hub data set): a resumed
    run checks that it reads what it started with."""
    if cfg.path.startswith("builtin:"):
        path = BUILTIN_DIR / cfg.path.split(":", 1)[1]
    elif cfg.path.startswith("packaged:"):
        path = packaged_folder(cfg.path.split(":", 1)[1])
    else:
        path = Path(cfg.path).expanduser()
    files = sorted(_split_files(path).values()) if path.is_dir() else [path] if path.is_file() else []
    return {str(f): file_sha256(f) for f in files}


def file_sha256(path: str | Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def resolve_labels(cfg: DataSchema) -> list[str]:
    """Class names in id order for a classification task: ``data.labels``, else sorted from train."""
    if cfg.labels:
        return [str(label) for label in cfg.labels]
    return sorted({str(r[cfg.response_field]) for r in load_splits(cfg)["train"]})
