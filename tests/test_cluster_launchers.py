"""Sweeps on cluster engines: Hydra's submitit launcher (its local executor here, SLURM's sbatch
script checked without SLURM) and Hydra's Ray launcher on a local Ray cluster give the same run
folders, failure records and sweep index as the local process launcher; a launcher whose package is
missing, or a distributed job its launcher cannot start, is refused before anything is launched."""

from __future__ import annotations

import importlib
import json
import os
from pathlib import Path

import pytest
import yaml

from conftest import console_in_process, run_cli

TINY = ["debug=tiny", "merge_after=false", "trainer.max_steps=3", "zero_shot=false", "forgetting=null"]
# job 1 refuses itself in its own process (prefix tuning cannot use gradient checkpointing)
FAILING = ["method=lora,prefix", "model.gradient_checkpointing=true"]
RAY = ["hydra/launcher=ray", "+hydra.launcher.ray.init.num_cpus=2", "+hydra.launcher.ray.init.include_dashboard=false",
       "+hydra.launcher.ray.remote.max_calls=1"]


def train_in_process(argv: list[str], monkeypatch, capsys) -> tuple[int, str, str]:
    """``peftlab-train`` in this process: (exit status, stdout, stderr)."""
    return console_in_process("peftlab-train", argv, monkeypatch, capsys)


# ------------------------------------------------------------------------- refused before launching
def test_a_launcher_whose_package_is_missing_is_named_with_what_to_install(tmp_path, monkeypatch, capsys):
    from peftlab.runs import launcher

    monkeypatch.setitem(launcher.LAUNCHER_PACKAGES, "ray", (("hydra_plugins.no_such_launcher", "ray"),
                                                           "hydra-ray-launcher"))
    sweep = tmp_path / "sweep"
    code, out, err = train_in_process(["-m", "debug=tiny", "seed=1,2", "hydra/launcher=ray",
                                       f"hydra.sweep.dir={sweep}"], monkeypatch, capsys)
    assert code == 2 and not sweep.exists()
    assert err.strip() == ("peftlab-train: error: hydra/launcher=ray needs the hydra-ray-launcher package "
                           "(hydra_plugins.no_such_launcher is not installed): pip install 'hydra-ray-launcher' "
                           "(or peftlab's sweeps extra: pip install -e '.[sweeps]')")
    # the dry run says the same
    code, out, err = train_in_process(["-m", "--dry-run", "debug=tiny", "seed=1,2", "hydra/launcher=ray"],
                                      monkeypatch, capsys)
    assert code == 2 and "needs the hydra-ray-launcher package" in err


def test_submitit_without_submitit_is_refused_naming_the_package(monkeypatch):
    from peftlab.runs.launcher import missing_launcher_package

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "submitit" else real(name, *a))
    assert missing_launcher_package("submitit_slurm") == (
        "hydra/launcher=submitit_slurm needs the hydra-submitit-launcher package (submitit is not installed): "
        "pip install 'hydra-submitit-launcher' (or peftlab's sweeps extra: pip install -e '.[sweeps]')")
    assert missing_launcher_package("process") is None and missing_launcher_package(None) is None


@pytest.mark.parametrize("launcher, why", [
    ("process", "each job runs in one process, and Lightning would start the others by re-running the whole "
                "sweep's command line"),
    ("submitit_local", "submitit's local executor runs each job as one process, and Lightning would start the "
                       "others by re-running submitit's job runner, which runs the whole job again in the same folder"),
    ("ray", "a Ray task is one process, and Lightning would start the others by re-running the Ray worker's "
            "command line"),
])
def test_a_distributed_job_under_a_launcher_that_cannot_start_its_processes_is_refused_first(
        launcher, why, tmp_path, monkeypatch, capsys):
    sweep = tmp_path / "sweep"
    code, out, err = train_in_process(["-m", "debug=tiny", "hardware=cpu,ddp_cpu", "seed=1,2",
                                       f"hydra/launcher={launcher}", f"hydra.sweep.dir={sweep}"], monkeypatch, capsys)
    assert code == 2 and not sweep.exists()
    assert err.strip() == (f"peftlab-train: error: job 2 (debug=tiny hardware=ddp_cpu seed=1): hardware=ddp_cpu under "
                           f"-m with hydra/launcher={launcher}: a distributed job needs 2 processes; {why}. Use "
                           "hydra/launcher=submitit_slurm (one SLURM task per process), or run the jobs one by one "
                           "without -m (1 more job(s) refused alike)")


def test_slurm_hosts_a_distributed_job_and_the_slurm_file_composes_with_a_clusters_fields(monkeypatch, capsys):
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    from omegaconf import OmegaConf

    from peftlab.commands.cli import check_launcher

    # SLURM starts a distributed job's processes itself: no refusal
    check_launcher("peftlab-train", ["-m", "debug=tiny", "hardware=ddp", "seed=1,2", "hydra/launcher=slurm"])
    code, out, err = train_in_process(["-m", "--cfg", "hydra", "--package", "hydra.launcher", "debug=tiny", "seed=1",
                                       "hydra/launcher=slurm", "hydra.launcher.partition=gpu",
                                       "hydra.launcher.account=lab", "hydra.launcher.tasks_per_node=4"],
                                      monkeypatch, capsys)
    assert code == 0, err
    shown = OmegaConf.create(yaml.safe_load(out.split("# @package hydra.launcher\n", 1)[1]))
    assert shown._target_ == "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher"
    assert (shown.partition, shown.account, shown.tasks_per_node, shown.nodes, shown.gpus_per_node,
            shown.timeout_min, shown.mem_gb) == ("gpu", "lab", 4, 1, 1, 240, 64)


