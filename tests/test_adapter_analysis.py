"""Spectra and subspace similarity of saved adapters (reporting/adapters.py, spectra.py,
subspace.py): the weight updates read from the files equal peft's own, the measures are right on
numbers worked by hand, and peftlab-report writes them."""

from __future__ import annotations

import csv
import io
import json
import math
import shutil

import pytest
import torch

from peftlab.errors import ConfigError
from peftlab.reporting.adapters import ANALYSED, module_updates
from peftlab.reporting.spectra import effective_rank, stable_rank, top1_energy
from peftlab.reporting.subspace import directions, similarity

from conftest import fake_run


def saved_adapter(backbone, config, folder, seed=0, edit=None):
    """``config`` applied to the backbone with random (not identity) factors, saved as <folder>/adapter;
    returns the peft model."""
    from peft import get_peft_model

    torch.manual_seed(seed)
    model = get_peft_model(backbone.model, config)
    if edit:
        edit(model)
    model.save_pretrained(str(folder / "adapter"))
    return model


@pytest.mark.parametrize("kind", ["lora", "lora_rslora_patterns", "hadamard", "kronecker"])
def test_the_updates_read_from_the_files_equal_peft_s_own(kind, tiny_backbone_factory, tmp_path):
    from peft import LoHaConfig, LoKrConfig, LoraConfig

    configs = {
        "lora": LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False),
        "lora_rslora_patterns": LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], use_rslora=True,
                                           rank_pattern={"v_proj": 2}, alpha_pattern={"v_proj": 3},
                                           init_lora_weights=False),
        "hadamard": LoHaConfig(r=4, alpha=8, target_modules=["q_proj"], init_weights=False),
        "kronecker": LoKrConfig(r=4, alpha=8, target_modules=["q_proj"], init_weights=False, decompose_both=True),
    }
    model = saved_adapter(tiny_backbone_factory(), configs[kind], tmp_path)
    updates = {u.name: u for u in module_updates(tmp_path)}
    peft_layers = {name.removeprefix("base_model.model."): m for name, m in model.named_modules()
                   if hasattr(m, "get_delta_weight") and hasattr(m, "base_layer")}
    assert updates.keys() == peft_layers.keys() and updates
    for name, layer in peft_layers.items():
        expected = layer.get_delta_weight("default").double()
        assert torch.allclose(updates[name].delta, expected, rtol=1e-5, atol=1e-7), name
    if kind == "lora_rslora_patterns":
        assert {u.kind: u.rank for u in updates.values()} == {"q_proj": 4, "v_proj": 2}
    for u in updates.values():  # the compact form has ΔW's singular values and right-singular subspace
        sv = torch.linalg.svdvals(u.delta)
        assert torch.allclose(torch.linalg.svdvals(u.compact())[: u.rank], sv[: u.rank], rtol=1e-8)
        if u.a is not None:
            assert similarity(directions(u.compact(), u.rank), directions(u.delta, u.rank))[-1, -1] == \
                pytest.approx(1.0)
            left = torch.linalg.svd(u.delta, full_matrices=False).U[:, : u.rank].T
            assert similarity(u.output_directions(), left)[-1, -1] == pytest.approx(1.0)


def test_similarity_on_numbers_worked_by_hand():
    e = torch.eye(4, dtype=torch.float64)
    ux = e[:2]  # span{e1, e2}
    uy = torch.stack([(e[0] + e[1]) / math.sqrt(2), e[2]])  # (e1+e2)/√2 first, then e3
    phi = similarity(ux, uy)
    # φ(1,1) = (e1·(e1+e2)/√2)² = 1/2; φ(2,1) = (1/2 + 1/2)/1 = 1; φ(1,2) = (1/2 + 0)/1; φ(2,2) = (1/2+1/2+0+0)/2
    assert phi.flatten().tolist() == pytest.approx([0.5, 0.5, 1.0, 0.5])
    assert similarity(e[:3], e[:3]).diagonal().tolist() == pytest.approx([1, 1, 1])
    assert similarity(e[:2], e[2:]).abs().max() == 0


def test_directions_are_the_top_right_singular_vectors():
    a = torch.tensor([[3.0, 0, 0], [0, 0, 1.0]], dtype=torch.float64)  # rows e1 (σ=3) and e3 (σ=1)
    u = directions(a, 2)
    assert u.abs().flatten().tolist() == pytest.approx([1, 0, 0, 0, 0, 1])


