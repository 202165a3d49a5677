"""hydra/sweeper=seed_budget: the decisions on fixed numbers (a fake launcher), and one real sweep."""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path
from types import SimpleNamespace

import pytest
from scipy import stats

from peftlab.errors import ConfigError
from peftlab.reporting.seed_budget import Budget, first_seeds, run_rounds

from conftest import run_cli


def fake_launcher(tmp_path: Path, values: dict[tuple[str, int], float], failing: frozenset = frozenset()):
    """A launcher whose job (overrides..., seed=s) writes metrics.json with values[(group, s)]."""
    launched: list[list[str]] = []

    def launch(batch, first_job):
        returns = []
        for num, overrides in enumerate(batch, start=first_job):
            folder = tmp_path / str(num)
            folder.mkdir()
            group = " ".join(overrides[:-1])
            seed = int(overrides[-1].split("=")[1])
            (folder / ".hydra").mkdir()
            (folder / ".hydra" / "overrides.yaml").write_text("".join(f"- {o}\n" for o in overrides))
            if (group, seed) in failing:
                (folder / "failed.json").write_text(json.dumps({"error": "boom"}))
            else:
                (folder / "metrics.json").write_text(json.dumps({
                    "status": "finished", "seed": seed, "primary_metric": "exact_match",
                    "test": {"exact_match": values[(group, seed)]}}))
            launched.append(overrides)
            returns.append(SimpleNamespace(hydra_cfg=None, working_dir=str(folder)))
        return returns

    return launch, launched


def test_the_pilots_spread_decides_each_groups_seeds_in_one_more_round(tmp_path):
    """Stein's two-stage rule: n = ceil((t(n0-1) s0 / h)^2), capped at max_seeds; the interval is
    the mean of all n seeds, half-width t(n0-1) s0 / sqrt(n)."""
    pilots = {"method=a": [0.5, 0.5, 0.5], "method=b": [0.40, 0.60, 0.50], "method=c": [0.50, 0.55, 0.60]}
    values = {(g, s): v for g, pilot in pilots.items() for s, v in enumerate(pilot + [0.5, 0.45, 0.55], 1)}
    launch, launched = fake_launcher(tmp_path, values)
    budget = Budget(half_width=0.1, min_seeds=3, max_seeds=6)
    run_rounds([["method=a"], ["method=b"], ["method=c"]], first_seeds(None, budget), budget, tmp_path, launch)

    t2 = stats.t.ppf(0.975, 2)
    # a: no spread, the pilot suffices; b: sd 0.1 asks for (4.30 * 0.1 / 0.1)^2 = 18.5 -> the cap, 6;
    # c: sd 0.05 asks for (4.30 * 0.05 / 0.1)^2 = 4.6 -> 5 seeds
    assert math.ceil((t2 * 0.1 / 0.1) ** 2) == 19 and math.ceil((t2 * 0.05 / 0.1) ** 2) == 5
    pilot = [[g, f"seed={s}"] for g in pilots for s in (1, 2, 3)]
    assert launched == pilot + [["method=b", "seed=4"], ["method=b", "seed=5"], ["method=b", "seed=6"],
                                ["method=c", "seed=4"], ["method=c", "seed=5"]]
    record = json.loads((tmp_path / "seed_budget.json").read_text())
    assert record["metric"] == "test.exact_match" and record["finished"] is True and record["rule"].startswith(
        "two-stage (Stein)")
    assert [[g["decision"] for g in r["groups"]] for r in record["rounds"]] == [
        ["met", "more seeds", "more seeds"], ["met", "max seeds", "met"]]
    a, b, c = record["rounds"][-1]["groups"]
    assert a["half_width"] == 0 and a["needed"] == 3 and a["pilot"] == {"seeds": 3, "sd": 0.0}
    assert b["seeds"] == [1, 2, 3, 4, 5, 6] and b["needed"] == 6
    assert b["half_width"] == pytest.approx(t2 * 0.1 / math.sqrt(6))
    assert b["mean"] == pytest.approx(statistics.fmean(pilots["method=b"] + [0.5, 0.45, 0.55]))
    assert c["needed"] == 5 and c["half_width"] == pytest.approx(t2 * 0.05 / math.sqrt(5)) and c["half_width"] < 0.1
    assert c["folders"] == [str(tmp_path / str(j)) for j in (6, 7, 8, 12, 13)]


