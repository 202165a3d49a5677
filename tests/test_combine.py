"""peftlab-combine: several runs' adapters of one base combined by peft's add_weighted_adapter,
saved as a plain peft adapter, and scored with the sources on every source task."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from conftest import compose, run_cli, train

TINY = ["debug=tiny", "trainer.max_steps=4", "optim.lr=1e-2", "zero_shot=false", "logger=none", "merge_after=false",
        "forgetting=null", "method.target_modules=[q_proj,v_proj,up_proj]"]
ALL_TYPES = ("linear", "cat", "svd", "ties", "ties_svd", "dare_linear", "dare_ties", "dare_linear_svd",
             "dare_ties_svd", "magnitude_prune", "magnitude_prune_svd")


@pytest.fixture(scope="module")
def sources(tmp_path_factory, cache_dir) -> dict[str, Path]:
    """Tiny LoRA runs of one base: dates (r=4), numbers (r=4), dates again at r=2."""
    root = tmp_path_factory.mktemp("sources")
    runs = {"dates": ["data=dates", "seed=1", "method.r=4"], "numbers": ["data=numbers", "seed=2", "method.r=4"],
            "dates_r2": ["data=dates", "seed=3", "method.r=2"],
            "ia3_dates": ["method=ia3", "seed=4"], "ia3_numbers": ["method=ia3", "data=numbers", "seed=5"]}
    for name, extra in runs.items():
        (root / name).mkdir()
        train(compose([*(TINY[:-1] if "method=ia3" in extra else TINY), *extra], run_dir=root / name))
    return {name: root / name for name in runs}


def combine(out: Path, runs: list[Path], *extra: str) -> dict:
    from peftlab.engine.combine import combine_from_config

    cfg = compose([f"runs=[{','.join(map(str, runs))}]", *extra], config_name="combine", run_dir=out)
    return combine_from_config(cfg, out)


def load_plain(adapter: Path):
    """A fresh base with ``adapter`` on it, by plain transformers + peft."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = json.loads((adapter / "adapter_config.json").read_text())["base_model_name_or_path"]
    return PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), adapter).eval()


