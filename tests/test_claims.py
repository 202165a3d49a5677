"""Published claims as experiments with verdicts (config/claims.py, reporting/claims.py,
claim_ratio.py, claim_runs.py, claim_page.py): every verdict of every kind from planted numbers and
planted runs, a verdict flipping when a planted result flips, the one-line errors of a bad claim,
every claim experiment composed at both budgets, and (integration) each claim experiment run end to
end on the tiny model and reported with a verdict."""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import pytest

from peftlab.config.claims import check_claim
from peftlab.errors import ConfigError
from peftlab.reporting.claim_ratio import Search, judge_ratio
from peftlab.reporting.claims import (
    INCONCLUSIVE,
    NOT_REPRODUCED,
    REPRODUCED,
    Estimate,
    combine,
    correlation,
    judge_better,
    judge_correlated,
    judge_equivalent,
    judge_not_worse,
    seeds_for,
)

from conftest import CONF, run_cli

CLAIMS = sorted(p.stem for p in (CONF / "experiment").glob("claim_*.yaml"))


def paired(diffs: list[float]) -> Estimate:
    """The estimate of a paired comparison whose per-seed differences are ``diffs``."""
    import statistics

    sd = statistics.stdev(diffs)
    return Estimate(statistics.fmean(diffs), sd / math.sqrt(len(diffs)), len(diffs) - 1, sd, True,
                    (len(diffs), len(diffs)))


# --- the rules on numbers ------------------------------------------------------------------------
@pytest.mark.parametrize("diffs,verdict", [
    ([0.01, -0.01, 0.0, 0.005], REPRODUCED),  # inside ±0.1 with room
    ([0.30, 0.32, 0.31, 0.29], NOT_REPRODUCED),  # beyond +0.1
    ([0.15, -0.20, 0.05, 0.10], INCONCLUSIVE),  # too much spread for 4 seeds
])
def test_equivalent_verdicts(diffs, verdict):
    [j] = judge_equivalent([paired(diffs)], 0.10)
    assert j.verdict == verdict
    assert (j.needed is not None and j.needed > 4) if verdict == INCONCLUSIVE else j.resolve == ""


def test_an_equivalent_verdict_flips_when_the_planted_difference_flips():
    near, far = paired([0.01, -0.01, 0.0, 0.005]), paired([0.21, 0.19, 0.20, 0.205])
    assert [j.verdict for j in judge_equivalent([near], 0.1)] == [REPRODUCED]
    assert [j.verdict for j in judge_equivalent([far], 0.1)] == [NOT_REPRODUCED]
    # Holm over the claim's comparisons: one far comparison makes the claim not reproduced
    assert combine(judge_equivalent([near, far], 0.1))[0] == NOT_REPRODUCED


def test_the_seeds_that_would_resolve_are_the_fewest_whose_interval_clears_the_bound():
    from scipy.stats import t

    e = paired([0.15, -0.20, 0.05, 0.10])
    gap = 0.1 - abs(e.difference)
    n = seeds_for(e, gap, 0.05)
    assert t.ppf(0.95, n - 1) * e.spread / math.sqrt(n) < gap <= t.ppf(0.95, n - 2) * e.spread / math.sqrt(n - 1)
    assert seeds_for(e, 0.0, 0.05) is None  # a difference on the margin: no number of seeds resolves it
    on_the_margin = paired([0.05, 0.15, 0.05, 0.15])  # mean 0.10, the margin itself
    [j] = judge_equivalent([on_the_margin], 0.10)
    assert j.verdict == INCONCLUSIVE and j.needed is None and j.resolve.startswith("cannot")


@pytest.mark.parametrize("diffs,verdict", [
    ([-0.20, -0.22, -0.21], REPRODUCED),  # lower is better: clearly lower
    ([0.20, 0.22, 0.21], NOT_REPRODUCED),  # clearly higher: the other side
    ([-0.004, -0.005, -0.0045], NOT_REPRODUCED),  # lower, but shown smaller than the margin: does not matter
    ([-0.10, 0.05, -0.02], INCONCLUSIVE),
])
def test_better_verdicts(diffs, verdict):
    [j] = judge_better([paired(diffs)], 0.03, "lower")
    assert j.verdict == verdict, j.reason
    assert j.interval[0] < j.interval[1] and j.level == 0.95


