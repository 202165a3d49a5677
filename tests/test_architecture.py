"""The code's shape, held by tests: methods and tasks are plug-ins that nothing else branches on,
adding a method takes one module and one YAML (and no test edit), entry points stay thin and
independent, and the config system does not depend on the plug-ins."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest
import tomllib

from peftlab.methods import METHODS
from peftlab.tasks import TASKS

from conftest import CONF, ROOT

SRC = ROOT / "src" / "peftlab"
PLUGIN_DIRS = (SRC / "methods", SRC / "tasks")


def sources(exclude: tuple[Path, ...] = ()) -> list[Path]:
    return [p for p in sorted(SRC.rglob("*.py")) if not any(p.is_relative_to(d) for d in exclude)]


def test_method_registry_matches_the_yaml_files():
    assert set(METHODS) == {p.stem for p in (CONF / "method").glob("*.yaml")}


def test_nothing_outside_the_plug_ins_branches_on_a_method_or_task_name():
    """No comparison with, membership test on, or table keyed by a method or task-type name."""
    names = "|".join(map(re.escape, [*METHODS, *TASKS]))
    literal = rf"""["']({names})["']"""
    branch = re.compile(rf"(==|!=|\bin\b)\s*[\(\[\{{]?\s*{literal}|{literal}\s*(==|!=|\bin\b|:)"
                        r"|isinstance\(\w+, \w+Schema\)")
    found = [f"{p.relative_to(ROOT)}:{i}: {line.strip()}" for p in sources(exclude=PLUGIN_DIRS)
             for i, line in enumerate(p.read_text().splitlines(), 1) if branch.search(line)]
    assert found == []


def test_the_branch_check_can_fail(tmp_path):
    """The pattern above catches the kinds of branches the plug-ins replaced."""
    names = "|".join(map(re.escape, [*METHODS, *TASKS]))
    literal = rf"""["']({names})["']"""
    branch = re.compile(rf"(==|!=|\bin\b)\s*[\(\[\{{]?\s*{literal}|{literal}\s*(==|!=|\bin\b|:)")
    for line in ['if task_type == "seq_cls":', 'if method.name in ("prefix", "prompt"):',
                 'classes = {"causal_lm": A, "seq_cls": B}', 'if "full" == name:']:
        assert branch.search(line), line


def test_no_source_file_is_over_300_lines():
    long = {str(p.relative_to(ROOT)): n for p in sources() if (n := len(p.read_text().splitlines())) > 300}
    assert long == {}


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
            found |= {f"{node.module}.{a.name}" for a in node.names}
    return found


def test_no_entry_point_imports_another():
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    entry_modules = {target.split(":")[0] for target in scripts.values()}
    assert len(entry_modules) == len(scripts)
    for module in entry_modules:
        path = SRC / (module.split(".", 1)[1].replace(".", "/") + ".py")
        others = entry_modules - {module}
        assert not _imports(path) & others, (module, _imports(path) & others)


def test_the_config_system_does_not_import_the_plug_ins():
    for path in sorted((SRC / "config").glob("*.py")):
        bad = {m for m in _imports(path) if m.startswith(("peftlab.methods", "peftlab.tasks"))}
        assert not bad, (path.name, bad)


# --- adding a method: docs/adding-a-method.md shows the whole change -----------------------------
DOC = ROOT / "docs" / "adding-a-method.md"


def _block_after(heading: str) -> str:
    text = DOC.read_text()
    start = text.index(heading)
    body = text[text.index("```", start):]
    body = body[body.index("\n") + 1:]
    return body[: body.index("```")]


@pytest.mark.parametrize("path", ["src/peftlab/methods/loha.py", "conf/method/loha.yaml"])
def test_the_adding_a_method_page_shows_the_real_files(path):
    assert _block_after(f"## `{path}`") == (ROOT / path).read_text()
    stat = DOC.read_text()
    lines = len((ROOT / path).read_text().splitlines())
    assert re.search(rf"{re.escape(path)}\s+\|\s+{lines} \+", stat), f"the diff stat line of {path}"


def test_the_added_method_is_everywhere_without_a_test_edit():
    from test_methods import CELLS

    assert "loha" in METHODS and {f for m, f in CELLS if m == "loha"} == {f for m, f in CELLS if m == "lora"}
    named = [p.name for p in (ROOT / "tests").glob("*.py")
             if p.name != "test_architecture.py" and re.search(r"\bloha\b", p.read_text(), re.I)]
    assert named == []  # no test file had to learn its name


def test_the_readmes_method_table_is_the_registrys():
    """README.md holds what peftlab-methods prints (python scripts/update_readme.py writes it)."""
    import importlib.util

    from peftlab.methods.table import capability_table

    spec = importlib.util.spec_from_file_location("update_readme", ROOT / "scripts" / "update_readme.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    readme = (ROOT / "README.md").read_text()
    assert script.with_table(readme, capability_table()) == readme, "run python scripts/update_readme.py"
    assert len(capability_table().splitlines()) == len(METHODS) + 2
