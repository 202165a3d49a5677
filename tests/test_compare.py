"""Pairwise comparisons in reports (reporting/compare.py): the t tests are scipy's, Holm's
correction and the effect sizes are computed by hand here on fixed numbers, and the compact
letter display follows the separations."""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path

import pytest
from scipy import stats

from peftlab.reporting.compare import compare, holm, letters, pair_test
from peftlab.reporting.runs import Group, Run


def group(name: str, values: list[float], seeds=None) -> Group:
    seeds = seeds or list(range(1, len(values) + 1))
    return Group(name, [Run(Path(f"/{name}/{s}"), [f"seed={s}"], {"seed": s, "test": {"exact_match": v}},
                            "finished") for s, v in zip(seeds, values, strict=True)])


def test_a_paired_comparison_is_scipys_paired_t_test_with_cohens_dz():
    a, b = [0.90, 0.88, 0.91, 0.87, 0.89], [0.93, 0.90, 0.95, 0.89, 0.90]
    r = pair_test(group("a", a), group("b", b), "test.exact_match")
    assert r.test == "paired t (5 seeds)"
    assert r.p == pytest.approx(stats.ttest_rel(b, a).pvalue, rel=1e-9)
    d = [y - x for x, y in zip(a, b, strict=True)]
    half = stats.t.ppf(0.975, 4) * stats.sem(d)
    assert r.ci95 == pytest.approx((statistics.fmean(d) - half, statistics.fmean(d) + half))
    dz = statistics.fmean(d) / statistics.stdev(d)
    assert r.effect == pytest.approx(dz)
    # the exact interval: at each end, the observed t sits at the noncentral t's 2.5% / 97.5% point
    t_obs, low, high = dz * math.sqrt(5), *r.effect_ci95
    assert stats.nct.cdf(t_obs, 4, low * math.sqrt(5)) == pytest.approx(0.975, abs=1e-6)
    assert stats.nct.cdf(t_obs, 4, high * math.sqrt(5)) == pytest.approx(0.025, abs=1e-6)


def test_no_effect_size_from_fewer_than_five_seeds():
    r = pair_test(group("a", [0.90, 0.88, 0.91]), group("b", [0.93, 0.90, 0.95]), "test.exact_match")
    assert r.effect is None and r.effect_ci95 is None and r.effect_note == "no d_z: 3 seeds, fewer than 5"


def test_groups_of_different_seeds_are_compared_by_welchs_test():
    a, b = [0.90, 0.88, 0.91, 0.86, 0.89], [0.80, 0.84, 0.79, 0.83, 0.82, 0.81]
    r = pair_test(group("a", a, [1, 2, 3, 4, 5]), group("b", b, [6, 7, 8, 9, 10, 11]), "test.exact_match")
    assert r.test == "Welch t" and r.n == (5, 6)
    assert r.p == pytest.approx(stats.ttest_ind(b, a, equal_var=False).pvalue, rel=1e-9)
    pooled = math.sqrt((4 * statistics.variance(a) + 5 * statistics.variance(b)) / 9)
    d = (statistics.fmean(b) - statistics.fmean(a)) / pooled
    assert r.effect == pytest.approx(d)
    scale = math.sqrt(5 * 6 / 11)
    assert stats.nct.cdf(d * scale, 9, r.effect_ci95[0] * scale) == pytest.approx(0.975, abs=1e-6)


def test_holm_on_a_textbook_family():
    # sorted 0.005, 0.01, 0.03, 0.04 -> x4, x3, x2, x1 = 0.02, 0.03, 0.06, 0.04 -> monotone: 0.02, 0.03, 0.06, 0.06
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert holm([0.5, None, 0.9]) == [pytest.approx(1.0), None, pytest.approx(1.0)]  # capped at 1; None not counted


def test_the_letters_follow_the_separations():
    best, close, far = group("best", [0.90, 0.91, 0.92]), group("close", [0.89, 0.90, 0.92]), \
        group("far", [0.50, 0.52, 0.51])
    pairs = compare([best, close, far], "test.exact_match")
    assert [(p.first, p.second, p.separated) for p in pairs] == [
        ("best", "close", False), ("best", "far", True), ("close", "far", True)]
    assert letters([best, close, far], pairs, "test.exact_match", greater_is_better=True) == {
        "best": "a", "close": "a", "far": "b"}
    assert letters([best, close, far], pairs, "test.exact_match", greater_is_better=False) == {
        "far": "a", "best": "b", "close": "b"}  # lower is better: the far group ranks first


def test_a_chain_gives_a_group_two_letters():
    """a > b > c where only a and c are separated: b shares a letter with each."""
    from peftlab.reporting.compare import Pair

    groups = [group("a", [3.0, 3.1]), group("b", [2.0, 2.1]), group("c", [1.0, 1.1])]
    sep = lambda x, y, s: Pair("k", x, y, "t", (2, 2), 0, None, 0, 0, None, None, s)  # noqa: E731
    pairs = [sep("a", "b", False), sep("a", "c", True), sep("b", "c", False)]
    assert letters(groups, pairs, "test.exact_match", True) == {"a": "a", "b": "ab", "c": "b"}