def test_a_better_verdict_flips_with_the_direction():
    e = paired([-0.20, -0.22, -0.21])
    assert judge_better([e], 0.03, "lower")[0].verdict == REPRODUCED
    assert judge_better([e], 0.03, "higher")[0].verdict == NOT_REPRODUCED


@pytest.mark.parametrize("diffs,verdict", [
    ([0.0, 0.01, -0.01, 0.005], REPRODUCED),  # the all-layer arm is not worse by 0.03
    ([-0.20, -0.21, -0.19, -0.2], NOT_REPRODUCED),  # worse by far more than 0.03
    ([0.05, -0.10, 0.02, -0.06], INCONCLUSIVE),
])
def test_not_worse_verdicts(diffs, verdict):
    [j] = judge_not_worse([paired(diffs)], 0.03, "higher")
    assert j.verdict == verdict, j.reason


def test_correlated_verdicts_and_the_runs_that_would_resolve():
    xs = [0.1 * i for i in range(20)]
    strong = correlation(xs, [x + 0.01 * ((-1) ** i) for i, x in enumerate(xs)])
    none = correlation(xs, [((-1) ** i) * 0.5 + 0.001 * i for i in range(20)])
    assert judge_correlated(strong, 0.5).verdict == REPRODUCED and strong["r"] > 0.99
    assert judge_correlated(none, 0.5).verdict == NOT_REPRODUCED
    middling = correlation(xs[:6], [0.0, 0.3, 0.1, 0.5, 0.2, 0.6])
    j = judge_correlated(middling, 0.5)
    assert j.verdict == INCONCLUSIVE and j.unit == "runs" and j.needed > 6
    lo, hi = middling["ci95"]  # Fisher's z: tanh(atanh(r) -+ 1.96 / sqrt(n - 3))
    half = 1.959963984540054 / math.sqrt(3)
    assert (lo, hi) == pytest.approx((math.tanh(math.atanh(middling["r"]) - half),
                                      math.tanh(math.atanh(middling["r"]) + half)))
    assert judge_correlated(correlation([1, 2, 3], [1, 2, 3]), 0.5).verdict == INCONCLUSIVE  # under 4 runs


def search(name: str, peak: float, noise: float = 0.002, grid: tuple[float, ...] = (0.5, 0.707, 1, 1.414, 2),
           seeds=(4, 5, 6)) -> Search:
    """A planted search: the score falls by 0.05 a grid step away from ``peak`` x grid[2] (the middle)."""
    values = [peak * g for g in grid]
    best = values[2]
    scores = {v: {s: 0.9 - 0.05 * abs(math.log(v / best, math.sqrt(2))) + noise * (-1) ** s * (1 if k == 2 else -1)
                  for s in seeds} for k, v in enumerate(values)}
    return Search(name, scores, best)


@pytest.mark.parametrize("lora,full,verdict", [
    (1e-3, 1e-4, REPRODUCED),  # ratio 10: the interval [5, 20] lies within [10/3, 30]
    (1e-4, 1e-4, NOT_REPRODUCED),  # ratio 1: [0.5, 2] lies outside
    (2e-3, 1e-4, INCONCLUSIVE),  # ratio 20: [10, 40] crosses 30; no grid of this step resolves it
])
def test_ratio_verdicts(lora, full, verdict):
    j = judge_ratio(search("lora", lora), search("full", full), 10, 3)
    assert j.verdict == verdict, j.reason
    assert j.p["ratio"] == pytest.approx(lora / full)
    assert j.interval == pytest.approx((lora / full / 2, lora / full * 2))  # each optimum bracketed by its neighbours
    if verdict == INCONCLUSIVE:
        assert j.needed is None and "finer grid" in j.resolve


def test_a_ratio_whose_best_is_at_the_grid_s_end_is_open_there():
    edge = Search("full", {v: {4: s, 5: s + 0.001} for v, s in ((1e-5, 0.7), (2e-5, 0.8), (4e-5, 0.9))}, 4e-5)
    j = judge_ratio(search("lora", 1e-3), edge, 10, 3)
    assert j.verdict == INCONCLUSIVE and j.interval[0] == 0.0
    assert "extend full's grid above 4e-05" in j.resolve


