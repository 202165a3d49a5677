"""peftlab installs as a user installs it: every import belongs to a declared dependency or extra,
and the wheel, in an isolated environment that holds only the declared dependencies and the
``plots`` extra, trains a 2-seed sweep from any folder and reports it."""

from __future__ import annotations

import ast
import json
import os
import re
import shutil
import subprocess
import sys

import pytest
import tomllib

from conftest import ROOT


def _imported(folder) -> set[str]:
    """The top-level modules the files under ``folder`` import (absolute imports, at any depth), but
    the folder's own (a script that imports a sibling script)."""
    found = set()
    for path in folder.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                found |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                found.add(node.module.split(".")[0])
    own = {p.stem for p in folder.glob("*.py")}  # top-level files only: src/ holds packages
    return found - set(sys.stdlib_module_names) - {"peftlab", "conftest"} - own


def _name(requirement: str) -> str:
    return re.sub(r"[-_.]+", "-", re.match(r"[A-Za-z0-9_.-]+", requirement).group(0)).lower()


def _declared() -> tuple[set[str], dict[str, set[str]]]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return ({_name(r) for r in project["dependencies"]},
            {extra: {_name(r) for r in reqs} for extra, reqs in project["optional-dependencies"].items()})


# Extras that a plain `make setup` does not install (llama.cpp builds from source for 20 min): their
# modules have no installed distribution to name their owner, so the owner is written here.
NOT_INSTALLED_BY_SETUP = {"llama_cpp": "llama-cpp-python"}


def _owners() -> dict[str, list[str]]:
    from importlib.metadata import packages_distributions

    return {m: [d] for m, d in NOT_INSTALLED_BY_SETUP.items()} | packages_distributions()


def _undeclared(modules: set[str], allowed: set[str]) -> dict[str, list[str]]:
    owners = _owners()
    return {m: owners.get(m, ["(no installed distribution)"]) for m in sorted(modules)
            if not {_name(d) for d in owners.get(m, [])} & allowed}


def test_every_import_belongs_to_a_declared_dependency():
    """src/ imports only the dependencies and extras; scripts/ may use the extras too (the
    benchmark's TRL route: ``bench``). A module two packages bring along is declared itself."""
    core, extras = _declared()
    everything = core | set().union(*extras.values())
    assert _undeclared(_imported(ROOT / "src"), everything) == {}
    assert _undeclared(_imported(ROOT / "scripts"), everything) == {}
    assert {"scipy", "matplotlib", "filelock", "pyyaml"} <= everything  # what once went undeclared


def test_the_written_owners_agree_with_the_installed_ones():
    """Where an extra that `make setup` skips is installed (`make llamacpp`), its module's written
    owner is the one installed."""
    from importlib.metadata import packages_distributions

    installed = packages_distributions()
    for module, owner in NOT_INSTALLED_BY_SETUP.items():
        if module in installed:
            assert _name(owner) in {_name(d) for d in installed[module]}


def test_the_import_check_sees_an_undeclared_module(tmp_path):
    (tmp_path / "x.py").write_text("import scipy.stats\nfrom yaml import safe_load\n")
    assert set(_undeclared(_imported(tmp_path), {"pyyaml"})) == {"scipy"}


def _build_wheel(tmp_path) -> str:
    """The wheel, built from a copy of the sources (the build leaves nothing in the checkout)."""
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, src / name)
    for name in ("src", "conf"):
        shutil.copytree(ROOT / name, src / name, ignore=shutil.ignore_patterns("local", "__pycache__", "*.egg-info"))
    (src / "conf" / "local").mkdir()  # a machine's own settings stay out of the wheel
    (src / "conf" / "local" / "default.yaml").write_text("seed: 7\n")
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                            "-w", str(tmp_path / "dist"), str(src)], capture_output=True, text=True)
    assert build.returncode == 0, build.stderr[-2000:]
    (wheel,) = (tmp_path / "dist").glob("peftlab-*.whl")
    return str(wheel)


@pytest.mark.integration
def test_the_wheel_with_its_declared_dependencies_sweeps_and_reports(tmp_path, cache_dir):
    wheel = _build_wheel(tmp_path)
    import zipfile

    names = set(zipfile.ZipFile(wheel).namelist())  # the data the package reads at run time
    assert {"peftlab/methods/peft_tuners.json", "peftlab/data/files/numbers/test.jsonl",
            "peftlab/reporting/results_page.html", "peftlab/conf/combination/types.yaml"} <= names
    # an isolated environment (no system or development site-packages): torch's CPU build first,
    # as the Makefile does, then the wheel with the plots extra and what it declares, nothing else
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    py = str(venv / "bin" / "python")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
    for args in (["torch==2.13.0"], [f"{wheel}[plots]"]):
        install = subprocess.run([py, "-m", "pip", "install", "-q", *args], capture_output=True, text=True,
                                 env=env, timeout=1200)
        assert install.returncode == 0, install.stderr[-3000:]
    site = subprocess.run([py, "-c", "import peftlab.config as c, sys; print(c.CONF_DIR); print(sys.path)"],
                          capture_output=True, text=True, env=env, cwd=tmp_path, check=True).stdout
    assert str(venv) in site.splitlines()[0] and str(ROOT) not in site  # the wheel's configs, not the checkout's
    assert subprocess.run([py, "-c", "import pytest"], capture_output=True, env=env).returncode != 0  # isolated

    work = tmp_path / "elsewhere"
    work.mkdir()
    env = {**env, "HF_HUB_OFFLINE": "1", "PEFTLAB_CACHE_DIR": str(cache_dir)}
    sweep = subprocess.run([str(venv / "bin" / "peftlab-train"), "-m", "debug=tiny", "seed=1,2", "merge_after=false",
                            "logger=none", "hydra.sweep.dir=sweep"], cwd=work, capture_output=True, text=True,
                           env=env, timeout=900)
    assert sweep.returncode == 0, sweep.stderr[-3000:]
    report = subprocess.run([str(venv / "bin" / "peftlab-report"), "sweep"], cwd=work, capture_output=True,
                            text=True, env=env, timeout=600)
    assert report.returncode == 0, report.stderr[-3000:]
    summary = json.loads((work / "sweep" / "report" / "report.json").read_text())
    assert summary["finished"] == 2 and len(summary["groups"]) == 1
    (group,) = summary["groups"]
    assert group["n"] == 2 and group[f"{summary['metric']}_ci95"] is not None  # scipy's t quantile
    assert {"params_vs_metric.png", "val_loss.png", "throughput_memory.png"} <= set(summary["files"])
    assert not list((venv / "lib").glob("python*/site-packages/peftlab/conf/local"))  # a machine's own settings
