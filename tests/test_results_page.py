"""results.html: one self-contained page. Its content here; in a real headless browser (Debian's
chromium, the integration suite): it loads with no console error and no request beyond itself, the
plots draw (a screenshot that is not blank), hovering a point shows its settings, sorting works."""

from __future__ import annotations

import io
import json
import re

import pytest

from conftest import fake_run

EVIL = "<!--<script></script><script>window.pwned=1</script>&amp;"
METHODS = {"lora": ([0.90, 0.92, 0.91], 2_442_240, 120.0, 4100), "ia3": ([0.88, 0.90, 0.89], 57_600, 100.0, 3600),
           "prompt": ([0.60, 0.64, 0.62], 11_520, 110.0, 3650), EVIL: ([0.10, 0.12, 0.11], 1_000, 90.0, 3000)}


@pytest.fixture
def report(tmp_path):
    from peftlab.config.commands import ReportSchema
    from peftlab.reporting import write_report

    for order, (name, (values, trainable, wall, rss)) in enumerate(METHODS.items()):
        for seed, v in enumerate(values, 1):
            curve = [{"step": s, "train/loss": 2.0 / (s + seed)} for s in range(1, 9)]
            curve += [{"step": 9, "train/loss": "nan"}] + [{"step": s, "val/loss": 1.5 / (s + order)} for s in (4, 8)]
            fake_run(tmp_path / "sweep" / f"{order}-{seed}", [f"tags=[{json.dumps(name)}]", f"seed={seed}"],
                     {"seed": seed, "method": "lora", "primary_metric": "exact_match", "greater_is_better": True,
                      "test": {"exact_match": v, "loss": 1 - v}, "train": {"wall_s": wall, "tokens_per_s": 300},
                      "memory": {"peak_rss_mb": rss}, "params": {"trainable": trainable, "trainable_pct": 1.0},
                      "forgetting": {"delta": float("nan") if order == 1 else 0.1}},
                     curve)
    write_report([tmp_path / "sweep"], tmp_path / "report", ReportSchema(plots=False, compare=True, equivalence=0.05))
    return tmp_path / "report" / "results.html"


def page_data(page: str) -> dict:
    found = re.search(r'<script type="application/json" id="data">(.*?)</script>', page, re.S)
    return json.loads(found.group(1))


def test_the_page_holds_every_group_run_and_test_and_needs_nothing_else(report):
    page = report.read_text()
    data = page_data(page)
    assert len(data["rows"]) == 4 and len(data["runs"]) == 12
    assert len(data["comparisons"]) == 6 and len(data["equivalence"]) == 6
    assert data["runs"][0]["train/loss"][:2] == [[1, 1.0], [2, 2.0 / 3]] and data["runs"][0]["val/loss"][0][0] == 4
    assert len(data["runs"][0]["train/loss"]) == 8  # the NaN at step 9 is left out
    assert data["rows"][1]["forgetting_mean"] is None  # NaN is not JSON: the page shows —
    # the Pareto front over trainable parameters: the cheapest group that is better than every cheaper one
    front = [data["rows"][i]["setting"] for i in data["fronts"]["trainable"]]
    assert front[-1] == 'tags=["lora"]' and len(front) == 4
    # self-contained: no element loads anything (the SVG namespace is a name, not a request)
    assert not re.search(r"""\b(src|href)\s*=""", page) and "<link" not in page and "@import" not in page
    assert set(re.findall(r"https?://[^\s\"']+", page)) == {"http://www.w3.org/2000/svg"}


def test_settings_from_run_folders_cannot_end_the_data_or_add_markup(report):
    page = report.read_text()
    data = page[page.index('id="data">'):page.index("</script>")]
    assert not set("<>&") & set(data[len('id="data">'):])  # written as \u escapes, which JSON reads back
    assert page.count("</script>") == 2 and page.count("<!--") == 0
    assert any(EVIL in r["setting"] for r in page_data(page)["rows"])  # ...and reads back whole
    assert "innerHTML" not in page  # the script puts text in as text