def test_a_noisy_search_separates_nothing_and_asks_for_search_seeds():
    noisy = search("lora", 1e-3, noise=0.08)
    assert noisy.not_separable() == noisy.grid and noisy.bracket() == (0.0, math.inf)
    quiet = search("full", 1e-4)
    assert quiet.not_separable() == [1e-4] and quiet.bracket() == pytest.approx((0.707e-4, 1.414e-4))


def test_a_noisy_search_plans_its_search_seeds_at_the_observed_spread():
    noisy = search("lora", 1e-3, noise=0.03)
    needed = noisy.seeds_to_separate()
    assert needed is not None and needed > 3
    j = judge_ratio(noisy, search("full", 1e-4), 10, 3)
    assert j.verdict == INCONCLUSIVE and "extend lora's grid" in j.resolve  # its bracket is open at both ends


# --- the rules on planted runs, through the report --------------------------------------------------
BASE = {"name": "demo", "paper": "Someone et al. (2025), A paper", "says": "it holds", "budget": "small"}


def plant(root: Path, overrides: list[str], seed: int, claim: dict, **numbers) -> Path:
    """A finished run folder whose metrics.json records ``numbers`` and ``claim``."""
    folder = root / f"{len(list(root.glob('*')))}"
    folder.mkdir(parents=True)
    record = {"status": "finished", "seed": seed, "model": "tiny_llama", "method": "lora", "primary_metric":
              "exact_match", "greater_is_better": True, "train": {"steps": 2, "wall_s": 1.5}, "total_wall_s": 3.0,
              "threads": 2, "overrides": [*overrides, f"seed={seed}"], "claim": claim, **numbers}
    (folder / "metrics.json").write_text(json.dumps(record))
    return folder


def report(root: Path, plots: bool = False) -> dict:
    from peftlab.config.commands import ReportSchema
    from peftlab.reporting import write_report

    out = root.parent / f"{root.name}_report"
    write_report([root], out, ReportSchema(plots=plots, html=False, overwrite=True))
    return json.loads((out / "claim.json").read_text())


RANK1 = {**BASE, "kind": "equivalent", "metric": "test.exact_match", "margin": 0.1,
         "comparisons": [[["method={r:1}"], ["method={r:8}"]], [["method={r:1}"], ["method=full"]]]}


def plant_arms(root: Path, arms: dict[str, list[float]], claim: dict) -> None:
    for arm, values in arms.items():
        for seed, v in enumerate(values, 1):
            plant(root, [f"method={arm}", "experiment=demo"], seed, claim, test={"exact_match": v},
                  params={"trainable": 1000 if "r:1" in arm else 8000})


def test_a_claim_of_equivalence_is_reproduced_and_flips_when_a_planted_arm_falls(tmp_path):
    close = {"{r:1}": [0.80, 0.82, 0.81], "{r:8}": [0.81, 0.80, 0.82], "full": [0.80, 0.81, 0.82]}
    plant_arms(tmp_path / "same", close, RANK1)
    found = report(tmp_path / "same")
    assert found["verdict"] == REPRODUCED and found["budget"] == "small"
    assert [c["first"] for c in found["parts"][0]["comparisons"]] == ["method={r:1}", "method={r:1}"]
    page = (tmp_path / "same_report" / "claim.md").read_text()
    assert "## Verdict: **reproduced**" in page and "Someone et al. (2025), A paper" in page
    assert "- **Budget**: small: tiny_llama" in page and "9 runs" in page and "- command: `peftlab-train" in page
    assert found["cost"]["wall_s"] == 27.0 and found["cost"]["core_s"] == 54.0  # 9 runs x 3 s x 2 threads
    plant_arms(tmp_path / "fell", {**close, "full": [0.40, 0.41, 0.42]}, RANK1)
    assert report(tmp_path / "fell")["verdict"] == NOT_REPRODUCED
    plant_arms(tmp_path / "spread", {**close, "full": [0.95, 0.60, 0.80]}, RANK1)
    found = report(tmp_path / "spread")
    assert found["verdict"] == INCONCLUSIVE and "seeds per group" in found["resolve"]