# ------------------------------------------------------------------------------ real sweeps (integration)
def _fake_slurm(folder: Path) -> dict:
    """An ``sbatch`` that keeps the script it is handed and refuses it, and an ``srun`` to be found."""
    folder.mkdir()
    (folder / "sbatch").write_text('#!/bin/sh\ncp "$1" "$(dirname "$1")/../sbatch.sh"\n'
                                   'echo "no SLURM here" >&2\nexit 1\n')
    (folder / "srun").write_text("#!/bin/sh\nexit 0\n")
    for name in ("sbatch", "srun"):
        (folder / name).chmod(0o755)
    return {"PATH": f"{folder}{os.pathsep}{os.environ['PATH']}"}


@pytest.mark.integration
def test_the_slurm_file_gives_the_sbatch_script_a_cluster_gets(tmp_path):
    sweep = tmp_path / "sweep"
    proc = run_cli("peftlab-train", "-m", "debug=tiny", "seed=1,2", "hydra/launcher=slurm",
                   "hydra.launcher.partition=gpu", "hydra.launcher.account=lab",
                   "hydra.launcher.setup=[source venv/bin/activate]",
                   f"hydra.sweep.dir={sweep}", env=_fake_slurm(tmp_path / "bin"))
    assert proc.returncode != 0 and "no SLURM here" in proc.stderr
    script = (sweep / "sbatch.sh").read_text().splitlines()
    for line in ("#SBATCH --partition=gpu", "#SBATCH --account=lab", "#SBATCH --array=0-1%2", "#SBATCH --nodes=1",
                 "#SBATCH --ntasks-per-node=1", "#SBATCH --gpus-per-node=1", "#SBATCH --cpus-per-task=8",
                 "#SBATCH --mem=64GB", "#SBATCH --time=240", "source venv/bin/activate"):
        assert line in script, line
    assert not [p for p in sweep.iterdir() if p.is_dir() and p.name.isdigit()]  # no job ran


def _files(folder: Path) -> set[str]:
    """What a job folder holds (the Lightning logger's versioned files by name only)."""
    return {str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()}


def _index(sweep: Path) -> list[tuple]:
    rows = [json.loads(line) for line in (sweep / "index.jsonl").read_text().splitlines()]
    return sorted((r["event"], r.get("job", -1), r.get("status"), tuple(r.get("overrides") or ()),
                   Path(r["run_dir"]).relative_to(sweep).as_posix() if "run_dir" in r else None) for r in rows)


@pytest.fixture(scope="module")
def by_processes(tmp_path_factory, cache_dir) -> tuple[Path, str]:
    """The reference: the same sweep with the local default launcher, a process per job."""
    sweep = tmp_path_factory.mktemp("process") / "sweep"
    proc = run_cli("peftlab-train", "-m", *TINY, *FAILING, f"hydra.sweep.dir={sweep}")
    return sweep, proc.stdout + proc.stderr


def _same_sweep_as_the_process_launcher(sweep: Path, proc, by_processes: tuple[Path, str]) -> None:
    reference, reference_log = by_processes
    assert proc.returncode == 1, proc.stderr[-3000:]  # the sweep says that a job failed, after running the others
    assert "1 job(s) of the sweep failed: 1 (see failed.json in each)" in reference_log
    assert "1 job(s) of the sweep failed: 1 (see failed.json in each)" in proc.stdout + proc.stderr
    assert json.loads((sweep / "0" / "metrics.json").read_text())["method"] == "lora"
    failed = json.loads((sweep / "1" / "failed.json").read_text())
    assert failed == {**json.loads((reference / "1" / "failed.json").read_text()), "traceback": failed["traceback"]}
    assert "method=prefix cannot train with model.gradient_checkpointing=true" in failed["error"]
    for job in ("0", "1"):
        assert _files(sweep / job) == _files(reference / job), job
    assert _index(sweep) == _index(reference)
    report = run_cli("peftlab-report", str(sweep), f"hydra.run.dir={sweep.parent / 'log'}")
    assert report.returncode == 0, report.stderr[-2000:]
    md = (sweep / "report" / "results.md").read_text()
    assert "1 of 1 failed" in next(line for line in md.splitlines() if "method=prefix" in line)
    assert "1 of 1 failed" not in next(line for line in md.splitlines() if "method=lora" in line)


@pytest.mark.integration
def test_submitit_local_sweep_gives_the_process_launchers_folders_failures_and_index(tmp_path, by_processes):
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    sweep = tmp_path / "sweep"
    proc = run_cli("peftlab-train", "-m", *TINY, *FAILING, "hydra/launcher=submitit_local",
                   "hydra.launcher.timeout_min=10", f"hydra.sweep.dir={sweep}")
    _same_sweep_as_the_process_launcher(sweep, proc, by_processes)
    assert (sweep / ".submitit").is_dir()  # submitit's own records of the jobs, beside them


@pytest.mark.integration
def test_ray_sweep_on_a_local_cluster_gives_the_process_launchers_folders_failures_and_index(tmp_path, by_processes):
    pytest.importorskip("hydra_plugins.hydra_ray_launcher")
    sweep = tmp_path / "sweep"
    proc = run_cli("peftlab-train", "-m", *TINY, *FAILING, *RAY, f"hydra.sweep.dir={sweep}")
    _same_sweep_as_the_process_launcher(sweep, proc, by_processes)
    assert "Initializing ray with config: {'address': None, 'num_cpus': 2, 'include_dashboard': False" in proc.stdout