@pytest.mark.integration
def test_the_page_in_a_real_browser(report):
    from browser import Browser, chromium

    exe = chromium()
    if exe is None:
        pytest.skip("no chromium (make test-integration installs Debian's chromium where it can)")
    browser = Browser(exe)
    try:
        browser.open(report.as_uri())
        assert browser.errors() == []
        assert set(browser.requests()) == {report.as_uri()}  # nothing fetched but the page itself
        assert browser.evaluate("window.pwned === undefined")
        assert browser.evaluate("document.querySelectorAll('#pareto circle.point').length") == 4
        assert browser.evaluate("document.querySelectorAll('#curves polyline.curve').length") == 12
        assert browser.evaluate("document.querySelectorAll('#pareto polyline.front').length") == 1

        # hovering a point shows its settings
        x, y = browser.evaluate("(() => { const r = document.querySelector('#pareto circle.point')"
                                ".getBoundingClientRect(); return [r.x + r.width / 2, r.y + r.height / 2]; })()")
        browser.hover(x, y)
        tip = browser.evaluate("document.getElementById('tip').textContent")
        assert tip.startswith('tags=["lora"]\nexact_match: 0.9100') and "trainable parameters: 2,442,240" in tip

        # the plots are drawn: the screenshot is not one colour, and the points' colours are in it
        from PIL import Image

        image = Image.open(io.BytesIO(browser.screenshot("#pareto"))).convert("RGB")
        colours = image.getcolors(maxcolors=1 << 20)
        assert len(colours) > 20
        assert any(abs(c[0] - 0x1f) < 8 and abs(c[1] - 0x77) < 8 and abs(c[2] - 0xb4) < 8 for _, c in colours)

        # sorting: by the metric ascending, then descending; the worst group is the evil-named one
        column = "document.querySelectorAll('#groups tbody tr td:first-child')"
        read = f"Array.from({column}).map(td => td.textContent)"
        browser.evaluate("document.querySelector('#groups th[data-key=\"exact_match_mean\"]').click()")
        ascending = browser.evaluate(read)
        browser.evaluate("document.querySelector('#groups th[data-key=\"exact_match_mean\"]').click()")
        descending = browser.evaluate(read)
        assert ascending == [f"tags=[{json.dumps(n)}]" for n in (EVIL, "prompt", "ia3", "lora")]
        assert descending == ascending[::-1]

        # the x axis switches to training time; the front is recomputed for it
        browser.evaluate("(() => { const s = document.getElementById('x-axis'); s.value = 'train_wall_s_mean';"
                         "s.dispatchEvent(new Event('change')); })()")
        assert browser.evaluate("document.querySelectorAll('#pareto circle.point').length") == 4
        assert browser.errors() == []
    finally:
        browser.close()


def test_online_rl_runs_get_their_training_curves_and_others_do_not(tmp_path):
    """rl_curves.png: each group's reward, KL, clip fraction and completion length against the steps,
    the mean over its seeds (matplotlib's own lines, read back); runs without them get no such figure."""
    from peftlab.config.commands import ReportSchema
    from peftlab.reporting import plots, write_report

    drawn = {}
    real = plots._rl_curves

    def keep(plt, groups):
        fig = real(plt, groups)
        drawn.update({ax.get_title(): [list(line.get_ydata()) for line in ax.lines] for ax in fig.axes})
        return fig

    for mu in (1, 2):
        for seed in (1, 2):
            curve = [{"step": s, "train/reward": s / 10 + seed / 100 * mu, "train/kl": 0.01 * s,
                      "train/clip_fraction": 0.1 * (mu - 1), "train/completion_length": 12} for s in (9, 19)]
            fake_run(tmp_path / "sweep" / f"{mu}-{seed}", [f"rl.num_iterations={mu}", f"seed={seed}"],
                     {"seed": seed, "method": "lora", "primary_metric": "exact_match", "test": {"exact_match": 0.5},
                      "params": {"trainable": 10}}, curve)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(plots, "_rl_curves", keep)
        write_report([tmp_path / "sweep"], tmp_path / "report", ReportSchema(html=False))
    assert (tmp_path / "report" / plots.RL_PLOT).is_file()
    reward = drawn["reward (the batch's mean) (mean over seeds)"]
    assert reward == [pytest.approx([0.915, 1.915]), pytest.approx([0.93, 1.93])]  # mu=1, mu=2: seeds' means
    assert drawn["clip fraction (mean over seeds)"] == [[0.0, 0.0], pytest.approx([0.1, 0.1])]
    fake_run(tmp_path / "sft", ["seed=1"], {"seed": 1, "method": "lora", "primary_metric": "exact_match",
                                            "test": {"exact_match": 0.5}, "params": {"trainable": 10}},
             [{"step": 9, "train/loss": 1.0}])
    write_report([tmp_path / "sft"], tmp_path / "sft-report", ReportSchema(html=False))
    assert not (tmp_path / "sft-report" / plots.RL_PLOT).exists()