LEARNS_LESS = {**BASE, "kind": "better", "metric": "forgetting.delta", "direction": "lower", "margin": 0.03,
               "matched": {"by": "gain.exact_match", "within": 0.05}, "comparisons": [[["method=lora"],
                                                                                       ["method=full"]]]}


def plant_fronts(root: Path, lora: list[tuple[str, float, float]], full: list[tuple[str, float, float]]) -> None:
    """Groups (lr, test exact match, forgetting) of each method at three seeds, zero-shot 0.1."""
    for method, rows in (("lora", lora), ("full", full)):
        for lr, em, forgot in rows:
            for seed, wiggle in ((1, -0.002), (2, 0.0), (3, 0.002)):
                plant(root, [f"method={method}", f"optim.lr={lr}"], seed, LEARNS_LESS, method=method,
                      zero_shot={"exact_match": 0.1}, test={"exact_match": em + wiggle},
                      forgetting={"delta": forgot + wiggle})


def test_forgetting_at_matched_gain_is_judged_on_the_fronts_and_flips(tmp_path):
    lora = [("1e-3", 0.60, 0.05), ("3e-3", 0.80, 0.08), ("1e-4", 0.30, 0.09)]  # the last is off the front
    full = [("1e-5", 0.62, 0.20), ("1e-4", 0.81, 0.30)]
    plant_fronts(tmp_path / "less", lora, full)
    found = report(tmp_path / "less", plots=True)
    [part] = found["parts"]
    assert found["verdict"] == REPRODUCED
    assert [(c["first"], c["second"]) for c in part["comparisons"]] == [
        ("method=lora optim.lr=1e-3", "method=full optim.lr=1e-5"), ("method=lora optim.lr=3e-3",
                                                                     "method=full optim.lr=1e-4")]
    assert part["comparisons"][0]["gains"] == pytest.approx([0.5, 0.52])
    assert {p["setting"]: p["front"] for p in part["points"]["method=lora"]}["method=lora optim.lr=1e-4"] is False
    assert (tmp_path / "less_report" / "claim.png").stat().st_size > 1000
    plant_fronts(tmp_path / "more", [(lr, em, f + 0.3) for lr, em, f in lora], full)
    assert report(tmp_path / "more")["verdict"] == NOT_REPRODUCED
    plant_fronts(tmp_path / "apart", lora, [("1e-5", 0.95, 0.2)])  # no gain both reach
    found = report(tmp_path / "apart")
    assert found["verdict"] == INCONCLUSIVE and "lie within 0.05" in found["resolve"]


RAZOR = {**BASE, "kind": "correlated", "metric": "forgetting.delta", "against": "kl_to_base.kl", "margin": 0.5,
         "also": [{"kind": "better", "metric": "forgetting.delta", "direction": "lower", "margin": 0.03,
                   "matched": {"by": "gain.exact_match", "within": 0.05},
                   "comparisons": [[["training_objective=online_rl"], ["training_objective=task_loss"]]]}]}


@pytest.mark.parametrize("tracks,verdict", [(True, REPRODUCED), (False, NOT_REPRODUCED)])
def test_a_claim_of_two_parts_holds_when_both_do(tmp_path, tracks, verdict):
    for objective, kl, forgot in (("online_rl", 0.1, 0.02), ("task_loss", 0.9, 0.20)):
        for seed in (1, 2, 3, 4):
            noise = 0.01 * seed
            plant(tmp_path / "runs", [f"training_objective={objective}"], seed, RAZOR,
                  zero_shot={"exact_match": 0.5}, test={"exact_match": 0.7 + 0.001 * seed},
                  kl_to_base={"kl": kl + noise}, forgetting={"delta": forgot + noise if tracks else 0.1 - noise})
    found = report(tmp_path / "runs")
    first, second = found["parts"]
    assert first["kind"] == "correlated" and first["correlation"]["n"] == 8
    assert second["verdict"] == (REPRODUCED if tracks else NOT_REPRODUCED)
    assert found["verdict"] == verdict and len(found["measured"]) == 2


