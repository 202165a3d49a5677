"""TOST between groups of runs (reporting/equivalence.py): the p-values are scipy's one-sided t
tests on shifted samples, computed independently here; the verdicts; the report's table."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from scipy import stats

from peftlab.reporting.equivalence import equivalence, tost
from peftlab.reporting.runs import Group, Run

FP32 = [0.8984, 0.9063, 0.8906]
BF16 = [0.8906, 0.9063, 0.8984]


def group(name: str, values: list[float], seeds=None, key: str = "exact_match") -> Group:
    seeds = seeds or list(range(1, len(values) + 1))
    return Group(name, [Run(Path(f"/{name}/{s}"), [f"seed={s}"], {"seed": s, "test": {key: v}}, "finished")
                        for s, v in zip(seeds, values, strict=True)])


def test_paired_tost_is_two_one_sided_paired_t_tests():
    a, b = [0.90, 0.88, 0.91, 0.87], [0.905, 0.89, 0.90, 0.88]
    r = tost(group("a", a), group("b", b), "test.exact_match", 0.03)
    low = stats.ttest_rel([x + 0.03 for x in b], a, alternative="greater").pvalue
    high = stats.ttest_rel([x - 0.03 for x in b], a, alternative="less").pvalue
    assert r.test == "paired t (4 seeds)" and r.df == 3
    assert r.p_tost == pytest.approx(max(low, high), rel=1e-9)
    assert r.p_difference == pytest.approx(stats.ttest_rel(b, a).pvalue, rel=1e-9)
    assert r.difference == pytest.approx(sum(b) / 4 - sum(a) / 4)
    d = [y - x for x, y in zip(a, b, strict=True)]
    half = stats.t.ppf(0.95, 3) * stats.sem(d)
    assert r.ci90 == pytest.approx((r.difference - half, r.difference + half))
    assert r.verdict == "equivalent"  # the 90% interval lies inside ±0.03


def test_welch_tost_when_the_groups_ran_different_seeds():
    a, b = [0.90, 0.88, 0.91], [0.86, 0.89, 0.90, 0.85]
    r = tost(group("a", a, [1, 2, 3]), group("b", b, [4, 5, 6, 7]), "test.exact_match", 0.05)
    low = stats.ttest_ind([x + 0.05 for x in b], a, equal_var=False, alternative="greater").pvalue
    high = stats.ttest_ind([x - 0.05 for x in b], a, equal_var=False, alternative="less").pvalue
    assert r.test == "Welch t" and r.n == (3, 4)
    assert r.p_tost == pytest.approx(max(low, high), rel=1e-9)
    assert r.p_difference == pytest.approx(stats.ttest_ind(b, a, equal_var=False).pvalue, rel=1e-9)


@pytest.mark.parametrize("a,b,margin,verdict", [
    ([0.90, 0.91, 0.92], [0.60, 0.61, 0.62], 0.03, "different"),  # far apart
    ([0.90, 0.70, 0.95], [0.80, 0.95, 0.60], 0.03, "not resolved"),  # too much spread for 3 seeds
    (FP32, BF16, 0.03, "equivalent"),
    ([0.5, 0.6], [0.5, 0.6], 0.01, "equivalent"),  # the same on every seed: no spread, inside the margin
    ([0.5, 0.6], [0.55, 0.65], 0.01, "different"),  # the same shift on every seed, outside the margin
])
def test_the_verdicts(a, b, margin, verdict):
    assert tost(group("a", a), group("b", b), "test.exact_match", margin).verdict == verdict


def test_one_run_a_group_is_not_resolved():
    r = tost(group("a", [0.9]), group("b", [0.9]), "test.exact_match", 0.03)
    assert (r.verdict, r.p_tost, r.test) == ("not resolved", None, "needs 2 runs a group")


def test_every_pair_and_every_key():
    groups = [group("a", FP32), group("b", BF16), group("c", [0.2, 0.21, 0.19])]
    found = equivalence(groups, {"test.exact_match": 0.03})
    assert [(r.first, r.second) for r in found] == [("a", "b"), ("a", "c"), ("b", "c")]
    assert [r.verdict for r in found] == ["equivalent", "different", "different"]


def test_the_report_states_the_tests(tmp_path):
    from peftlab.config.commands import ReportSchema
    from peftlab.reporting import write_report

    for order, name, values in ((0, "fp32", FP32), (1, "bf16_base", BF16)):
        for seed, v in enumerate(values, 1):
            run = tmp_path / "sweep" / f"{order}-{name}-{seed}"
            (run / ".hydra").mkdir(parents=True)
            (run / ".hydra" / "overrides.yaml").write_text(f"- precision={name}\n- seed={seed}\n")
            (run / "metrics.json").write_text(json.dumps({
                "status": "finished", "seed": seed, "method": "lora", "primary_metric": "exact_match",
                "greater_is_better": True, "test": {"exact_match": v, "loss": 0.1},
                "forgetting": {"delta": 0.05 + v / 100}, "params": {"trainable": 1, "total": 2, "trainable_pct": 50}}))
    options = ReportSchema(plots=False, equivalence={"test.exact_match": 0.03, "forgetting.delta": 0.03})
    report = write_report([tmp_path / "sweep"], tmp_path / "report", options)
    verdicts = {(r["key"], r["first"], r["second"]): r["verdict"] for r in report["equivalence"]}
    assert verdicts == {("test.exact_match", "precision=fp32", "precision=bf16_base"): "equivalent",
                        ("forgetting.delta", "precision=fp32", "precision=bf16_base"): "equivalent"}
    md = (tmp_path / "report" / "results.md").read_text()
    assert ("| test.exact_match | precision=fp32 | precision=bf16_base | ±0.03 | after the runs | paired t (3 seeds) |"
            in md)
    assert "**equivalent (post hoc)**" in md  # a margin given to the report: a description, not a finding


def test_a_bare_margin_is_the_primary_metrics(tmp_path):
    from peftlab.config.commands import ReportSchema

    assert ReportSchema(equivalence=0.03).margins("exact_match") == {"test.exact_match": 0.03}
    assert ReportSchema(equivalence={"forgetting.delta": 0.05}).margins("exact_match") == {"forgetting.delta": 0.05}
    assert ReportSchema().margins("exact_match") == {}


def test_margins_the_runs_stated_before_they_ran_make_a_finding(tmp_path):
    """The margin every run recorded (margins= in its config) is tested as set before the runs; the
    same margin given only to the report is post hoc."""
    from peftlab.config.commands import ReportSchema
    from peftlab.reporting import write_report

    def sweep(folder, stated):
        for order, name, values in ((0, "fp32", FP32), (1, "bf16_base", BF16)):
            for seed, v in enumerate(values, 1):
                run = folder / f"{order}-{name}-{seed}"
                (run / ".hydra").mkdir(parents=True)
                (run / ".hydra" / "overrides.yaml").write_text(f"- precision={name}\n- seed={seed}\n")
                (run / "metrics.json").write_text(json.dumps({
                    "status": "finished", "seed": seed, "method": "lora", "primary_metric": "exact_match",
                    "test": {"exact_match": v}, "margins": stated,
                    "params": {"trainable": 1, "total": 2, "trainable_pct": 50}}))
        return folder

    before = write_report([sweep(tmp_path / "a", {"test.exact_match": 0.03})], tmp_path / "ra",
                          ReportSchema(plots=False, html=False))
    after = write_report([sweep(tmp_path / "b", {})], tmp_path / "rb",
                         ReportSchema(plots=False, html=False, equivalence=0.03))
    assert [r["stated_before"] for r in before["equivalence"]] == [True]
    assert [r["stated_before"] for r in after["equivalence"]] == [False]
    assert "| ±0.03 | before the runs |" in (tmp_path / "ra" / "results.md").read_text()
    assert "**equivalent (post hoc)**" in (tmp_path / "rb" / "results.md").read_text()


def test_the_verdicts_are_holm_corrected_over_the_pairs_of_a_metric():
    """Three groups a little apart: a and b alone would be called different at 0.05 (p 0.044), not
    within the family of three pairs (Holm: 0.089), as the pairwise comparisons say."""
    from peftlab.reporting.compare import holm

    groups = [group("a", [0.50, 0.52, 0.51]), group("b", [0.53, 0.545, 0.56]), group("c", [0.55, 0.58, 0.565])]
    found = equivalence(groups, {"test.exact_match": 0.001})
    raw = [r.p_difference for r in found]
    assert [r.p_difference_holm for r in found] == pytest.approx(holm(raw))
    assert [r.p_tost_holm for r in found] == pytest.approx(holm([r.p_tost for r in found]))
    assert [p < 0.05 for p in raw].count(True) > [r.verdict == "different" for r in found].count(True)
    assert all((r.verdict == "different") == (r.p_difference_holm < 0.05) for r in found)