def test_a_group_stops_at_max_seeds_and_at_a_failed_job(tmp_path):
    values = {(g, s): 0.1 * s for g in ("method=a", "method=b") for s in range(1, 10)}
    launch, launched = fake_launcher(tmp_path, values, failing=frozenset({("method=b", 2)}))
    budget = Budget(half_width=0.01, min_seeds=2, max_seeds=4)
    run_rounds([["method=a"], ["method=b"]], [1, 2], budget, tmp_path, launch)
    assert [o for o in launched if o[0] == "method=a"] == [["method=a", f"seed={s}"] for s in (1, 2, 3, 4)]
    assert [o for o in launched if o[0] == "method=b"] == [["method=b", "seed=1"], ["method=b", "seed=2"]]
    groups = json.loads((tmp_path / "seed_budget.json").read_text())["rounds"][-1]["groups"]
    assert [g["decision"] for g in groups] == ["max seeds", "stopped: a job failed"]
    assert groups[1]["failed"] == [str(tmp_path / "3")]  # jobs a1, a2, b1, b2: b2 is job 3


def test_a_metric_that_is_not_a_number_stops_its_group(tmp_path):
    values = {("method=a", s): 0.5 + s / 10 for s in range(1, 6)}
    values[("method=a", 2)] = float("nan")
    launch, launched = fake_launcher(tmp_path, values)
    run_rounds([["method=a"]], [1, 2], Budget(half_width=0.01, min_seeds=2, max_seeds=5), tmp_path, launch)
    assert len(launched) == 2
    record = json.loads((tmp_path / "seed_budget.json").read_text(), parse_constant=pytest.fail)  # no NaN in it
    assert record["rounds"][-1]["groups"][0]["decision"] == "stopped: a job failed"


def test_the_grid_may_name_the_pilots_seeds():
    budget = Budget(half_width=0.02, min_seeds=3, max_seeds=5)
    assert first_seeds(None, budget) == [1, 2, 3]
    assert first_seeds(["7", "8"], budget) == [7, 8]


@pytest.mark.parametrize("settings, message", [
    (dict(half_width=0.0), "hydra.sweeper.half_width must be a number > 0, got 0.0"),
    (dict(half_width=float("nan")), "hydra.sweeper.half_width must be a number > 0, got nan"),
    (dict(min_seeds=1), "hydra.sweeper.min_seeds must be >= 2 (an interval needs two seeds), got 1"),
    (dict(max_seeds=2), "hydra.sweeper.max_seeds must be >= min_seeds (3), got 2"),
    (dict(max_seeds=10**6), "hydra.sweeper.max_seeds must be <= 1000, got 1000000"),
    (dict(metric="exact_match"), "hydra.sweeper.metric must be a dotted metrics.json key (test.exact_match, "
                                 "val.loss, forgetting.delta, ...) or null, got 'exact_match'"),
])
def test_bad_budgets_are_refused(settings, message):
    with pytest.raises(ConfigError) as err:
        Budget(**{"half_width": 0.02, "min_seeds": 3, "max_seeds": 10, **settings})
    assert str(err.value) == message


@pytest.mark.parametrize("seeds, message", [
    (["1", "x"], "seed: the seed budget needs whole numbers, got 1,x"),
    (["1", "1"], "seed must not repeat a seed, got '1,1'"),
    (["1", "2", "3", "4"], "seed names more seeds than hydra.sweeper.max_seeds (3), got '1,2,3,4'"),
    (["7"], "seed must name at least two seeds (the pilot's spread needs two), got '7'"),
])
def test_bad_first_seeds_are_refused(seeds, message):
    with pytest.raises(ConfigError) as err:
        first_seeds(seeds, Budget(half_width=0.02, min_seeds=2, max_seeds=3))
    assert str(err.value) == message