def peft_reference(runs: list[Path], weights: list[float], **kwargs):
    """peft's own combination of the same adapters, made by hand."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = json.loads((runs[0] / "adapter" / "adapter_config.json").read_text())["base_model_name_or_path"]
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), runs[0] / "adapter",
                                      adapter_name="a0")
    for i, run in enumerate(runs[1:], 1):
        model.load_adapter(run / "adapter", adapter_name=f"a{i}")
    torch.manual_seed(42)
    model.add_weighted_adapter([f"a{i}" for i in range(len(runs))], weights, "ref", **kwargs)
    model.set_adapter("ref")
    return model.eval()


INPUTS = torch.tensor([[1, 15, 27, 99, 4, 8, 16, 23, 42]])


@pytest.mark.parametrize("kind", ALL_TYPES)
def test_every_combination_type_equals_peft_own_and_reloads_with_plain_peft(sources, tmp_path, kind):
    from peftlab.export.verify import logits_tolerance

    runs, weights = [sources["dates"], sources["numbers"]], [0.7, 0.5]
    report = combine(tmp_path / "c", runs, f"combination_type={kind}", "weights=[0.7,0.5]", "density=0.6",
                     "evaluate=false")
    check = report["check"]
    assert set(check) == {"reloaded_max_abs_error", "tolerance"}
    assert 0 < check["tolerance"] < 1e-4 and check["reloaded_max_abs_error"] <= check["tolerance"]
    uses_density = kind.startswith(("ties", "dare", "magnitude"))
    assert report["density"] == (0.6 if uses_density else None)
    kwargs = {"combination_type": kind, **({"density": 0.6} if uses_density else {})}
    with torch.no_grad():
        plain = load_plain(tmp_path / "c" / "adapter")
        ours = plain(input_ids=INPUTS).logits
        ref = peft_reference(runs, weights, **kwargs)(input_ids=INPUTS).logits
    if kind.endswith("svd"):  # peft's own lora_A is a column-major view: the kernels sum in another order
        assert float((ours - ref).abs().max()) <= logits_tolerance(plain, ref)
    else:  # the same bytes in the same layout through the same kernels, in one process
        assert torch.equal(ours, ref)


@pytest.mark.parametrize("kind", ["svd", "ties_svd"])
def test_an_svd_combination_reloads_within_the_tolerance_and_a_perturbed_one_is_refused(sources, tmp_path,
                                                                                        monkeypatch, kind):
    """The gate allows the rounding of the model's forward, not a real difference: a reload whose
    one lora_B is a thousandth off is refused, and nothing is kept."""
    from peftlab.errors import ConfigError
    from peftlab.models.adapters import AdapterBank

    runs = [sources["dates"], sources["dates_r2"]]
    report = combine(tmp_path / "ok", runs, f"combination_type={kind}", "evaluate=false")
    assert report["check"]["reloaded_max_abs_error"] <= report["check"]["tolerance"]
    add = AdapterBank.add

    def perturbed(bank, name, *args, **kwargs):
        add(bank, name, *args, **kwargs)
        if name == "reloaded":
            with torch.no_grad():
                bank.model.base_model.model.model.layers[1].mlp.up_proj.lora_B["reloaded"].weight.mul_(1.001)

    monkeypatch.setattr(AdapterBank, "add", perturbed)
    with pytest.raises(ConfigError, match=r"the saved combination reloads with logits .* away from the one in "
                                          r"memory \(more than .*\); nothing was kept"):
        combine(tmp_path / "bad", runs, f"combination_type={kind}", "evaluate=false")
    assert not (tmp_path / "bad" / "adapter").exists()


def test_cat_is_the_exact_weighted_sum_of_the_updates(sources, tmp_path):
    """cat stacks the factors: its update is exactly 0.7 dW_dates - 0.5 dW_numbers on every layer."""
    runs = [sources["dates"], sources["numbers"]]
    combine(tmp_path / "c", runs, "combination_type=cat", "weights=[0.7,-0.5]", "evaluate=false")
    model = peft_reference(runs, [1.0, 1.0], combination_type="cat")
    model.load_adapter(tmp_path / "c" / "adapter", adapter_name="ours")
    layer = model.base_model.model.model.layers[0].self_attn.q_proj
    expected = 0.7 * layer.get_delta_weight("a0") - 0.5 * layer.get_delta_weight("a1")
    torch.testing.assert_close(layer.get_delta_weight("ours"), expected, rtol=1e-5, atol=1e-7)


def test_negation_of_one_adapter_subtracts_its_update(sources, tmp_path):
    combine(tmp_path / "c", [sources["dates"]], "weights=[-1]", "evaluate=false")
    model = load_plain(tmp_path / "c" / "adapter")
    model.load_adapter(sources["dates"] / "adapter", adapter_name="source")
    layer = model.base_model.model.model.layers[1].mlp.up_proj
    torch.testing.assert_close(layer.get_delta_weight("default"), -layer.get_delta_weight("source"))


def test_the_table_scores_base_sources_and_combination_on_every_source_task(sources, tmp_path):
    """Each source alone scores as a separate evaluation of its own run does (peftlab-eval)."""
    from peftlab.engine.evaluate import evaluate_from_config

    report = combine(tmp_path / "c", [sources["dates"], sources["numbers"]], "combination_type=ties",
                     "forgetting.tokens=512", "forgetting.window=64")
    rows = {r["adapter"]: r for r in report["table"]}
    assert [r["kind"] for r in report["table"]] == ["base", "source", "source", "combination"]
    assert all(set(r["tasks"]) == {"dates", "numbers"} for r in rows.values())
    assert rows["base"]["forgetting"]["delta"] == 0.0 and rows["combined"]["forgetting"]["loss"] > 0
    alone = evaluate_from_config(compose([f"run_dir={sources['numbers']}", "model=tiny_llama"], config_name="eval",
                                         run_dir=tmp_path / "e"), tmp_path / "e")
    assert rows["1_numbers"]["tasks"]["numbers"] == pytest.approx(alone["metrics"], abs=1e-5)
    md = (tmp_path / "c" / "combine.md").read_text()
    assert "| combination (ties) |" in md and "dates exact_match" in md and "forgetting Δ" in md
    assert len((tmp_path / "c" / "predictions_dates.jsonl").read_text().splitlines()) == 8
    import subprocess
    import sys

    script = Path(__file__).parents[1] / "scripts" / "combination_table.py"
    out = subprocess.run([sys.executable, str(script), str(tmp_path / "c")], check=True, capture_output=True,
                         text=True).stdout.splitlines()
    combined = rows["combined"]
    assert out[0] == "| model | weights | options | dates exact_match | numbers exact_match | mean | forgetting Δ |"
    assert out[2].startswith("| base alone |") and out[-1].startswith(
        "| ties (0_dates + 1_numbers) | 1,1 | density=0.5, majority_sign_method=total | "
        f"{combined['tasks']['dates']['exact_match']:.3f} |")


def _edited(src: Path, dest: Path, old: str, new: str) -> Path:
    shutil.copytree(src, dest)
    text = (dest / "config.yaml").read_text()
    assert old in text
    (dest / "config.yaml").write_text(text.replace(old, new, 1))
    return dest


@pytest.mark.parametrize("case", ["base", "method", "ia3_ties", "ia3_negative", "ia3_sum", "ranks", "dora", "rslora",
                                  "twice", "one_run_ties"])
def test_what_cannot_combine_is_refused_with_one_line_before_any_model_loads(sources, tmp_path, case):
    from peftlab.errors import ConfigError

    a, b = sources["dates"], sources["numbers"]
    runs, extra = {
        "base": lambda: ([a, _edited(b, tmp_path / "b", "name: tiny_llama", "name: tiny_qwen2")], []),
        "method": lambda: ([a, sources["ia3_numbers"]], []),
        "ia3_ties": lambda: ([sources["ia3_dates"], sources["ia3_numbers"]], ["combination_type=ties"]),
        "ranks": lambda: ([a, sources["dates_r2"]], ["combination_type=ties"]),
        "dora": lambda: ([a, _edited(b, tmp_path / "b", "use_dora: false", "use_dora: true")], []),
        "rslora": lambda: ([a, _edited(b, tmp_path / "b", "use_rslora: false", "use_rslora: true")], []),
        "twice": lambda: ([a, a], []),
        "ia3_negative": lambda: ([sources["ia3_dates"], sources["ia3_numbers"]], ["weights=[1.5,-0.5]"]),
        "ia3_sum": lambda: ([sources["ia3_dates"], sources["ia3_numbers"]], []),
        "one_run_ties": lambda: ([a], ["combination_type=ties", "weights=[-1]"]),
    }[case]()
    expected = {
        "base": "adapts tiny_qwen2 and", "method": "trained method=ia3 and",
        "ia3_ties": "method=ia3 adapters combine by linear only",
        "ranks": "combination_type=ties combines A and B entry by entry and needs equal ranks, got",
        "dora": "method.use_dora=true: peft's add_weighted_adapter combines B and A but not DoRA's magnitudes",
        "rslora": "method.use_rslora=true: peft's add_weighted_adapter gives the combination lora_alpha = r",
        "twice": "is named twice",
        "ia3_negative": "a negative weight flips their sign instead of removing a skill",
        "ia3_sum": "weights summing to 2 scale every targeted activation by about that much (give weights that sum to "
                   "1, such as weights=[0.5,0.5])",
        "one_run_ties": "combination_type=ties combines two or more adapters; one run"}[case]
    with pytest.raises(ConfigError) as err:
        combine(tmp_path / "c", runs, *extra)
    assert expected in str(err.value) and "\n" not in str(err.value)
    assert not (tmp_path / "c" / "adapter").exists()


def test_a_combination_that_fails_while_scoring_leaves_no_adapter(sources, tmp_path, monkeypatch):
    import peftlab.engine.adapters
    from peftlab.errors import DataError

    def fail(*args, **kwargs):
        raise DataError("forgetting text went away")

    monkeypatch.setattr(peftlab.engine.adapters, "prose_losses", fail)
    with pytest.raises(DataError):
        combine(tmp_path / "c", [sources["dates"], sources["numbers"]], "max_test_examples=2")
    assert sorted(p.name for p in (tmp_path / "c").iterdir()) == [".lock"]  # the command then removes it


def test_ia3_vectors_combine_linearly(sources, tmp_path):
    runs = [sources["ia3_dates"], sources["ia3_numbers"]]
    combine(tmp_path / "c", runs, "weights=[0.6,0.4]", "evaluate=false")
    with torch.no_grad():
        ours = load_plain(tmp_path / "c" / "adapter")(input_ids=INPUTS).logits
        ref = peft_reference(runs, [0.6, 0.4])(input_ids=INPUTS).logits
    assert torch.equal(ours, ref)


def test_unequal_ranks_combine_by_cat_and_svd(sources, tmp_path):
    runs = [sources["dates"], sources["dates_r2"]]
    report = combine(tmp_path / "cat", runs, "combination_type=cat", "evaluate=false")
    assert report["check"]["reloaded_max_abs_error"] <= report["check"]["tolerance"]
    cfg = json.loads((tmp_path / "cat" / "adapter" / "adapter_config.json").read_text())
    assert cfg["r"] == 6
    combine(tmp_path / "svd", runs, "combination_type=svd", "svd_rank=3", "evaluate=false")
    assert json.loads((tmp_path / "svd" / "adapter" / "adapter_config.json").read_text())["r"] == 3


def test_a_method_that_cannot_combine_and_bad_options_exit_2_with_one_line(sources, tmp_path, cache_dir):
    full = tmp_path / "full"
    full.mkdir()
    train(compose([*TINY[:-1], "method=full", "seed=1"], run_dir=full))
    cases = [
        ([f"runs=[{full},{sources['dates']}]"], f"runs: {full}: method=full adapters cannot be combined"),
        ([f"runs=[{sources['dates']}]", "combination_type=mean"], "combination_type"),
        ([f"runs=[{sources['dates']},{sources['numbers']}]", "weights=[1]"], "weights must have one weight per run"),
        ([f"runs=[{sources['dates']}]", "svd_rank=4"], "svd_rank applies to the *svd combination types only"),
        ([f"runs=[{sources['dates']}]", "density=0"], "density must be in (0, 1]"),
        ([f"runs=[{tmp_path}]"], "is not a finished peftlab-train run folder"),
    ]
    for args, message in cases:
        out = tmp_path / f"out{cases.index((args, message))}"
        done = run_cli("peftlab-combine", *args, f"hydra.run.dir={out}")
        assert done.returncode == 2, done.stderr
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("peftlab-combine: error:") and message in lines[0], lines


def test_the_python_api_combines_like_the_command(sources, tmp_path):
    import peftlab

    result = peftlab.combine([sources["dates"], sources["numbers"]],
                             ["combination_type=cat", "evaluate=false", f"hydra.run.dir={tmp_path / 'c'}"])
    assert result["out_dir"] == str(tmp_path / "c") and result["combination_type"] == "cat"
    assert json.loads((tmp_path / "c" / "combine.json").read_text())["runs"] == result["runs"]
    assert (tmp_path / "c" / ".hydra" / "overrides.yaml").is_file() and (tmp_path / "c" / "adapter").is_dir()
