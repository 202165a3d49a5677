"""Sweeps end to end: a real multirun, its index and report; reproducibility; failed jobs;
the joblib launcher and the optuna sweeper (the cluster launchers: tests/test_cluster_launchers.py)."""

from __future__ import annotations

import csv
import json
import statistics
from pathlib import Path

import pytest

from peftlab.commands.report import positional_to_inputs
from peftlab.reporting.plots import pareto_front
from peftlab.reporting.runs import stats, t95

from conftest import run_cli

TINY = ["debug=tiny", "merge_after=false", "trainer.max_steps=3"]


@pytest.fixture(scope="module")
def sweep(tmp_path_factory, cache_dir):
    folder = tmp_path_factory.mktemp("sweep") / "methods"
    # Hydra's basic launcher: the index and the folders are the sweep's, whichever launcher runs the
    # jobs (the default one, a process each, runs in test_a_failed_job_is_recorded_and_reported)
    proc = run_cli("peftlab-train", "-m", *TINY, "method=lora,ia3", "seed=1,2", "hydra/launcher=basic",
                   f"hydra.sweep.dir={folder}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return folder


def test_each_job_has_a_run_folder_and_the_sweep_an_index(sweep):
    jobs = sorted(p.name for p in sweep.iterdir() if p.is_dir())
    assert jobs == ["0", "1", "2", "3"]
    for job in jobs:
        assert (sweep / job / "metrics.json").exists() and (sweep / job / "adapter").is_dir()
    index = [json.loads(line) for line in (sweep / "index.jsonl").read_text().splitlines()]
    ends = {row["job"]: row for row in index if row["event"] == "end"}
    assert sorted(ends) == [0, 1, 2, 3] and {r["status"] for r in ends.values()} == {"finished"}
    starts = {row["job"]: row["overrides"] for row in index if row["event"] == "start"}
    assert any("method=ia3" in o and "seed=2" in o for o in starts.values())


def test_report_aggregates_over_seeds(sweep, tmp_path):
    proc = run_cli("peftlab-report", str(sweep), f"out_dir={tmp_path / 'report'}", f"hydra.run.dir={tmp_path / 'log'}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = list(csv.DictReader(open(tmp_path / "report" / "results.csv")))
    assert [r["method"] for r in rows] == ["lora", "ia3"]
    for row in rows:
        runs = [json.loads((p / "metrics.json").read_text()) for p in sweep.iterdir()
                if p.is_dir() and json.loads((p / "metrics.json").read_text())["method"] == row["method"]]
        values = [r["test"]["exact_match"] for r in runs]
        assert int(row["n"]) == 2 and row["status"] == "ok"
        assert float(row["exact_match_mean"]) == pytest.approx(statistics.fmean(values))
        assert float(row["exact_match_std"]) == pytest.approx(statistics.stdev(values))
        assert float(row["trainable"]) == runs[0]["params"]["trainable"]
    md = (tmp_path / "report" / "results.md").read_text()
    assert "| method=ia3 |" in md and "±" in md
    assert "\\begin{tabular}" in (tmp_path / "report" / "results.tex").read_text()
    for png in ("params_vs_metric.png", "val_loss.png", "throughput_memory.png"):
        assert (tmp_path / "report" / png).stat().st_size > 1000


@pytest.mark.integration  # a second whole sweep; the fast suite runs one
def test_same_seed_same_metrics_and_rerun_from_saved_config(tmp_path, cache_dir):
    from peftlab import api

    first, second, again = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    for folder in (first, second):  # as the command runs them (the API writes the same folder)
        api.train([*TINY, "seed=7", f"hydra.run.dir={folder}"])
    proc = run_cli("peftlab-train", "--config-dir", str(first), "--config-name", "rerun", f"hydra.run.dir={again}")
    assert proc.returncode == 0, proc.stderr[-2000:]
    m = [json.loads((f / "metrics.json").read_text()) for f in (first, second, again)]
    for key in ("zero_shot", "test", "val", "params"):
        assert m[0][key] == m[1][key] == m[2][key], key
    assert (first / "adapter" / "adapter_model.safetensors").read_bytes() == \
        (again / "adapter" / "adapter_model.safetensors").read_bytes()


@pytest.mark.integration  # a second whole sweep; the fast suite runs one
def test_a_failed_job_is_recorded_and_reported(tmp_path, cache_dir):
    folder = tmp_path / "sweep"
    proc = run_cli("peftlab-train", "-m", *TINY, "method=lora,prefix", "model.gradient_checkpointing=true",
                   f"hydra.sweep.dir={folder}")
    assert proc.returncode != 0  # the sweep says that a job failed...
    assert (folder / "0" / "metrics.json").exists()  # ...after running the others
    failed = json.loads((folder / "1" / "failed.json").read_text())
    assert "method=prefix cannot train with model.gradient_checkpointing=true" in failed["error"]
    proc = run_cli("peftlab-report", str(folder), f"hydra.run.dir={tmp_path / 'log'}")
    assert proc.returncode == 0, proc.stderr[-2000:]
    md = (folder / "report" / "results.md").read_text()
    prefix_row = next(line for line in md.splitlines() if "method=prefix" in line)
    assert "1 of 1 failed" in prefix_row


@pytest.mark.integration
def test_joblib_launcher_shares_the_cores(tmp_path, cache_dir):
    import os

    folder = tmp_path / "sweep"
    proc = run_cli("peftlab-train", "-m", *TINY, "hydra/launcher=joblib", "hydra.launcher.n_jobs=2",
                   "method=lora,ia3", f"hydra.sweep.dir={folder}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    for job in ("0", "1"):
        m = json.loads((folder / job / "metrics.json").read_text())
        assert m["threads"] == max(1, (os.cpu_count() or 1) // 2)


@pytest.mark.integration
def test_optuna_sweep_runs_three_trials(tmp_path, cache_dir):
    folder = tmp_path / "study"
    proc = run_cli("peftlab-train", "-m", "sweep=optuna", *TINY, "hydra.sweeper.n_trials=3",
                   f"hydra.sweep.dir={folder}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert sorted(p.name for p in folder.iterdir() if p.is_dir()) == ["0", "1", "2"]
    result = (folder / "optimization_results.yaml").read_text()
    assert "best_params" in result and "optim.lr" in result


# --- one process per job (hydra/launcher=process, the default of -m) ----------------------------------
QUICK = [*TINY, "zero_shot=false", "forgetting=null", "save_adapter=false"]
TESTS_ON_PATH = {"PYTHONPATH": str(Path(__file__).parent), "PEFTLAB_ALLOWED_TARGETS": "sweep_callbacks."}


def _odd_sweep(folder: Path, modes: str, launcher: str):
    return run_cli("peftlab-train", "-m", *QUICK, "+callbacks.odd._target_=sweep_callbacks.Misbehave",
                   f"+callbacks.odd.mode={modes}", f"hydra/launcher={launcher}", f"hydra.sweep.dir={folder}",
                   env=TESTS_ON_PATH)


def _peak(folder: Path, job: int) -> float:
    return json.loads((folder / str(job) / "metrics.json").read_text())["memory"]["peak_rss_mb"]


@pytest.mark.integration
def test_each_job_has_a_process_of_its_own_so_what_one_keeps_or_how_it_dies_does_not_reach_the_next(tmp_path,
                                                                                                   cache_dir):
    """The same small job first and last; between them a job that keeps 400 MiB and one that is
    killed. In processes of their own the last job peaks within 5% of the first and the killed one is
    recorded as failed; in the sweep's process (the basic launcher, the control) the last job carries
    what the leaking one kept."""
    folder = tmp_path / "process"
    proc = _odd_sweep(folder, "none,leak,die,none", "process")
    assert proc.returncode != 0  # the sweep says that a job failed...
    assert "1 job(s) of the sweep failed: 2" in proc.stdout + proc.stderr  # ...after running the last one
    failed = json.loads((folder / "2" / "failed.json").read_text())
    assert failed["error"] == ("job 2 ended without an answer (exit code -9: killed by SIGKILL (the system may have "
                               "run out of memory))")
    ends = [json.loads(line) for line in (folder / "index.jsonl").read_text().splitlines()]
    assert [(r["job"], r["status"]) for r in ends if r["event"] == "end"] == \
        [(0, "finished"), (1, "finished"), (2, "failed"), (3, "finished")]
    first, leaking, last = _peak(folder, 0), _peak(folder, 1), _peak(folder, 3)
    assert leaking > first + 300  # the leaking job did allocate
    assert abs(last - first) <= 0.05 * first, (first, last)

    control = tmp_path / "basic"
    proc = _odd_sweep(control, "none,leak,none", "basic")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert _peak(control, 2) > _peak(control, 0) + 300


def test_statistics_helpers():
    s = stats([0.8, 0.9, 1.0])
    assert s["mean"] == pytest.approx(0.9) and s["std"] == pytest.approx(0.1) and s["n"] == 3
    assert s["ci95"] == pytest.approx(4.302653 * 0.1 / 3 ** 0.5)
    assert stats([0.5])["ci95"] is None
    # Student t quantiles (scipy): the exact value for every df, not the next table entry
    assert t95(11) == pytest.approx(2.200985) and t95(40) == pytest.approx(2.021075) and t95(1000) < 1.963
    assert pareto_front([(10, 0.5), (100, 0.9), (50, 0.4), (1000, 0.9)]) == [0, 1]
    assert pareto_front([(10, 0.5), (100, 0.9), (50, 0.4), (1000, 0.9)], greater_is_better=False) == [0, 2]
    assert positional_to_inputs(["a/b", "plots=false"]) == ["inputs=['a/b']", "plots=false"]