@pytest.mark.integration  # a real sweep; the fast suite drives the sweeper with a planted launcher
def test_a_real_seed_budget_sweep_adds_a_round_and_reports_its_decision(tmp_path, cache_dir):
    folder = tmp_path / "sweep"
    # with Hydra's basic launcher (the budget hands its rounds to any launcher; the default one adds a
    # process start per job)
    proc = run_cli("peftlab-train", "-m", "hydra/sweeper=seed_budget", "hydra/launcher=basic",
                   "hydra.sweeper.metric=test.loss", "hydra.sweeper.half_width=1e-9", "hydra.sweeper.min_seeds=2",
                   "hydra.sweeper.max_seeds=3",
                   "debug=tiny", "trainer.max_steps=2", "zero_shot=false", "forgetting=null", "merge_after=false",
                   "save_adapter=false", f"hydra.sweep.dir={folder}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    seeds = [json.loads((folder / str(job) / "metrics.json").read_text())["seed"] for job in range(3)]
    assert seeds == [1, 2, 3] and not (folder / "3").exists()
    record = json.loads((folder / "seed_budget.json").read_text())
    assert [[g["decision"] for g in r["groups"]] for r in record["rounds"]] == [["more seeds"], ["max seeds"]]
    assert "seed budget: 3 jobs in 2 round(s); 0 group(s) met the target, 1 reached max_seeds" in proc.stdout
    assert (folder / "multirun.yaml").exists()


def test_a_seed_budget_metric_the_runs_do_not_report_is_named(tmp_path, cache_dir):
    proc = run_cli("peftlab-train", "-m", "hydra/sweeper=seed_budget", "hydra/launcher=basic",
                   "hydra.sweeper.metric=test.nope", "hydra.sweeper.min_seeds=2", "debug=tiny", "trainer.max_steps=1",
                   "zero_shot=false", "forgetting=null", "merge_after=false", "save_adapter=false",
                   f"hydra.sweep.dir={tmp_path / 's'}")
    assert proc.returncode == 2
    # before the first job (the runs' task and splits say what they report), and nothing is left behind
    assert proc.stderr.strip().splitlines()[-1] == (
        "peftlab-train: error: hydra.sweeper.metric: 'test.nope' is not a number the runs report (known: "
        f"{', '.join(TINY_NUMBERS)})")
    assert not (tmp_path / "s").exists()


@pytest.mark.parametrize("metric, rule", [(None, "two-stage"), ("val.exact_match", "t")])
def test_the_report_prints_the_two_stage_interval_of_the_budgets_own_metric(tmp_path, metric, rule):
    """The report's interval over seeds is the two-stage one for the metric the budget ran on, and
    Student's for any other (the pilot's spread of another metric says nothing of it)."""
    from peftlab.config.commands import ReportSchema
    from peftlab.reporting import write_report

    values = {("method=a", s): v for s, v in enumerate([0.50, 0.58, 0.54, 0.52, 0.56, 0.55], 1)}
    sweep = tmp_path / "sweep"
    sweep.mkdir()
    launch, _ = fake_launcher(sweep, values)

    def with_val(batch, first_job):  # every job reports the same figure on validation too
        returns = launch(batch, first_job)
        for ret in returns:
            path = Path(ret.working_dir) / "metrics.json"
            m = json.loads(path.read_text())
            path.write_text(json.dumps({**m, "val": m["test"]}))
        return returns

    budget = Budget(half_width=0.05, min_seeds=3, max_seeds=6, metric=metric)
    run_rounds([["method=a"]], [1, 2, 3], budget, sweep, with_val)
    report = write_report([sweep], tmp_path / "report", ReportSchema(plots=False, html=False))
    [row] = report["groups"]
    values_run = [values[("method=a", s)] for s in range(1, row["n"] + 1)]
    assert row["exact_match_ci95_rule"] == rule
    expected = stats.t.ppf(0.975, 2) * statistics.stdev(values_run[:3]) / math.sqrt(row["n"]) if rule == "two-stage" \
        else stats.t.ppf(0.975, row["n"] - 1) * statistics.stdev(values_run) / math.sqrt(row["n"])
    assert row["exact_match_ci95"] == pytest.approx(expected)


# ------------------------------------------------------------------------ checked before any job
# what a debug=tiny run of the date task reports (zero_shot=false, forgetting=null): its metrics on
# the validation and test splits, and the numbers of every run
TINY_NUMBERS = [f"{split}.{m}" for split in ("val", "test") for m in ("exact_match", "loss", "perplexity")] + [
    "train.steps", "train.wall_s", "train.tokens_per_s", "memory.peak_rss_mb", "params.trainable", "params.total",
    "params.trainable_pct"]


@pytest.mark.parametrize("settings, message", [
    (["hydra.sweeper.half_width=-1"], "hydra.sweeper.half_width must be a number > 0, got -1.0"),
    (["seed=1,4294967295"], "seed must be whole numbers in [0, 4294967285] (the second round adds seeds above the "
                            "pilot's, up to hydra.sweeper.max_seeds), got '1,4294967295'"),
    (["method=lora,ia3", "test=false"],
     "hydra.sweeper.metric: null (the primary test metric, test.exact_match) is not a number the runs of "
     "method=lora report (known: " + ", ".join(TINY_NUMBERS[:3] + TINY_NUMBERS[6:]) + ")"),
])
def test_a_bad_seed_budget_is_refused_before_any_job_leaving_nothing(tmp_path, cache_dir, settings, message):
    folder = tmp_path / "sweep"
    proc = run_cli("peftlab-train", "-m", "hydra/sweeper=seed_budget", "hydra/launcher=basic", *settings,
                   "debug=tiny", "trainer.max_steps=1", "zero_shot=false", "forgetting=null", "merge_after=false",
                   "save_adapter=false", f"hydra.sweep.dir={folder}")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert proc.stderr.strip().splitlines()[-1] == f"peftlab-train: error: {message}"
    assert not folder.exists()  # no sweep folder: no .lock, no index.jsonl, no job


def test_the_pilots_seeds_leave_room_for_the_second_round():
    budget = Budget(half_width=0.02, min_seeds=2, max_seeds=10)
    assert first_seeds(["0", str(2**32 - 11)], budget) == [0, 2**32 - 11]
    for seeds in (["-1", "2"], ["1", str(2**32 - 10)]):
        with pytest.raises(ConfigError, match=r"^seed must be whole numbers in \[0, 4294967285\]"):
            first_seeds(seeds, budget)