def test_the_report_carries_the_comparisons_and_the_letters(tmp_path):
    from peftlab.config.commands import ReportSchema
    from peftlab.reporting import write_report

    for order, name, values in ((0, "lora", [0.90, 0.91, 0.92]), (1, "ia3", [0.89, 0.90, 0.92]),
                                (2, "prompt", [0.50, 0.52, 0.51])):
        for seed, v in enumerate(values, 1):
            run = tmp_path / "sweep" / f"{order}-{name}-{seed}"
            (run / ".hydra").mkdir(parents=True)
            (run / ".hydra" / "overrides.yaml").write_text(f"- method={name}\n- seed={seed}\n")
            (run / "metrics.json").write_text(json.dumps({
                "status": "finished", "seed": seed, "method": name, "primary_metric": "exact_match",
                "greater_is_better": True, "test": {"exact_match": v, "loss": 0.1},
                "params": {"trainable": 1, "total": 2, "trainable_pct": 50}}))
    report = write_report([tmp_path / "sweep"], tmp_path / "report", ReportSchema(plots=False, compare=True))
    assert [g["letters"] for g in report["groups"]] == ["a", "a", "b"]
    assert [c["separated"] for c in report["comparisons"]] == [False, True, True]
    md = (tmp_path / "report" / "results.md").read_text()
    assert "Holm's correction over each family of 3 pairs" in md and "| method=lora |" in md
    assert "Letters and *separated* read the seeds tests." in md  # no answers item by item here
    tex = (tmp_path / "report" / "results.tex").read_text()
    assert r"\textsuperscript{a}" in tex and r"\textsuperscript{b}" in tex


def _run_with_answers(folder: Path, name: str, seed: int, correct: list[bool], **metrics) -> None:
    folder.mkdir(parents=True)
    (folder / ".hydra").mkdir()
    (folder / ".hydra" / "overrides.yaml").write_text(f"- method={name}\n- seed={seed}\n")
    rows = [{"prediction": "x", "reference": f"answer {i}", "correct": c} for i, c in enumerate(correct)]
    (folder / "test_predictions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (folder / "metrics.json").write_text(json.dumps({
        "status": "finished", "seed": seed, "method": name, "primary_metric": "exact_match", "greater_is_better": True,
        "test": {"exact_match": sum(correct) / len(correct)}, "params": {"trainable": 1, "total": 2,
                                                                          "trainable_pct": 50}, **metrics}))


def test_the_report_counts_the_items_and_pairs_the_groups_item_by_item(tmp_path):
    """Two methods that answered the same 40 items at the same 3 seeds: the seeds+items interval and
    the item-paired test are the crossed ones on the predictions, and the provenance is the runs'."""
    import numpy as np

    from peftlab.config.commands import ReportSchema
    from peftlab.reporting import write_report
    from peftlab.reporting.intervals import crossed_interval

    rng = np.random.default_rng(0)
    easy = rng.random(40) < 0.7  # items most runs get right
    tables = {}
    for order, name, flip in ((0, "lora", 0.1), (1, "ia3", 0.3)):
        rows = []
        for seed in (1, 2, 3):
            row = [bool(e) != bool(rng.random() < flip) for e in easy]
            rows.append([float(c) for c in row])
            _run_with_answers(tmp_path / "sweep" / f"{order}-{name}-{seed}", name, seed, row,
                              versions={"peftlab": "9.9", "git_commit": "abcdef1234567890", "git_dirty": False},
                              machine={"cpu": "Test CPU", "cores": 2, "memory_gib": 4.0, "gpu": None, "os": "x"},
                              started_at="2026-01-01T00:00:00Z", finished_at="2026-01-01T00:01:00Z")
        tables[name] = rows
    report = write_report([tmp_path / "sweep"], tmp_path / "report", ReportSchema(plots=False, html=False,
                                                                                  compare=True))
    lora = next(g for g in report["groups"] if g["setting"] == "method=lora")
    assert lora["exact_match_ci95_items"] == pytest.approx(crossed_interval(tables["lora"]).half)
    [pair] = report["comparisons"]
    diffs = [[b - a for a, b in zip(ra, rb, strict=True)] for ra, rb in zip(tables["lora"], tables["ia3"], strict=True)]
    found = crossed_interval(diffs)
    assert pair["items_test"] == "seeds x items (3 seeds, 40 items)"
    assert pair["items_ci95"] == pytest.approx([found.low, found.high]) and pair["items_p"] == pytest.approx(
        found.p_zero())
    md = (tmp_path / "report" / "results.md").read_text()
    assert md.startswith("- code: peftlab 9.9 at commit abcdef123456\n- runs: 2026-01-01T00:00:00Z to "
                         "2026-01-01T00:01:00Z, on Test CPU (2 cores, 4.0 GiB), no GPU\n")
    assert f"- report: `peftlab-report {tmp_path / 'sweep'} plots=false compare=true html=false`" in md
    assert "Letters and *separated* read the item-paired tests." in md


def test_a_report_says_when_its_runs_were_chosen_on_the_test_split(tmp_path):
    from peftlab.config.commands import ReportSchema
    from peftlab.reporting import write_report

    for seed in (1, 2):
        _run_with_answers(tmp_path / "sweep" / str(seed), "lora", seed, [True, False], tune_on_test=True)
    report = write_report([tmp_path / "sweep"], tmp_path / "report", ReportSchema(plots=False, html=False))
    assert report["provenance"]["tuned_on_test"] == 2
    assert "**tuned on the test split**: 2 runs were chosen by a sweeper optimising a test.* objective" in (
        tmp_path / "report" / "results.md").read_text()


def test_one_item_is_no_table_to_test_over_items():
    from peftlab.reporting.items import ItemTable

    tables = {name: ItemTable((1, 2, 3), ("a",), ((1.0,), (0.0,), (1.0,))) for name in ("x", "y")}
    r = pair_test(group("x", [1.0, 0.0, 1.0]), group("y", [1.0, 0.0, 1.0]), "test.exact_match", tables)
    assert r.items_ci95 is None and r.items_p is None and r.items_test == "seeds x items (3 seeds, 1 items)"