def test_the_ratio_of_the_best_learning_rates_is_read_from_the_search_record(tmp_path):
    root = tmp_path / "sweep"
    claim = {**BASE, "kind": "ratio", "metric": "optim.lr", "expected": 10, "margin": 3,
             "comparisons": [[["recipe=lora"], ["recipe=full"]]]}
    groups = []
    for recipe, s in (("lora", search("lora", 1e-3)), ("full", search("full", 1e-4))):
        settings = [[f"optim.lr={v:g}"] for v in s.grid]
        jobs = [{"setting": [f"optim.lr={v:g}"], "seed": seed, "value": score, "loss": 1.0,
                 "folder": str(root / "search" / f"{recipe}{v:g}{seed}")} for v in s.grid
                for seed, score in s.scores[v].items()]
        tests = [plant(root, [f"recipe={recipe}", f"optim.lr={s.chosen:g}"], seed, claim,
                       test={"exact_match": 0.8}) for seed in (1, 2)]
        groups.append({"group": f"recipe={recipe}", "overrides": [f"recipe={recipe}"], "space": {"optim.lr": ["x1"]},
                       "settings": settings, "budget": len(settings), "search": jobs,
                       "chosen": [f"optim.lr={s.chosen:g}"], "chosen_score": 0.9,
                       "test_folders": list(map(str, tests))})
    (root / "protocol.json").write_text(json.dumps({
        "protocol": "tune_then_test", "stage": "tested", "stated_at": "2026-01-01T00:00:00Z",
        "metric": "val.exact_match", "greater_is_better": True, "search_seeds": [4, 5, 6], "test_seeds": [1, 2],
        "budget": 5, "margins": {}, "tune_on_test": False, "groups": groups}))
    found = report(root)
    [part] = found["parts"]
    assert found["verdict"] == REPRODUCED and part["comparisons"][0]["difference"] == pytest.approx(10)
    assert part["comparisons"][0]["interval"] == pytest.approx([5, 20], rel=1e-3)
    assert "ratio 10 search bracket: [5, 20]" in found["measured"][0]


def test_a_comparison_at_more_trainable_parameters_does_not_test_the_claim(tmp_path):
    claim = {**BASE, "kind": "not_worse", "metric": "test.exact_match", "direction": "higher", "margin": 0.03,
             "fewer_params": True, "comparisons": [[["method={r:8}"], ["method={r:1}"]]]}  # r=8 trains more
    plant_arms(tmp_path / "runs", {"{r:1}": [0.80, 0.81, 0.82], "{r:8}": [0.80, 0.81, 0.82]}, claim)
    found = report(tmp_path / "runs")
    assert found["verdict"] == INCONCLUSIVE and "equal or fewer trainable parameters" in found["resolve"]


def test_runs_that_record_two_claims_are_refused_by_name(tmp_path):
    a = plant(tmp_path / "runs", ["method=full"], 1, RANK1, test={"exact_match": 0.5})
    b = plant(tmp_path / "runs", ["method=full"], 2, {**RANK1, "name": "other"}, test={"exact_match": 0.5})
    with pytest.raises(ConfigError) as err:
        report(tmp_path / "runs")
    assert str(err.value) == (f"claim: the runs record different claims: {a} (claim demo) and {b} (claim other); "
                              "report each claim's runs on their own")


def test_a_selector_of_one_group_that_names_several_is_refused(tmp_path):
    claim = {**RANK1, "comparisons": [[["experiment=demo"], ["method=full"]]]}
    plant_arms(tmp_path / "runs", {"{r:1}": [0.8, 0.81], "full": [0.8, 0.82]}, claim)
    with pytest.raises(ConfigError, match=r"claim.comparisons\[0\]\[0\]: \['experiment=demo'\] matches 2 groups"):
        report(tmp_path / "runs")


