"""Plug-ins from the user's own code: a project made by ``peftlab init``, installed (an entry point) or
named on the command line (``plugins=[...]``), trains with its own method, task type and reward; a run
folder that names a plug-in is data: eval, merge, rerun and resume refuse it until the user loads it."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import run_cli

STEPS = ["precision=fp32", "trainer.max_steps=2", "zero_shot=false", "forgetting=null", "logger=none",
         "merge_after=false"]


def not_loaded(where: str, module: str = "mylab.plugin") -> str:
    return (f"{where}: plugins: names the plug-in {module!r}, which this command has not loaded (code is loaded "
            f"only from your own command line or environment: add plugins=[{module}] to the command, or install "
            "the package that provides it)")


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> dict[str, Path]:
    """``peftlab init`` into a fresh folder, and the project installed into a folder of its own (as
    ``pip install`` would into an environment: its entry point is found on that path)."""
    root = tmp_path_factory.mktemp("project")
    made = subprocess.run([str(Path(sys.executable).parent / "peftlab"), "init", str(root / "mylab")],
                          capture_output=True, text=True, timeout=60)
    assert made.returncode == 0, made.stderr
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "--target",
                    str(root / "site"), str(root / "mylab")], check=True, capture_output=True, timeout=300)
    return {"folder": root / "mylab", "site": root / "site", "src": root / "mylab" / "src", "root": root}


@pytest.fixture(scope="module")
def installed_run(project, cache_dir) -> Path:
    """A finished run of the project's method on its task type, found through the entry point."""
    run_dir = project["root"] / "run"
    proc = run_cli("peftlab-train", "experiment=mylab", *STEPS, f"hydra.run.dir={run_dir}", cwd=project["folder"],
                   env={"PYTHONPATH": str(project["site"])})
    assert proc.returncode == 0, proc.stderr[-3000:]
    return run_dir


def test_the_installed_project_trains_with_its_own_method_and_task(installed_run):
    metrics = json.loads((installed_run / "metrics.json").read_text())
    assert (metrics["method"], metrics["model"]) == ("mylab_qv", "tiny_mylab")
    config = (installed_run / "config.yaml").read_text()
    assert "task_type: mylab_numbers" in config and "plugins:\n- mylab.plugin\n" in config
    assert metrics["versions"]["plugins"] == {"mylab.plugin": "entry point mylab of mylab"}
    adapter = json.loads((installed_run / "adapter" / "adapter_config.json").read_text())
    assert sorted(adapter["target_modules"]) == ["q_proj", "v_proj"] and adapter["r"] == 4


@pytest.mark.integration
def test_the_capability_table_lists_the_plug_in_method_and_task_type(project):
    proc = run_cli("peftlab-methods", env={"PYTHONPATH": str(project["site"])})
    assert proc.returncode == 0, proc.stderr[-2000:]
    row = next(line for line in proc.stdout.splitlines() if line.startswith("| `mylab_qv` |"))
    assert row.startswith("| `mylab_qv` | low-rank updates of W_q and W_v | ") and "`mylab_numbers`" in row


# merge reads a run as eval does (runs/config.py): CI's integration run has it as a console script too
@pytest.mark.parametrize("command", ["eval", pytest.param("merge", marks=pytest.mark.integration), "rerun", "resume"])
def test_a_run_naming_a_plug_in_is_refused_until_the_user_loads_it(command, installed_run, tmp_path):
    run = installed_run
    if command == "resume":  # a run killed before its end: no metrics.json (a copy, the shared run stays whole)
        run = tmp_path / "killed"
        shutil.copytree(installed_run, run, ignore=shutil.ignore_patterns(".lock", "metrics.json"))
    argv = {"eval": ("peftlab-eval", f"run_dir={run}", f"hydra.run.dir={tmp_path / 'out'}"),
            "merge": ("peftlab-merge", f"run_dir={run}", f"out_dir={tmp_path / 'out'}"),
            "rerun": ("peftlab-train", "--config-dir", str(run), "--config-name", "rerun",
                      f"hydra.run.dir={tmp_path / 'out'}"),
            "resume": ("peftlab-train", f"resume={run}")}[command]
    where = {"eval": f"run_dir: {run}/config.yaml", "merge": f"run_dir: {run}/config.yaml",
             "rerun": f"{run}/rerun.yaml", "resume": f"resume: {run}/config.yaml"}[command]
    proc = run_cli(*argv)
    assert proc.returncode == 2 and proc.stderr.strip().splitlines() == [
        f"peftlab-{argv[0].split('-')[1]}: error: {not_loaded(where)}"], proc.stderr[-2000:]
    assert not (tmp_path / "out").exists()


