"""hydra/sweeper=tune_then_test: every group searched alike on validation, its choice tested once on
fresh seeds. The choices on fixed numbers (a fake launcher), the plan's refusals, and one real sweep."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from peftlab.errors import ConfigError
from peftlab.reporting.protocol import SEARCH_JOB, GroupPlan, Plan, Protocol, parse_values

from conftest import run_cli


def fake_launcher(tmp_path: Path, score):
    """A launcher whose job writes metrics.json with val figures from ``score(overrides)``: (exact
    match, loss), or None for a failed job."""
    launched: list[list[str]] = []

    def launch(batch, first_job):
        returns = []
        for num, overrides in enumerate(batch, start=first_job):
            folder = tmp_path / str(num)
            (folder / ".hydra").mkdir(parents=True)
            (folder / ".hydra" / "overrides.yaml").write_text("".join(f"- {o}\n" for o in overrides))
            found = score(overrides)
            if found is None:
                (folder / "failed.json").write_text(json.dumps({"error": "boom"}))
            else:
                (folder / "metrics.json").write_text(json.dumps({
                    "status": "finished", "primary_metric": "exact_match", "greater_is_better": True,
                    "val": {"exact_match": found[0], "loss": found[1]}}))
            launched.append(list(overrides))
            returns.append(SimpleNamespace(hydra_cfg=None, working_dir=str(folder)))
        return returns

    return launch, launched


def plan(**changes) -> Plan:
    settings = dict(search={"optim.lr": ["x0.5", "x1", "x2"]}, group_search={}, search_seeds=[1], test_seeds=[2, 3],
                    metric=None, direction=None, margins={})
    return Plan(**{**settings, **changes})


def groups(p: Plan, own: dict[str, float]) -> list[GroupPlan]:
    made = []
    for name in own:
        g = GroupPlan([f"recipe={name}"], p.group_search.get(f"recipe={name}", p.search), shown=[f"recipe={name}"])
        g.resolve(lambda overrides, key: own[overrides[0].split("=")[1]])
        made.append(g)
    return made


def test_each_group_searches_its_own_lr_range_and_its_best_setting_is_tested_on_fresh_seeds(tmp_path):
    p = plan()
    gs = groups(p, {"lora": 2e-3, "full": 1e-4})
    assert gs[0].settings == [["optim.lr=0.001"], ["optim.lr=0.002"], ["optim.lr=0.004"]]
    assert gs[1].settings == [["optim.lr=5e-05"], ["optim.lr=0.0001"], ["optim.lr=0.0002"]]
    # lora: best at 0.004; full: 0.0001 and 0.0002 tie on exact match, the lower loss (0.0002) wins
    scores = {"0.001": (0.5, 1.0), "0.002": (0.6, 1.0), "0.004": (0.7, 1.0),
              "5e-05": (0.4, 1.0), "0.0001": (0.8, 0.9), "0.0002": (0.8, 0.5)}
    launch, launched = fake_launcher(tmp_path, lambda o: scores[next(x for x in o if x.startswith("optim.lr="))[9:]])
    Protocol(p, gs, tmp_path).run(launch)
    search, test = launched[:6], launched[6:]
    assert all(o[-len(SEARCH_JOB):] == SEARCH_JOB and "seed=1" in o for o in search)  # never the test split
    assert test == [["recipe=lora", "optim.lr=0.004", "seed=2"], ["recipe=lora", "optim.lr=0.004", "seed=3"],
                    ["recipe=full", "optim.lr=0.0002", "seed=2"], ["recipe=full", "optim.lr=0.0002", "seed=3"]]
    record = json.loads((tmp_path / "protocol.json").read_text())
    assert record["stage"] == "tested" and record["metric"] == "val.exact_match" and record["budget"] == 3
    assert [g["chosen"] for g in record["groups"]] == [["optim.lr=0.004"], ["optim.lr=0.0002"]]
    assert record["groups"][1]["test_folders"] == [str(tmp_path / "8"), str(tmp_path / "9")]


def test_a_setting_with_a_failed_search_job_is_not_chosen_and_a_group_with_none_is_not_tested(tmp_path):
    p = plan(search={"optim.lr": ["x1", "x2"]})
    gs = groups(p, {"lora": 1.0, "ia3": 1.0})
    fail = {("recipe=lora", "optim.lr=2"), ("recipe=ia3", "optim.lr=1"), ("recipe=ia3", "optim.lr=2")}
    launch, launched = fake_launcher(tmp_path, lambda o: None if (o[0], o[1]) in fail else
                                     (0.9 if o[1].endswith("=2") else 0.1, 1.0))
    Protocol(p, gs, tmp_path).run(launch)
    record = json.loads((tmp_path / "protocol.json").read_text())
    assert [g["chosen"] for g in record["groups"]] == [["optim.lr=1"], None]
    assert launched[4:] == [["recipe=lora", "optim.lr=1", "seed=2"], ["recipe=lora", "optim.lr=1", "seed=3"]]


@pytest.mark.parametrize("changes, message", [
    (dict(search={}), "hydra.sweeper.search must name at least one setting to search"),
    (dict(test_seeds=[1, 2]), "hydra.sweeper.test_seeds must be fresh seeds, not search seeds ([1] are both)"),
    (dict(test_seeds=[5]), "hydra.sweeper.test_seeds must name at least two seeds"),
    (dict(search_seeds=[1, 1]), "hydra.sweeper.search_seeds must not repeat a seed"),
    (dict(metric="test.exact_match"), "hydra.sweeper.metric=test.exact_match: the search would choose by the test "
                                      "split"),
    (dict(direction="up"), "hydra.sweeper.direction must be maximize, minimize or null, got 'up'"),
    (dict(margins={"test.exact_match": float("inf")}), "hydra.sweeper.margins.test.exact_match must be a finite "
                                                       "number > 0, got inf"),
])
def test_a_bad_plan_is_one_line(changes, message):
    with pytest.raises(ConfigError) as err:
        plan(**changes)
    assert message in str(err.value)


def test_unequal_budgets_and_bad_relative_values_are_refused(tmp_path):
    p = plan(group_search={"recipe=full": {"optim.lr": ["1e-5", "1e-4"]}})
    with pytest.raises(ConfigError, match=r"^hydra.sweeper.group_search: the groups' search budgets differ "
                                          r"\(recipe=lora: 3, recipe=full: 2 jobs\); a fair comparison"):
        Protocol(p, groups(p, {"lora": 2e-3, "full": 1e-4}), tmp_path)
    assert not (tmp_path / "protocol.json").exists()
    with pytest.raises(ConfigError, match="values that start with x must be a factor > 0 of the group's own"):
        parse_values("optim.lr", "x0,x1")
    g = GroupPlan(["recipe=lora"], {"optim.optimizer": ["x2"]})
    with pytest.raises(ConfigError, match="x2 is relative to the group's own optim.optimizer, which is 'adamw'"):
        g.resolve(lambda overrides, key: "adamw")


def test_a_real_sweep_refuses_a_test_metric_before_any_job(tmp_path, cache_dir):
    sweep = tmp_path / "sweep"
    proc = run_cli("peftlab-train", "-m", "hydra/sweeper=tune_then_test", "method=lora,ia3", "debug=tiny",
                   "hydra.sweeper.search={optim.lr: 'x1,x3'}", "hydra.sweeper.metric=test.exact_match",
                   f"hydra.sweep.dir={sweep}")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert proc.stderr.strip().splitlines()[-1].startswith(
        "peftlab-train: error: hydra.sweeper.metric=test.exact_match: the search would choose by the test split")
    assert not (sweep / "protocol.json").exists() and not any(p.is_dir() for p in sweep.glob("*"))


def test_a_custom_metric_needs_its_direction_and_bad_spaces_are_one_line():
    with pytest.raises(ConfigError, match=r"hydra.sweeper.direction: give maximize or minimize with "
                                          r"hydra.sweeper.metric=val.perplexity"):
        plan(metric="val.perplexity")
    assert plan(metric="val.loss").metric == "val.loss"  # a loss is minimised
    from peftlab.reporting.protocol import parse_groups, parse_space

    with pytest.raises(ConfigError, match=r"^hydra.sweeper.search must be a mapping of settings to their values"):
        parse_space("hydra.sweeper.search", "optim.lr")
    with pytest.raises(ConfigError, match=r"^hydra.sweeper.margins must be a mapping by name, got 0.03"):
        parse_groups(0.03, "margins")
    with pytest.raises(ConfigError, match=r"^hydra.sweeper.search.optim.lr must be a list of values"):
        parse_space("hydra.sweeper.search", {"optim.lr": {"a": 1}})


def test_a_protocol_whose_groups_get_unequal_budgets_is_refused_before_any_job(tmp_path, cache_dir):
    """A group's own space, named by its swept setting in an experiment file, must hold as many
    settings as the others'."""
    experiment = tmp_path / "conf" / "experiment"
    experiment.mkdir(parents=True)
    (experiment / "unfair.yaml").write_text(
        "# @package _global_\n"
        "defaults:\n  - override /hydra/sweeper: tune_then_test\n"
        "hydra:\n  sweeper:\n    params:\n      method: lora,ia3\n"
        "    search:\n      optim.lr: x1\n"
        "    group_search:\n      method=ia3:\n        optim.lr: x1,x3\n")
    sweep = tmp_path / "sweep"
    proc = run_cli("peftlab-train", "-m", "--config-dir", str(tmp_path / "conf"), "experiment=unfair", "debug=tiny",
                   f"hydra.sweep.dir={sweep}")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert proc.stderr.strip().splitlines()[-1] == (
        "peftlab-train: error: hydra.sweeper.group_search: the groups' search budgets differ (method=lora: 1, "
        "method=ia3: 2 jobs); a fair comparison gives every group the same number of search jobs")
    assert not (sweep / "protocol.json").exists() and not any(p.is_dir() for p in sweep.glob("*"))