def test_spectral_measures_on_numbers_worked_by_hand():
    flat = torch.tensor([2.0, 2.0, 2.0, 2.0], dtype=torch.float64)
    assert effective_rank(flat) == pytest.approx(4) and stable_rank(flat) == pytest.approx(4)
    assert top1_energy(flat) == pytest.approx(0.25)
    one = torch.tensor([5.0, 0.0, 0.0], dtype=torch.float64)
    assert effective_rank(one) == pytest.approx(1) and stable_rank(one) == 1 and top1_energy(one) == 1
    sv = torch.tensor([3.0, 1.0], dtype=torch.float64)  # p = (3/4, 1/4)
    assert effective_rank(sv) == pytest.approx(math.exp(-(0.75 * math.log(0.75) + 0.25 * math.log(0.25))))
    assert stable_rank(sv) == pytest.approx(10 / 9) and top1_energy(sv) == pytest.approx(0.9)


def rank_study(backbone_factory, root):
    """LoRA r=2 and r=4 at seeds 1 and 2 on q_proj: each r=4 adapter's A starts with its seed's r=2
    A (so their top-2 input directions coincide), and B is random."""
    from peft import LoraConfig

    small = {}
    for seed in (1, 2):
        for rank in (2, 4):
            folder = fake_run(root / f"r{rank}-s{seed}", [f"method.r={rank}", f"seed={seed}"],
                              {"seed": seed, "method": "lora", "primary_metric": "exact_match",
                               "test": {"exact_match": 0.5 + rank / 100 + seed / 1000},
                               "params": {"trainable": 100 * rank}})

            def edit(model, rank=rank, seed=seed):
                for name, m in model.named_modules():
                    if hasattr(m, "lora_A"):
                        a = m.lora_A["default"].weight
                        if rank == 2:
                            small[seed, name] = a.detach().clone()
                        else:
                            with torch.no_grad():
                                a[:2] = small[seed, name] * 10  # the larger directions, in the same span

            saved_adapter(backbone_factory(), LoraConfig(r=rank, lora_alpha=rank, target_modules=["q_proj"],
                                                         init_lora_weights=False), folder, seed=seed, edit=edit)
    return root


def test_report_writes_spectra_and_the_subspace_analysis(tiny_backbone_factory, tmp_path):
    from peftlab.config.commands import ReportSchema
    from peftlab.reporting import write_report

    runs = rank_study(tiny_backbone_factory, tmp_path / "sweep")
    report = write_report([runs], tmp_path / "report", ReportSchema(spectra=True, subspace=[2, 4]))
    out = tmp_path / "report"
    for name in ("spectra.md", "spectra.csv", "spectra.png", "subspace.md", "subspace.csv", "subspace.png"):
        assert name in report["files"] and (out / name).stat().st_size > 0
    rows = list(csv.DictReader(io.StringIO((out / "subspace.csv").read_text())))
    same_seed_a = [r for r in rows if r["pair"] == "r=2 vs r=4, same seed" and r["weight"] == "A"]
    assert len(same_seed_a) == 2 * 2  # 2 layers x 2 seeds
    # the r=2 subspace lies inside the r=4 one: φ(2, 4) = 1; the top directions (10x larger) nearly agree
    assert all(float(r["phi_rank_x_rank_y"]) == pytest.approx(1.0, abs=1e-6) for r in same_seed_a)
    assert all(float(r["phi_1_1"]) > 0.999 for r in same_seed_a)
    seeds = [r for r in rows if r["pair"] == "r=4, seed vs seed" and r["weight"] == "A"]
    assert len(seeds) == 2 and all(float(r["phi_1_1"]) < 0.9 for r in seeds)  # independent random factors
    md = (out / "results.md").read_text()
    assert "## Subspace similarity (r=2 and r=4)" in md and "| random subspaces, inputs (expected) | | q_proj |" in md
    assert "## Spectra of the weight updates" in md
    spectra = list(csv.DictReader(io.StringIO((out / "spectra.csv").read_text())))
    assert len(spectra) == 4 * 2  # 4 runs x 2 layers
    assert {r["rank"] for r in spectra} == {"2", "4"}
    assert all(float(r["effective_rank"]) <= int(r["rank"]) + 1e-9 for r in spectra)


@pytest.mark.parametrize("option, message", [
    ({"subspace": [2, 8]}, "subspace: no finished LoRA run with r=8 among the inputs (ranks found: 2, 4)"),
    ({"subspace": [2, 2]}, "subspace must be two different LoRA ranks > 0, such as [8,64], got [2, 2]"),
    ({"subspace": [2]}, "subspace must be two different LoRA ranks > 0, such as [8,64], got [2]"),
])
def test_bad_subspace_requests_are_named(option, message, tiny_backbone_factory, tmp_path):
    from peftlab.config.commands import ReportSchema
    from peftlab.reporting import write_report

    runs = rank_study(tiny_backbone_factory, tmp_path / "sweep")
    with pytest.raises(ConfigError) as err:
        write_report([runs], tmp_path / "report", ReportSchema(spectra=True, **option))
    assert str(err.value) == message
    assert not (tmp_path / "report").exists()  # nothing written, not even the spectra that were fine