def test_the_overview_lists_every_claim_with_its_verdict_interval_and_budget(tmp_path):
    from peftlab import api

    close = {"{r:1}": [0.80, 0.82, 0.81], "{r:8}": [0.81, 0.80, 0.82], "full": [0.80, 0.81, 0.82]}
    plant_arms(tmp_path / "rank1", close, RANK1)
    report(tmp_path / "rank1")
    plant_fronts(tmp_path / "less", [("1e-3", 0.60, 0.05)], [("1e-5", 0.62, 0.20)])
    report(tmp_path / "less")
    folders = [tmp_path / "rank1_report", tmp_path / "less_report"]
    out = tmp_path / "overview"
    found = api.report([], ["claims=[" + ",".join(map(str, folders)) + "]", f"out_dir={out}",
                            f"hydra.run.dir={tmp_path / 'log'}"])
    assert [(c["name"], c["verdict"], c["budget"]) for c in found["claims"]] == [("demo", REPRODUCED, "small")] * 2
    table = (out / "claims.md").read_text()
    assert table.count("| demo | Someone et al. (2025), A paper | **reproduced** |") == 2
    assert "| test.exact_match method={r:1} − method={r:8} 0 90%: \\[-0.0292, 0.0292\\]; " in table
    assert "| small: tiny_llama, 9 compared runs in 3 groups (3 of 3 seeds), 2 training steps |" in table
    with pytest.raises(ConfigError, match="already holds claims.md"):
        api.report([], ["claims=[" + str(folders[0]) + "]", f"out_dir={out}", f"hydra.run.dir={tmp_path / 'log2'}"])
    with pytest.raises(ConfigError, match="holds no readable claim.json"):
        api.report([], [f"claims=[{tmp_path}]", f"out_dir={tmp_path / 'o2'}", f"hydra.run.dir={tmp_path / 'l3'}"])


# --- a bad claim is one line naming its field -----------------------------------------------------
GOOD = {**BASE, "kind": "better", "metric": "forgetting.delta", "direction": "lower", "margin": 0.03,
        "comparisons": [[["method=lora"], ["method=full"]]]}
KNOWN = ("name, paper, says, budget, also, kind, metric, against, comparisons, margin, direction, expected, matched, "
         "fewer_params, says")


