"""The documentation stays true to the code: every command line in README.md and docs/ composes
with Hydra as the command would compose it, and the README stays short."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from conftest import ROOT

PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
COMMANDS = {"peftlab-train": "train", "peftlab-eval": "eval", "peftlab-merge": "merge",
            "peftlab-params": "params", "peftlab-report": "report", "peftlab-generate": "generate",
            "peftlab-harness": "harness"}
# arguments read before Hydra composes: a killed run's folder (runs/resume.py), a rerun file
BEFORE_COMPOSE = ("resume=",)


def _blocks(text: str) -> list[str]:
    return re.findall(r"```(?:bash|sh|console)?\n(.*?)```", text, flags=re.S)


def command_lines(page: Path) -> list[tuple[str, list[str]]]:
    """(command, arguments) for every peftlab command in the page's shell blocks, and for
    ``make run ARGS="..."``; placeholders (``<stamp>``, ``$SLURM_JOB_ID``) become plain words."""
    found = []
    text = page.read_text()
    shell = [*_blocks(text), *re.findall(r"`((?:peftlab-\w+|make run ARGS=)[^`]*)`", text)]
    for block in shell:
        for line in block.replace("\\\n", " ").splitlines():
            if not re.match(r"\s*(peftlab-\w+|make run|torchrun|srun)\b", line):
                continue
            line = re.sub(r"<[^<>]*>", "X", line.split(" # ")[0].split("  #")[0]).replace("$", "")
            words = shlex.split(line, comments=True)
            if words[:2] == ["make", "run"]:
                args = [w.split("=", 1)[1] for w in words if w.startswith("ARGS=")]
                found.append(("train", shlex.split(args[0]) if args else []))
                continue
            starts = [i for i, w in enumerate(words) if w in COMMANDS]
            if starts:
                found.append((COMMANDS[words[starts[0]]], words[starts[0] + 1:]))
    return found


def _first_of_each_sweep(args: list[str]) -> list[str]:
    """One job of a sweep (``-m method=lora,ia3`` -> ``method=lora``), as Hydra's parser reads it."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parser = OverridesParser.create()
    out = []
    for arg in args:
        override = parser.parse_override(arg)
        if override.is_sweep_override():
            value = next(iter(override.sweep_string_iterator()))
            out.append(f"{override.get_key_element()}={value}")
        else:
            out.append(arg)
    return out


def _composable(command: str, args: list[str]) -> list[str] | None:
    if any(a.startswith(("--config-dir", "--config-name", "--help")) for a in args):
        return None  # a rerun file or help: not an override list
    if any("mylab" in a for a in args):  # the example project of `peftlab init mylab`: tests/test_plugins.py
        return None  # makes it and runs these command lines with its plug-ins loaded
    args = [a for a in args if a not in ("-m", "--multirun", "--dry-run") and not a.startswith(BEFORE_COMPOSE)]
    args = [a for i, a in enumerate(args) if a != "--cfg" and (i == 0 or args[i - 1] != "--cfg")]
    if command == "report":
        from peftlab.commands.report import positional_to_inputs

        args = positional_to_inputs(args)
    return _first_of_each_sweep(args)


EXAMPLES = [(page, command, args) for page in PAGES for command, args in command_lines(page)]


def test_the_docs_hold_many_command_lines():
    assert len(EXAMPLES) > 80
    assert {c for _, c, _ in EXAMPLES} == set(COMMANDS.values())


@pytest.mark.parametrize("page", PAGES, ids=[str(p.relative_to(ROOT)) for p in PAGES])
def test_every_command_line_in_the_docs_composes(page):
    from hydra.errors import HydraException

    from peftlab.api import compose
    from peftlab.errors import ConfigError

    failed = []
    for command, args in command_lines(page):
        try:
            overrides = _composable(command, args)
            if overrides is not None:
                compose(command, overrides)
        except (ConfigError, HydraException) as err:
            failed.append(f"peftlab-{command} {' '.join(args)}: {err}")
    assert failed == []


def test_the_check_sees_a_mistyped_example(tmp_path):
    from peftlab.api import compose
    from peftlab.errors import ConfigError

    page = tmp_path / "page.md"
    page.write_text("```bash\npeftlab-train method=lora method.rank=4   # a typo\n```\n")
    [(command, args)] = command_lines(page)
    with pytest.raises(ConfigError, match="method.rank"):
        compose(command, _composable(command, args))