def test_ranks_that_share_no_seed_and_have_one_seed_each_are_named(tiny_backbone_factory, tmp_path):
    from peftlab.config.commands import ReportSchema
    from peftlab.reporting import write_report

    runs = rank_study(tiny_backbone_factory, tmp_path / "sweep")
    for gone in ("r2-s2", "r4-s1"):
        shutil.rmtree(runs / gone)
    with pytest.raises(ConfigError) as err:
        write_report([runs], tmp_path / "report", ReportSchema(subspace=[2, 4]))
    assert str(err.value) == ("subspace: nothing to compare (no seed ran both ranks and no rank ran two seeds): "
                              "r=2: seeds 1; r=4: seeds 2")


def test_spectra_leave_out_runs_without_factors_and_say_so(tiny_backbone_factory, tmp_path):
    from peft import IA3Config

    from peftlab.config.commands import ReportSchema
    from peftlab.reporting import write_report

    runs = rank_study(tiny_backbone_factory, tmp_path / "sweep")
    ia3 = fake_run(runs / "ia3", ["method=ia3"], {"seed": 1, "method": "ia3", "primary_metric": "exact_match",
                                                  "test": {"exact_match": 0.5}})
    saved_adapter(tiny_backbone_factory(), IA3Config(target_modules=["q_proj"], feedforward_modules=[]), ia3)
    write_report([runs], tmp_path / "report", ReportSchema(spectra=True, plots=False))
    md = (tmp_path / "report" / "spectra.md").read_text()
    assert f"Left out: {ia3} (a IA3 adapter)." in md and "| method.r=2 |" in md

    # a report replaced without spectra keeps none of the old spectra files
    write_report([runs], tmp_path / "report", ReportSchema(plots=False, overwrite=True))
    assert not (tmp_path / "report" / "spectra.md").exists() and (tmp_path / "report" / "report.json").exists()


def test_an_adapter_whose_update_is_not_a_product_of_factors_is_refused(tiny_backbone_factory, tmp_path):
    from peft import IA3Config

    saved_adapter(tiny_backbone_factory(), IA3Config(target_modules=["q_proj"], feedforward_modules=[]), tmp_path)
    with pytest.raises(ConfigError) as err:
        module_updates(tmp_path)
    read = ", ".join(kind.lower() for kind in ANALYSED)
    assert str(err.value) == (f"{tmp_path}: a IA3 adapter, whose weight update is not a product of saved factors "
                              f"(the analysis reads {read} adapters)")


def test_a_damaged_adapter_file_is_named(tiny_backbone_factory, tmp_path):
    from peft import LoraConfig

    saved_adapter(tiny_backbone_factory(), LoraConfig(r=2, target_modules=["q_proj"]), tmp_path)
    weights = tmp_path / "adapter" / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(ConfigError) as err:
        module_updates(tmp_path)
    assert str(err.value).startswith(f"{weights}: not readable as safetensors (")
    config_file = tmp_path / "adapter" / "adapter_config.json"
    saved_adapter(tiny_backbone_factory(), LoraConfig(r=2, target_modules=["q_proj"]), tmp_path / "again")
    good = json.loads((tmp_path / "again" / "adapter" / "adapter_config.json").read_text())
    for change, why in (({"lora_alpha": "x"}, "TypeError: alpha must be a number, got 'x'"),
                        ({"alpha_pattern": {"(a+)+$": 3}}, "ValueError: alpha_pattern key '(a+)+$' is a regular "
                                                           "expression; the analysis matches module names")):
        (tmp_path / "again" / "adapter" / "adapter_config.json").write_text(json.dumps({**good, **change}))
        with pytest.raises(ConfigError) as err:
            module_updates(tmp_path / "again")
        assert str(err.value) == (f"{tmp_path / 'again' / 'adapter' / 'adapter_config.json'}: cannot scale module "
                                  f"model.layers.0.self_attn.q_proj ({why})")
    config_file.write_text("[1, 2]")
    with pytest.raises(ConfigError) as err:
        module_updates(tmp_path)
    assert str(err.value) == f"{config_file}: not an adapter config (a list)"