@pytest.mark.parametrize("change,message", [
    ({"name": "Bad Name"}, "claim.name must be a name of lower-case letters, digits and _ (such as lr_ratio), got "
                           "'Bad Name'"),
    ({"paper": " "}, "claim.paper must be a non-empty text, got ' '"),
    ({"budget": "huge"}, "claim.budget must be one of small, paper, got 'huge'"),
    ({"kind": "bigger"}, "claim.kind must be one of equivalent, better, not_worse, correlated, ratio, got 'bigger'"),
    ({"metric": "exact_match"}, "claim.metric must be a dotted metrics.json key (test.exact_match, forgetting.delta, "
                                "...) or a list of them, got 'exact_match'"),
    ({"margin": -1}, "claim.margin must be a finite number > 0 (the smallest difference that matters, in the "
                     "metric's units), got -1"),
    ({"direction": None}, "claim.direction must be one of lower, higher (which is better), got None"),
    ({"direction": "down"}, "claim.direction must be one of lower, higher (which is better), got 'down'"),
    ({"expected": 10}, "claim.expected applies to kind ratio only, not kind better, got 10"),
    ({"comparisons": [[["method=lora"]]]}, "claim.comparisons[0] must be a pair of selectors [first, second], got "
                                           "[['method=lora']]"),
    ({"comparisons": [[["lora"], ["method=full"]]]}, "claim.comparisons[0][0] must be a non-empty list of key=value "
                                                     "overrides, got ['lora']"),
    ({"comparisons": [[["method=lora"], [" method=lora"]]]}, "claim.comparisons[0] compares a selector with itself, "
                                                             "got [['method=lora'], [' method=lora']]"),
    ({"comparisons": None}, "claim.comparisons must be a list of pairs of selectors, each a list of key=value "
                            "overrides ([[[method=lora], [method=full]]]), got None"),
    ({"matched": {"by": "gain", "within": 0.05}}, "claim.matched.by must be a dotted metrics.json key, or "
                                                 "gain.<metric> (test minus zero-shot), got 'gain'"),
    ({"matched": {"by": "gain.exact_match", "within": 0}}, "claim.matched.within must be a finite number > 0, got 0"),
    ({"matched": {"on": "gain.exact_match"}}, "claim.matched must be {by: <dotted key, or gain.<metric>>, within: "
                                              "<tolerance>}, got {'on': 'gain.exact_match'}"),
    ({"fewer_params": "yes"}, "claim.fewer_params must be true or false, got 'yes'"),
    ({"colour": "red"}, f"claim.colour: unknown key (known keys: {KNOWN})"),
    ({"kind": "ratio", "direction": None, "metric": "optim.lr", "margin": 0.5, "expected": 10},
     "claim.margin must be a factor > 1 for kind ratio (the ratio counts as the paper's within expected/margin .. "
     "expected*margin), got 0.5"),
    ({"kind": "ratio", "direction": None, "metric": "optim.lr", "margin": 3},
     "claim.expected must be a finite number > 0 (the paper's ratio), got None"),
    ({"kind": "ratio", "direction": None, "metric": "optim.lr", "margin": 3, "expected": 10,
      "comparisons": [[["a=1"], ["a=2"]], [["a=1"], ["a=3"]]]},
     "claim.comparisons must be one pair for kind ratio (first / second), got [[['a=1'], ['a=2']], [['a=1'], "
     "['a=3']]]"),
    ({"kind": "correlated", "direction": None, "comparisons": None, "margin": 0.5},
     "claim.against must be the dotted metrics.json key the metric is correlated with (kl_to_base.kl), got None"),
    ({"kind": "correlated", "direction": None, "comparisons": None, "against": "kl_to_base.kl", "margin": 1.5},
     "claim.margin must be in (0, 1) for kind correlated (the smallest correlation that counts), got 1.5"),
    ({"kind": "correlated", "direction": None, "against": "kl_to_base.kl", "margin": 0.5},
     "claim.comparisons applies to kind equivalent or better or not_worse or ratio only, not kind correlated, got "
     "[[['method=lora'], ['method=full']]]"),
    ({"also": [{"kind": "equivalent", "metric": "test.loss", "margin": 0}]},
     "claim.also[0].margin must be a finite number > 0 (the smallest difference that matters, in the metric's "
     "units), got 0"),
    ({"also": [{"kind": "equivalent", "metric": "test.loss", "margin": 1, "budget": "small"}]},
     "claim.also[0].budget: unknown key (known keys: kind, metric, against, comparisons, margin, direction, expected, "
     "matched, fewer_params, says)"),
])
def test_a_bad_claim_field_is_one_line_naming_it(change, message):
    claim = {**copy.deepcopy(GOOD), **change}
    claim = {k: v for k, v in claim.items() if not (v is None and k in ("direction", "comparisons"))} \
        if change.get("kind") else claim
    with pytest.raises(ConfigError) as err:
        check_claim(claim)
    assert str(err.value) == message
    check_claim(GOOD)  # the claim it was made from is good


def test_an_experiment_s_claim_is_checked_when_the_run_is_configured():
    from peftlab.config import validate

    from conftest import compose

    with pytest.raises(ConfigError, match=r"^claim.margin must be a factor > 1 for kind ratio"):
        validate(compose(["experiment=claim_lr_ratio", "claim.margin=0.5"]))
    with pytest.raises(ConfigError, match=r"^claim must be a mapping"):
        validate(compose(["claim=[1,2]"]))
    assert validate(compose([])).claim is None