@pytest.mark.integration
def test_the_command_line_loads_a_plug_in_that_is_not_installed(installed_run, project, tmp_path):
    """The same run evaluated with plugins=[mylab.plugin] and the package's source on the path (a copy
    without the build's egg-info, which would declare the entry point)."""
    shutil.copytree(project["src"] / "mylab", tmp_path / "plain" / "mylab")
    proc = run_cli("peftlab-eval", f"run_dir={installed_run}", "plugins=[mylab.plugin]", "precision=fp32",
                   f"hydra.run.dir={tmp_path / 'eval'}", env={"PYTHONPATH": str(tmp_path / "plain")})
    assert proc.returncode == 0, proc.stderr[-3000:]
    record = json.loads((tmp_path / "eval" / "eval.json").read_text())
    assert record["versions"]["plugins"] == {"mylab.plugin": "command line"}
    assert record["metrics"]["exact_match"] == json.loads((installed_run / "metrics.json").read_text())[
        "test"]["exact_match"]


def test_plug_ins_are_named_on_the_command_line_in_every_form():
    from peftlab.config.user_plugins import command_line_plugins

    assert command_line_plugins(["plugins=[a.b, c]", "+plugins=d", "x=1", "++plugins=['e']", "plugins=[]"]) == [
        "a.b", "c", "d", "e"]


