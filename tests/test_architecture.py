"""The code's shape, held by tests: the packages form layers that import only downwards, each
command loads only what it needs, methods and tasks are plug-ins that nothing else branches on,
adding a method takes one module and one YAML (and no test edit), and metrics.json has one writer."""

from __future__ import annotations

import ast
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import tomllib

from peftlab.methods import METHODS
from peftlab.tasks import TASKS

from conftest import CONF, ROOT

SRC = ROOT / "src" / "peftlab"
PLUGIN_DIRS = (SRC / "methods", SRC / "tasks", SRC / "objectives")


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
    """Every module a file imports, at the top or inside a function (relative imports resolved)."""
    package = ".".join(("peftlab", *path.relative_to(SRC).parts[:-1]))
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            module = node.module or ""
            if node.level:
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                module = f"{base}.{module}" if module else base
            found.add(module)
            found |= {f"{module}.{a.name}" for a in node.names}
    return found


# Each package imports only from packages below it; the two at the same height do not import each
# other. The package root holds the version and the lazy Python API only.
LAYERS = [
    {"api", "commands", "plugins"},  # the Python API, the console scripts, what a user's plug-in imports
    {"engine"},                  # the training job, LightningModule, trainer, callbacks, precision
    {"export", "reporting"},     # merge and verify; tables and plots over finished runs
    {"methods", "models"},       # the method plug-ins; loading backbones
    {"objectives"},              # how a task is trained: its own loss, online RL (plug-ins of named steps)
    {"tasks"},                   # the task plug-ins: data, loss, metrics, evaluation
    {"data"},                    # sources, tokenization, collators, loaders
    {"runs"},                    # run folders, locks, metrics.json, a run's config
    {"config"},                  # schemas, validation, messages
    {"errors"},
]
RANK = {unit: len(LAYERS) - i for i, layer in enumerate(LAYERS) for unit in layer}


def _unit(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if parts[0] == "peftlab" and len(parts) > 1 and parts[1] in RANK else None


def _layer_violations() -> list[str]:
    found = []
    for path in sources():
        here = _unit(".".join(("peftlab", *path.relative_to(SRC).with_suffix("").parts)))
        if here is None:  # the package root
            continue
        for module in sorted(_imports(path)):
            there = _unit(module)
            if there is not None and there != here and RANK[there] >= RANK[here]:
                found.append(f"{path.relative_to(ROOT)} ({here}) imports {module} ({there})")
    return found


def test_every_package_is_in_a_layer():
    packages = {p.stem if p.is_file() else p.name for p in SRC.iterdir()
                if (p.suffix == ".py" and p.stem != "__init__") or (p / "__init__.py").exists()}
    assert packages == set(RANK)


def test_packages_import_only_from_the_layers_below():
    assert _layer_violations() == []


def test_the_layer_check_sees_a_lazy_upward_import(monkeypatch):
    real = _imports
    planted = SRC / "runs" / "folders.py"
    monkeypatch.setitem(globals(), "_imports", lambda p: real(p) | ({"peftlab.engine.job"} if p == planted else set()))
    assert _layer_violations() == ["src/peftlab/runs/folders.py (runs) imports peftlab.engine.job (engine)"]


def _entry_modules() -> set[str]:
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    modules = {target.split(":")[0] for target in scripts.values()}
    assert len(modules) == len(scripts) and all(m.startswith("peftlab.commands.") for m in modules)
    return modules


def test_no_command_imports_another():
    entry = _entry_modules()
    for module in entry:
        path = SRC / (module.split(".", 1)[1].replace(".", "/") + ".py")
        assert not _imports(path) & (entry - {module}), module


@pytest.mark.parametrize("module", sorted(_entry_modules()))
def test_a_command_loads_no_other_command_and_nothing_heavy(module):
    """Imported in a fresh interpreter (as its console script starts), a command loads no other
    command, not the Python API, and none of the heavy libraries: those load when the job runs."""
    code = ("import json, sys; import " + module + "; "
            "print(json.dumps(sorted(k for k in sys.modules if k.startswith('peftlab') "
            "or k.split('.')[0] in ('torch', 'transformers', 'peft', 'lightning', 'datasets', 'matplotlib'))))")
    loaded = json.loads(subprocess.run([sys.executable, "-c", code], check=True, capture_output=True,
                                       text=True).stdout)
    others = _entry_modules() - {module}
    assert [m for m in loaded if m in others or m == "peftlab.api" or not m.startswith("peftlab")] == []
    assert module in loaded


def test_import_peftlab_loads_no_command():
    code = "import json, sys, peftlab; print(json.dumps(sorted(k for k in sys.modules if k.startswith('peftlab'))))"
    loaded = json.loads(subprocess.run([sys.executable, "-c", code], check=True, capture_output=True,
                                       text=True).stdout)
    assert loaded == ["peftlab"]


def test_the_config_system_does_not_import_the_plug_ins():
    for path in sorted((SRC / "config").glob("*.py")):
        bad = {m for m in _imports(path) if m.startswith(("peftlab.methods", "peftlab.tasks", "peftlab.objectives"))}
        assert not bad, (path.name, bad)


WRITE = re.compile(r"write_json|write_text|atomic_path|json\.dump\(|open\([^)]*[\"'][wa]")


def _metrics_writers(files: list[Path]) -> list[str]:
    return [f"{p.name}:{i}" for p in files for i, line in enumerate(p.read_text().splitlines(), 1)
            if "metrics.json" in line and WRITE.search(line)]


def test_metrics_json_has_one_writer():
    """No line outside runs/metrics.py writes metrics.json: the others call runs.metrics.write_metrics."""
    assert _metrics_writers([p for p in sources() if p != SRC / "runs" / "metrics.py"]) == []
    assert "def write_metrics(" in (SRC / "runs" / "metrics.py").read_text()


def test_the_writer_check_sees_a_second_writer(tmp_path):
    planted = tmp_path / "x.py"
    planted.write_text('values = {}\nwrite_json(run_dir / "metrics.json", values)\n')
    assert _metrics_writers([planted]) == ["x.py:2"]


# --- adding a method: docs/guides/adding-a-method.md shows it (tests/test_docs.py keeps the page current)
def test_the_added_method_is_everywhere_without_a_test_edit():
    from test_methods import CELLS

    assert {m for m, _ in CELLS} == set(METHODS)  # every method is in the matrix
    assert "loha" in METHODS and {f for m, f in CELLS if m == "loha"} == {f for m, f in CELLS if m == "lora"}
    named = [p.name for p in (ROOT / "tests").glob("*.py")
             if p.name != "test_architecture.py" and re.search(r"\bloha\b", p.read_text(), re.I)]
    assert named == []  # no test file had to learn its name