# --- every claim experiment composes at both budgets ------------------------------------------------
def _swept(params: dict) -> set[str]:
    """Every key=value a sweep's params make (as Hydra's parser spells each value)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parser, found = OverridesParser.create(), set()
    for key, values in params.items():
        override = parser.parse_override(f"{key}={values}")
        found |= {f"{key}={v}" for v in (override.sweep_string_iterator() if override.is_sweep_override()
                                         else [override.get_value_element_as_str()])}
    return found


@pytest.mark.parametrize("budget", ["small", "paper"])
@pytest.mark.parametrize("experiment", CLAIMS)
def test_every_claim_composes_at_both_budgets(experiment, budget):
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf, open_dict

    import peftlab.config  # noqa: F401  (registers the schemas)
    import peftlab.methods  # noqa: F401
    import peftlab.tasks  # noqa: F401
    from peftlab.config import validate

    assert CLAIMS == ["claim_all_layers", "claim_learns_less", "claim_lr_ratio", "claim_rl_rank1", "claim_rl_razor"]
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("train", overrides=[f"experiment={experiment}", f"budget={budget}"], return_hydra_config=True)
    sweeper = OmegaConf.to_container(cfg.hydra.sweeper, resolve=True)
    with open_dict(cfg):
        del cfg["hydra"]
        cfg.paths.run_dir = "unused-run-dir"
    conf = validate(cfg)
    claim = conf.claim
    assert claim["name"] == experiment.removeprefix("claim_") and claim["budget"] == budget
    assert budget == "small" or (conf.model.name_or_path or "").startswith("hf://")  # the paper's model
    swept = _swept(sweeper["params"])
    for part in [claim, *(claim.get("also") or [])]:  # each selector names what the sweep sets, or a recorded key
        for pair in part.get("comparisons") or []:
            for term in (t for selector in pair for t in selector):
                assert term in swept or term.split("=")[0] in ("method", "training_objective"), (term, swept)
    for name in (sweeper.get("group_search") or {}):  # a group's own space is named as the sweep names the group
        assert name in swept, (name, swept)


# --- each claim experiment end to end on the tiny model ---------------------------------------------
# the launch command's sweep, smaller: fewer settings and seeds (the rules and the pages are the same)
SMALLER = {
    "claim_lr_ratio": ["hydra.sweeper.search={optim.lr: 'x0.5,x1,x2'}", "hydra.sweeper.search_seeds=[4,5]",
                       "hydra.sweeper.test_seeds=[1,2]"],
    "claim_all_layers": ["hydra.sweeper.search={optim.lr: 'x1,x2'}", "hydra.sweeper.test_seeds=[2,3]"],
    "claim_rl_rank1": ["hydra.sweeper.test_seeds=[2,3]"],
    "claim_learns_less": ["optim.lr=1e-3,3e-3", "seed=1,2"],
    "claim_rl_razor": ["optim.lr=1e-3,3e-3", "seed=1,2"],
}


def launch_commands(experiment: str) -> list[list[str]]:
    """The commands on the experiment file's first comment line, joined by ``&&``."""
    line = next(x for x in (CONF / "experiment" / f"{experiment}.yaml").read_text().splitlines()
                if x.startswith("# peftlab-"))
    return [part.split() for part in line[2:].split("&&")]


@pytest.mark.integration  # five sweeps of the tiny model, about a minute each
@pytest.mark.parametrize("experiment", CLAIMS)
def test_each_claim_runs_end_to_end_on_the_tiny_model_and_gets_a_verdict(experiment, tmp_path, cache_dir):
    sweep = tmp_path / "sweep"
    for command in launch_commands(experiment):
        command = [c.replace("=outputs/", f"={tmp_path}/") for c in command]
        if command[0] == "peftlab-train":
            command += ["debug=tiny", "trainer.max_steps=2", "trainer.val_check_interval=2", "logger=none",
                        "merge_after=false"]
        if "-m" in command:
            command += [*SMALLER[experiment], "hydra/launcher=basic", f"hydra.sweep.dir={sweep}"]
        proc = run_cli(*command, timeout=1800)
        assert proc.returncode == 0, proc.stderr[-3000:]
    runs = [json.loads(p.read_text()) for p in sweep.rglob("metrics.json")]
    assert runs and all(r["claim"]["budget"] == "small" for r in runs)
    assert all(r["claim"]["name"] == experiment.removeprefix("claim_") for r in runs)
    proc = run_cli("peftlab-report", str(sweep), f"out_dir={tmp_path / 'report'}", f"hydra.run.dir={tmp_path / 'log'}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    found = json.loads((tmp_path / "report" / "claim.json").read_text())
    assert found["verdict"] in (REPRODUCED, NOT_REPRODUCED, INCONCLUSIVE) and found["parts"]
    assert found["cost"]["runs"] == len(runs) and found["scale"]["models"]
    page = (tmp_path / "report" / "claim.md").read_text()
    assert f"## Verdict: **{found['verdict']}**" in page and "- command: `peftlab-train -m" in page
    proc = run_cli("peftlab-report", f"claims=[{tmp_path / 'report'}]", f"out_dir={tmp_path / 'overview'}",
                   f"hydra.run.dir={tmp_path / 'log2'}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"**{found['verdict']}**" in (tmp_path / "overview" / "claims.md").read_text()