def test_the_readme_is_short_and_generated_parts_are_current():
    import importlib.util

    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 200
    spec = importlib.util.spec_from_file_location("update_docs", ROOT / "scripts" / "update_docs.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    stale = [str(p.relative_to(ROOT)) for p, text in script.generated().items() if p.read_text() != text]
    assert stale == [], "run python scripts/update_docs.py"
    from peftlab.methods import METHODS
    from peftlab.methods.table import capability_table

    assert f"{script.START}\n{capability_table()}\n{script.END}" in readme
    assert len(capability_table().splitlines()) == len(METHODS) + 2
    guide = (ROOT / "docs" / "guides" / "adding-a-method.md").read_text()
    for path in script.SHOWN:  # the guide shows the real files, byte for byte
        assert f"## `{path}`\n\n```" in guide and (ROOT / path).read_text() in guide


# --- results pages name their code, and one fact has one figure -----------------------------------
RESULTS = sorted((ROOT / "docs" / "results").glob("*.md"))
RUNS_LINE = re.compile(r"^> \*\*Runs\*\*: (?P<text>.*)$", re.M)


def _in_history(commit: str) -> bool | None:
    """Whether ``commit`` is in this checkout's history (None: no history to ask, a shallow clone)."""
    import subprocess

    shallow = subprocess.run(["git", "rev-parse", "--is-shallow-repository"], cwd=ROOT, capture_output=True,
                             text=True)
    if shallow.returncode != 0 or shallow.stdout.strip() == "true":
        return None
    found = subprocess.run(["git", "cat-file", "-e", f"{commit}^{{commit}}"], cwd=ROOT, capture_output=True)
    return found.returncode == 0


@pytest.mark.parametrize("page", RESULTS, ids=[p.name for p in RESULTS])
def test_every_results_page_names_the_code_machine_date_and_command_of_its_runs(page):
    found = RUNS_LINE.search(page.read_text())
    assert found, f"{page.name}: no '> **Runs**:' line"
    text = found.group("text")
    commits = re.findall(r"commits? `([0-9a-f]{7,40})`", text) + re.findall(r"and `([0-9a-f]{7,40})`", text)
    assert commits, f"{page.name}: the runs line names no commit"
    assert all(_in_history(c) is not False for c in commits), commits
    assert re.search(r"\d{4}-\d{2}-\d{2}", text) and "machine" in text
    assert re.search(r"`(peftlab-\w+|python scripts/)[^`]*`", text), f"{page.name}: no command"


DURATION = re.compile(r"(?:about )?\d+ min(?: \d+ s)?")


FACTS = ("make run", "make test")


def _names(text: str) -> list[str]:
    """The make targets ``text`` names (``make test``, ``make test-all``, ...)."""
    return sorted(set(re.findall(r"(?<![\w-])(make [\w-]+)", text)))


def _figures(fact: str) -> dict[str, set[str]]:
    """Every duration stated about ``fact`` (make run, make test) in the README, the docs and the
    Makefile, by file: in a paragraph that names that fact and no other, or on a line that does."""
    found: dict[str, set[str]] = {}
    for path in [ROOT / "README.md", ROOT / "Makefile", *sorted((ROOT / "docs").rglob("*.md"))]:
        for paragraph in re.split(r"\n\s*\n", path.read_text()):
            named = _names(paragraph)
            if named == [fact]:
                found.setdefault(path.name, set()).update(DURATION.findall(paragraph))
            elif fact in named:
                for line in paragraph.splitlines():
                    if _names(line) == [fact]:
                        found.setdefault(path.name, set()).update(DURATION.findall(line))
    return {k: v for k, v in found.items() if v}


@pytest.mark.parametrize("fact", ["make run", "make test"])
def test_the_readme_and_the_docs_give_one_figure_for_each_timing(fact):
    figures = _figures(fact)
    rounded = {f for found in figures.values() for f in found if f.startswith("about")}
    measured = {f for found in figures.values() for f in found if not f.startswith("about")}
    assert "README.md" in figures and len(rounded) <= 1 and len(measured) <= 1, figures


# Pages whose figures were typed from a command's printed output before results pages were built
# from files a command wrote; each names its commit (above). New pages may not join this list:
# their figures come from the files they include (--8<--) or name (<!-- source: ... -->).
TYPED = {"adapter-combination.md", "benchmarks.md", "online-rl.md", "speed-and-memory.md", "method-zoo.md",
         "precision.md"}
DECIMAL = re.compile(r"(?<![\w.])[-+−]?\d[\d,]*\.\d+(?!\w|\.\d)")


def _decimals(text: str) -> list[str]:
    return [m.replace("−", "-").replace(",", "") for m in DECIMAL.findall(text)]


def unsourced_figures(page: Path) -> list[str]:
    """The decimal figures in a page's own text (outside code blocks) that are no rounding of a figure
    in the files it includes or names as its sources."""
    text = page.read_text()
    named = re.findall(r'--8<-- "([^"]+)"', text) + re.findall(r"<!-- source: (\S+) -->", text)
    pool = [abs(float(x)) for name in named for x in _decimals((page.parent.parent / name).read_text())]
    own = "\n".join(line for line in re.sub(r"```.*?```", "", text, flags=re.S).splitlines()
                    if not line.startswith("--8<--"))
    return [shown for shown in _decimals(own)
            if not any(abs(x - abs(float(shown))) <= 0.5 * 10 ** -len(shown.split(".")[1]) + 1e-12 for x in pool)]


@pytest.mark.parametrize("page", RESULTS, ids=[p.name for p in RESULTS])
def test_every_figure_on_a_results_page_comes_from_a_file_a_command_wrote(page):
    if page.name in TYPED:
        assert unsourced_figures(page), f"{page.name}: every figure is sourced now; take it off TYPED"
        return
    assert unsourced_figures(page) == []


def test_the_figure_check_sees_a_typed_figure(tmp_path):
    (tmp_path / "figures").mkdir()
    (tmp_path / "figures" / "r.md").write_text("| lora | 0.9245 ± 0.0239 |\n")
    (tmp_path / "results").mkdir()
    page = tmp_path / "results" / "p.md"
    page.write_text('LoRA reaches 0.925 (± 0.024) and 0.92.\n\n--8<-- "figures/r.md"\n')
    assert unsourced_figures(page) == []
    page.write_text('LoRA reaches 0.926.\n\n--8<-- "figures/r.md"\n')
    assert unsourced_figures(page) == ["0.926"]
