"""docs/architecture.md stays in step with the code: it names every package of src/peftlab/ and no
other, lists the layers in tests/test_architecture.py's order, and every ``file.py:name`` it points
at is a file with that function or class."""

from __future__ import annotations

import re
from pathlib import Path

from test_architecture import LAYERS, SRC

from conftest import ROOT

PAGE = ROOT / "docs" / "architecture.md"


def packages() -> set[str]:
    """The packages under src/peftlab/ as test_architecture.py counts them (modules and folders)."""
    return {p.stem if p.is_file() else p.name for p in SRC.iterdir()
            if (p.suffix == ".py" and p.stem != "__init__") or (p / "__init__.py").exists()}


def section(text: str, title: str) -> str:
    found = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## |\Z)", text, flags=re.M | re.S)
    assert found, f"{PAGE.name}: no '## {title}' section"
    return found.group(1)


def page_layers(text: str) -> list[set[str]]:
    """The rows of the Layers table, top to bottom: the backticked package names of each."""
    rows = re.findall(r"^\| \d+ \| ([^|]+) \|", section(text, "Layers"), flags=re.M)
    return [set(re.findall(r"`(\w+)`", row)) for row in rows]


def page_packages(text: str) -> list[str]:
    """The first column of the Packages table: `name/` or `name.py`."""
    return re.findall(r"^\| `(\w+)(?:/|\.py)` \|", section(text, "Packages"), flags=re.M)


def unfound_references(text: str) -> list[str]:
    """Every backticked ``path.py`` or ``path.py:name`` (``Class.method``) that names no file under
    src/peftlab/, src/ or the repository, or a name that file does not define."""
    missing = []
    for path, name in re.findall(r"`((?:[\w/]+/)?\w+\.py)(?::([\w.]+))?`", text):
        file = next((base / path for base in (SRC, ROOT / "src", ROOT) if (base / path).is_file()), None)
        if file is None:
            missing.append(path)
            continue
        source = file.read_text()
        for part in name.split(".") if name else ():
            if not re.search(rf"^\s*(?:async )?(?:def|class) {part}\b", source, flags=re.M):
                missing.append(f"{path}:{name}")
                break
    return missing


def test_the_page_names_every_package_and_no_other():
    named = page_packages(PAGE.read_text())
    assert len(named) == len(set(named))
    assert set(named) == packages()


def test_the_page_lists_the_layers_in_the_checked_order():
    assert page_layers(PAGE.read_text()) == LAYERS


def test_every_file_and_function_the_page_points_at_exists():
    text = PAGE.read_text()
    assert len(re.findall(r"`[\w/]+\.py:[\w.]+`", text)) > 20  # the flow is told in the code's own names
    assert unfound_references(text) == []


def test_the_checks_see_a_page_out_of_step(tmp_path):
    text = PAGE.read_text()
    first, second = (", ".join(f"`{p}`" for p in sorted(layer)) for layer in LAYERS[:2])
    swapped = text.replace(f"| 1 | {first} |", "| 1 | SECOND |").replace(f"| 2 | {second} |", f"| 2 | {first} |")
    swapped = swapped.replace("| 1 | SECOND |", f"| 1 | {second} |")
    assert page_layers(swapped)[:2] == [LAYERS[1], LAYERS[0]]
    stale = text.replace("| `errors.py` |", "| `errors.py` |\n| `trainers/` | gone |").replace("| `runs/` |", "| x |")
    assert set(page_packages(stale)) ^ packages() == {"trainers", "runs"}
    wrong = Path(tmp_path / "p.md")
    wrong.write_text("`engine/job.py:TrainingJob.fly`, `engine/jobs.py`, `runs/files.py:atomic_path`")
    assert unfound_references(wrong.read_text()) == ["engine/job.py:TrainingJob.fly", "engine/jobs.py"]
