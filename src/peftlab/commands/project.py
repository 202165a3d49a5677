"""``peftlab``: the project command. ``peftlab init <folder>`` writes a research project of one's own
(commands/project_files.py): a package whose method, task type and reward every peftlab command finds
through the ``peftlab.plugins`` entry point once it is installed, with its configs beside peftlab's.

    peftlab init mylab && cd mylab && pip install -e . && peftlab-train experiment=mylab
"""

from __future__ import annotations

import argparse
import re
import shutil
import sys
import tempfile
from pathlib import Path

from peftlab.commands.project_files import files
from peftlab.errors import ConfigError

_PACKAGE = re.compile(r"[a-z_][a-z0-9_]*")


def init(folder: Path, name: str | None = None) -> str:
    """Write the project into ``folder``, which must not exist or be empty; returns its package name.
    All files appear at once (written beside it, then moved) or none does."""
    folder = Path(folder)
    pkg = name or re.sub(r"\W", "_", folder.resolve().name.lower()).strip("_")
    if not _PACKAGE.fullmatch(pkg or "-") or pkg in sys.stdlib_module_names or pkg in ("peftlab", "test", "tests"):
        raise ConfigError(f"--name: {pkg!r} is not a usable package name (lower-case letters, digits and _, "
                          "not starting with a digit, not a standard or peftlab module); give one with --name")
    if folder.exists() and (not folder.is_dir() or any(folder.iterdir())):
        raise ConfigError(f"folder: {folder} already exists and is not an empty folder (peftlab init writes only "
                          "into a new or empty folder)")
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        for path, text in files(pkg).items():
            (staging / path).parent.mkdir(parents=True, exist_ok=True)
            (staging / path).write_text(text)
        if folder.exists():
            folder.rmdir()  # empty, checked above
        staging.rename(folder)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return pkg


def main() -> None:
    parser = argparse.ArgumentParser(prog="peftlab", description="peftlab's project command")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("init", help="write a research project of your own (plug-ins, configs, tests) into FOLDER")
    p.add_argument("folder", type=Path)
    p.add_argument("--name", help="the package name (default: the folder's name)")
    args = parser.parse_args()
    try:
        pkg = init(args.folder, args.name)
    except (ConfigError, OSError) as err:
        print(f"peftlab init: error: {err}", file=sys.stderr)
        sys.exit(2)
    print(f"wrote {args.folder}/ (package {pkg}); next:\n"
          f"  cd {args.folder} && pip install -e . && peftlab-train experiment={pkg}")


if __name__ == "__main__":
    main()