def test_a_plug_in_that_cannot_load_is_one_line(tmp_path, monkeypatch):
    from peftlab.config.user_plugins import check_loaded, load
    from peftlab.errors import ConfigError

    (tmp_path / "broken_plugin.py").write_text("raise RuntimeError('no licence key\\nsecond line')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    cases = {"plugins=[no_such_module_here]": "plugins: no module named 'no_such_module_here' (install the package "
                                              "that provides it, or put its folder on PYTHONPATH)",
             "plugins=[a-b]": "plugins: 'a-b' is not a module name (e.g. plugins=[mypkg.rewards])",
             "plugins=[broken_plugin]": "plugins: 'broken_plugin' cannot be imported: RuntimeError: no licence key"}
    for arg, message in cases.items():
        with pytest.raises(ConfigError) as err:
            load([arg])
        assert str(err.value) == message
    with pytest.raises(ConfigError) as err:
        check_loaded(["mylab.plugin"], "run_dir: x/config.yaml: plugins")
    assert str(err.value) == not_loaded("run_dir: x/config.yaml")


def short(prompts, completions, **kwargs):
    return [1.0]


def partial(prompts, completions, answer, **kwargs):
    return [None if a is None else float(c == a) for c, a in zip(completions, answer, strict=True)]


def failing(prompts, completions, **kwargs):
    raise KeyError("answer")


def test_a_reward_that_breaks_the_convention_is_named(monkeypatch):
    from peftlab.errors import ConfigError
    from peftlab.tasks import rewards

    for fn in (short, partial, failing):
        monkeypatch.setitem(rewards.REWARD_FUNCTIONS, fn.__name__, fn)
    args = (["p", "p"], ["7", "8"], {"answer": ["7", None]}, 6)
    scored = rewards.reward_values("partial", *args)
    assert scored[0] == 1.0 and math.isnan(scored[1])  # None: not counted (TRL's nansum)
    with pytest.raises(ConfigError) as err:
        rewards.reward_values("short", *args)
    assert str(err.value) == ("rl.rewards.short: the reward must give one finite number (or None) per completion; "
                              "test_plugins.short gave [1.0] for 2 completions")
    with pytest.raises(ConfigError) as err:
        rewards.reward_values("failing", *args)
    assert str(err.value) == "rl.rewards.failing: the reward function test_plugins.failing failed: KeyError: 'answer'"


def test_init_writes_only_into_a_new_or_empty_folder(tmp_path):
    from peftlab.commands.project import init
    from peftlab.errors import ConfigError

    used = tmp_path / "used"
    used.mkdir()
    (used / "notes.txt").write_text("mine")
    with pytest.raises(ConfigError) as err:
        init(used)
    assert str(err.value) == (f"folder: {used} already exists and is not an empty folder (peftlab init writes only "
                              "into a new or empty folder)")
    with pytest.raises(ConfigError, match=r"^--name: 'json' is not a usable package name"):
        init(tmp_path / "json")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["used"] and os.listdir(used) == ["notes.txt"]
    assert init(tmp_path / "My-Lab") == "my_lab" and (tmp_path / "My-Lab" / "src" / "my_lab" / "plugin.py").is_file()


@pytest.mark.integration
def test_the_project_trains_evaluates_and_reports_with_its_method_task_and_reward(project, installed_run, tmp_path):
    """The scaffold's promise end to end, through the entry point: online RL with the project's reward, the
    SFT run evaluated, both reported; and the project's own test passes."""
    env, cwd = {"PYTHONPATH": str(project["site"])}, project["folder"]
    rl = tmp_path / "rl"
    proc = run_cli("peftlab-train", "experiment=mylab", "data.task_type=rl", "rl=grpo",
                   "rl.rewards={mylab_number: 1.0, date_exact: 0.5}", "rl.completions_every=1", *STEPS,
                   f"hydra.run.dir={rl}", cwd=cwd, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [json.loads(line) for line in (rl / "completions.jsonl").read_text().splitlines()]
    assert rows and all(r["mylab_number"] in (0.0, 1.0) for r in rows)
    assert all(r["reward"] == pytest.approx(r["mylab_number"] + 0.5 * r["date_exact"], abs=1e-3) for r in rows)
    proc = run_cli("peftlab-eval", f"run_dir={installed_run}", "precision=fp32", f"hydra.run.dir={tmp_path / 'eval'}",
                   cwd=cwd, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    proc = run_cli("peftlab-report", str(installed_run), str(rl), f"out_dir={tmp_path / 'report'}", "plots=false",
                   cwd=cwd, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    groups = json.loads((tmp_path / "report" / "report.json").read_text())["groups"]
    assert [g["method"] for g in groups] == ["mylab_qv", "mylab_qv"] and all(g["status"] == "ok" for g in groups)
    tests = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests"], cwd=cwd,
                           capture_output=True, text=True, timeout=600, env={**os.environ, **env})
    assert tests.returncode == 0 and "1 passed" in tests.stdout, tests.stdout[-3000:]


@pytest.mark.integration
def test_a_sweep_job_loads_what_the_sweep_loaded(project, tmp_path, cache_dir):
    """hydra/launcher=process runs every job in a fresh process: it imports the plug-ins the sweep's own
    command line named (here not installed: only plugins=[...] names it)."""
    shutil.copytree(project["src"] / "mylab", tmp_path / "plain" / "mylab")
    proc = run_cli("peftlab-train", "-m", "plugins=[mylab.plugin]", "experiment=mylab", *STEPS, "method.r=1,2",
                   f"hydra.sweep.dir={tmp_path / 'sweep'}", cwd=project["folder"],
                   env={"PYTHONPATH": str(tmp_path / "plain")})
    assert proc.returncode == 0, proc.stderr[-3000:]
    for job, rank in (("0", 1), ("1", 2)):
        metrics = json.loads((tmp_path / "sweep" / job / "metrics.json").read_text())
        assert metrics["method"] == "mylab_qv" and metrics["versions"]["plugins"] == {"mylab.plugin": "command line"}
        assert json.loads((tmp_path / "sweep" / job / "adapter" / "adapter_config.json").read_text())["r"] == rank


@pytest.mark.integration
def test_the_rl_guide_s_command_line_trains_with_the_user_s_reward(project, tmp_path, cache_dir):
    """docs/guides/rl.md: peftlab-train data=date_prompts rl=grpo plugins=[mylab.plugin] 'rl.rewards={brevity: 0.5,
    date_exact: 1.0}', with the package's source on the path."""
    shutil.copytree(project["src"] / "mylab", tmp_path / "plain" / "mylab")
    proc = run_cli("peftlab-train", "debug=tiny", "data=date_prompts", "rl=grpo", "plugins=[mylab.plugin]",
                   "rl.rewards={brevity: 0.5, date_exact: 1.0}", "rl.completions_every=1", *STEPS,
                   f"hydra.run.dir={tmp_path / 'rl'}", env={"PYTHONPATH": str(tmp_path / "plain")})
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [json.loads(line) for line in (tmp_path / "rl" / "completions.jsonl").read_text().splitlines()]
    assert rows and all(r["brevity"] == pytest.approx(1 / (1 + len(r["completion"].split())), abs=1e-4) for r in rows)


def test_a_loaded_plug_in_s_classes_may_be_targets(monkeypatch):
    """A callback of one's own needs no environment variable once its package is a loaded plug-in; a
    package that is not loaded stays refused."""
    from peftlab.config import user_plugins
    from peftlab.config.instantiate import disallowed_targets

    node = {"mine": {"_target_": "mylab.callbacks.Mine"}}
    assert disallowed_targets(node, "callbacks")[0].startswith("callbacks.mine._target_: 'mylab.callbacks.Mine' is "
                                                               "not a class peftlab instantiates")
    monkeypatch.setitem(user_plugins._LOADED, "mylab.plugin", "command line")
    assert disallowed_targets(node, "callbacks") == []
