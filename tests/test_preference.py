"""Preference training (DPO, IPO) on the tiny model: the reference in each mode, every method that can
switch its adapter off, the shipped preference set, a run from the command line, and resuming.
The refusals and bad preference data are in the bad-input matrix (test_bad_inputs.py)."""

from __future__ import annotations

import json
import math

import pytest
import torch

from conftest import compose, resume_ends_equal, run_cli

PAIRS = ["model=tiny_llama", "data=date_prefs", "data.max_eval_examples=8"]


def setup(overrides: list[str], cache_dir, init_adapter=None, perturb=0.0):
    """(task, policy model, a val batch) as a run sets them up before its first step."""
    from peftlab.config import validate
    from peftlab.config.commands import TrainSchema
    from peftlab.data.datamodule import TaskDataModule
    from peftlab.methods import BuildContext, apply_method
    from peftlab.models import load_backbone
    from peftlab.tasks import make_task

    extra = [f"init_adapter={init_adapter}"] if init_adapter else []
    conf = validate(compose([*PAIRS, *overrides, *extra]), TrainSchema)
    task = make_task(conf.data, run=conf)
    assert task.check(conf) == []
    backbone = load_backbone(conf.model, cache_dir, task)
    data = TaskDataModule(task, backbone.tokenizer)
    data.setup()
    task.before_wrapping(backbone.model)
    ctx = BuildContext(task, backbone.model, backbone.tokenizer, backbone.path)
    model = apply_method(backbone.model, conf.method, ctx, conf.init_adapter)
    if perturb:
        _move(model, perturb)
    task.before_training(model, data)
    return task, model.eval(), next(iter(data.val_dataloader()))


def _move(model, scale: float) -> None:
    """Change every trainable parameter, as training would."""
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(scale * torch.randn(p.shape, generator=g))


@pytest.fixture(scope="module")
def sft_adapter(tmp_path_factory, cache_dir):
    """A LoRA adapter whose weights are far from a fresh one's (what SFT leaves)."""
    from peftlab.config import validate
    from peftlab.config.commands import TrainSchema
    from peftlab.methods import BuildContext, apply_method
    from peftlab.models import load_backbone
    from peftlab.tasks import make_task

    conf = validate(compose(PAIRS), TrainSchema)
    task = make_task(conf.data, run=conf)
    backbone = load_backbone(conf.model, cache_dir, task)
    model = apply_method(backbone.model, conf.method, BuildContext(task, backbone.model, backbone.tokenizer,
                                                                   backbone.path))
    _move(model, 0.5)
    path = tmp_path_factory.mktemp("sft") / "adapter"
    model.save_pretrained(path)
    return path


MODES = [("adapter_off", False), ("frozen_adapter", True), ("precomputed", False), ("precomputed", True),
         ("separate", False)]


# every reference mode with DPO's loss; IPO's in one mode (in every mode in CI's integration run)
STEP_0 = [(m, s, loss) for loss in ("sigmoid", "ipo") for m, s in MODES]


@pytest.mark.parametrize("mode,after_sft,loss", [
    c if c[2] == "sigmoid" or c[0] == "adapter_off" else pytest.param(*c, marks=pytest.mark.integration)
    for c in STEP_0], ids=[f"{m}{'-after-sft' if s else ''}-{loss}" for m, s, loss in STEP_0])
def test_at_step_0_the_policy_is_the_reference(mode, after_sft, loss, sft_adapter, cache_dir):
    """Before the first step the policy equals its reference in every mode: every reward is 0 and
    the loss is log 2 (DPO), or (1 / (2 beta))^2 (IPO)."""
    task, model, batch = setup(["preference=dpo", f"preference.reference={mode}", f"preference.loss={loss}"],
                               cache_dir, init_adapter=sft_adapter if after_sft else None)
    assert ("ref_logps" in batch) == (mode == "precomputed")
    with torch.no_grad():
        pairs = task._pairs(model, batch)
    n = len(pairs["losses"])
    zeros = torch.zeros(n, dtype=torch.float64)
    torch.testing.assert_close(pairs["chosen_reward"], zeros, atol=1e-5, rtol=0)
    torch.testing.assert_close(pairs["rejected_reward"], zeros, atol=1e-5, rtol=0)
    at_start = math.log(2) if loss == "sigmoid" else (1 / (2 * task.settings.beta)) ** 2
    torch.testing.assert_close(pairs["losses"], torch.full((n,), at_start, dtype=torch.float64), atol=1e-5, rtol=0)
    assert pairs["chosen_logp"].max() < 0  # real log-probabilities, not zeros


def test_after_sft_the_reference_is_the_sft_model_not_the_base(sft_adapter, cache_dir):
    """The trap: switching a trained adapter off compares the policy with the base. With the SFT
    adapter frozen as the reference the rewards start at 0; against the base they do not."""
    task, model, batch = setup(["preference=dpo", "preference.reference=frozen_adapter"], cache_dir,
                               init_adapter=sft_adapter)
    with torch.no_grad():
        frozen = task._reference_logps(model, batch)
        with model.disable_adapter():
            base = task._logps(model, batch)[0]
    assert (frozen - base).abs().max() > 1e-2


def _adapter_methods():
    import peftlab.methods  # noqa: F401  (registers the methods)
    from peftlab.methods.base import METHODS

    return [n for n, s in METHODS.items() if s.capabilities.adapter and s.capabilities.starts_as_base
            and "preference" in (s.capabilities.task_types or ("preference",))]


# one method of each kind in the fast suite; every one in CI's integration run
FAST_SWITCH = {"lora", "ia3", "vera", "trainable_tokens"}


@pytest.mark.parametrize("method", [m if m in FAST_SWITCH else pytest.param(m, marks=pytest.mark.integration)
                                    for m in _adapter_methods()])
def test_switching_the_adapter_off_gives_the_base(method, cache_dir):
    """For every method whose fresh adapter leaves the model unchanged: after the adapter's weights
    moved, the adapter_off reference still gives the untouched base's log-probabilities, and the
    policy's differ from them."""
    from peftlab.config import validate
    from peftlab.config.commands import TrainSchema
    from peftlab.models import load_backbone
    from peftlab.tasks import make_task

    conf = validate(compose(PAIRS), TrainSchema)
    base_task = make_task(conf.data, run=conf)
    base = load_backbone(conf.model, cache_dir, base_task).model.eval()
    task, model, batch = setup([f"method={method}"], cache_dir, perturb=0.2)
    with torch.no_grad():
        expected = task._logps(base, batch)[0]
        reference = task._reference_logps(model, batch)
        policy = task._logps(model, batch)[0]
    torch.testing.assert_close(reference, expected, atol=1e-6, rtol=1e-6)
    assert (policy - expected).abs().max() > 1e-3


def test_methods_with_virtual_tokens_are_not_their_base(cache_dir):
    """Why prefix, prompt and P-tuning refuse adapter_off: a fresh adapter already changes the
    model, so only the precomputed start (or a frozen starting adapter) is its reference."""
    task, model, batch = setup(["method=prompt", "preference=dpo", "preference.reference=precomputed"], cache_dir)
    with torch.no_grad():
        with model.disable_adapter():
            base = task._logps(model, batch)[0]
        start = task._logps(model, batch)[0]
    assert (start - base).abs().max() > 1e-3
    torch.testing.assert_close(batch["ref_logps"], start, atol=1e-5, rtol=0)


def test_the_loss_is_dpo_from_summed_answer_log_probabilities(cache_dir):
    """The loss by hand: sum the answer tokens' log-probabilities of the full logits, chosen rows
    first, and apply -log sigmoid(beta * margin) with label smoothing and the SFT term."""
    import torch.nn.functional as F

    task, model, batch = setup(["preference=dpo", "preference.label_smoothing=0.1", "preference.sft_weight=0.5",
                                "preference.reference=separate"], cache_dir, perturb=0.1)
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1].double()
        ref_logits = task.reference_model(input_ids=batch["input_ids"],
                                          attention_mask=batch["attention_mask"]).logits[:, :-1].double()
        pairs = task._pairs(model, batch)
    labels = batch["labels"][:, 1:]
    mask = labels != -100

    def summed(lg):
        lp = torch.log_softmax(lg, -1).gather(-1, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1)
        return (lp * mask).sum(-1)

    pol, ref = summed(logits), summed(ref_logits)
    b = len(pol) // 2
    h = (pol[:b] - ref[:b]) - (pol[b:] - ref[b:])
    beta = 0.1
    expected = -0.9 * F.logsigmoid(beta * h) - 0.1 * F.logsigmoid(-beta * h) + 0.5 * (-pol[:b] / mask[:b].sum(-1))
    torch.testing.assert_close(pairs["losses"], expected, atol=1e-4, rtol=1e-5)


FOUR = {"swapped", "two_digit_year", "separator", "off_by_one"}


@pytest.mark.parametrize("name,mistakes", [("date_prefs", FOUR),
                                           ("date_rewards", FOUR | {"century", "month", "day", "unpadded"})])
def test_the_shipped_preference_sets(name, mistakes):
    """date_prefs (and date_rewards, for reward models): train/val/test pairs of the date task; chosen
    is the right ISO date, rejected a plausible mistake of the kinds named, never equal to it."""
    import datetime as dt

    from peftlab.data.sources import BUILTIN_DIR

    folder = BUILTIN_DIR / name
    rows = {s: [json.loads(line) for line in (folder / f"{s}.jsonl").read_text().splitlines()]
            for s in ("train", "val", "test")}
    assert {s: len(r) for s, r in rows.items()} == {"train": 2000, "val": 64, "test": 128}
    for split in rows.values():
        for r in split:
            assert r["chosen"] != r["rejected"] and len(r["chosen"]) == 10 and r["chosen"][4] == "-"
            if r["mistake"] == "century":
                assert abs(int(r["rejected"][:4]) - int(r["chosen"][:4])) == 100
            if r["mistake"] == "unpadded":
                assert dt.date.fromisoformat(r["chosen"]) == dt.date(*map(int, r["rejected"].split("-")))
    assert {r["mistake"] for r in rows["train"]} == mistakes
    prompts = {s: {r["prompt"] for r in split} for s, split in rows.items()}
    assert not prompts["test"] & prompts["train"]


def test_the_shipped_unpaired_set():
    """date_feedback: each date prompt once, its right answer (label true) or a mistake (false)."""
    from peftlab.data.sources import BUILTIN_DIR

    rows = [json.loads(line) for line in (BUILTIN_DIR / "date_feedback" / "train.jsonl").read_text().splitlines()]
    dates = {json.loads(line)["prompt"]: json.loads(line)["response"]
             for line in (BUILTIN_DIR / "dates" / "train.jsonl").read_text().splitlines()}
    assert len(rows) == len({r["prompt"] for r in rows}) == 2000
    assert all((r["response"] == dates[r["prompt"]]) == r["label"] for r in rows)
    assert 0.4 < sum(r["label"] for r in rows) / len(rows) < 0.6


@pytest.fixture(scope="module")
def sft_then_dpo(tmp_path_factory, cache_dir):
    root = tmp_path_factory.mktemp("dpo")
    sft = run_cli("peftlab-train", "debug=tiny", "trainer.max_steps=4", "merge_after=false",
                  f"hydra.run.dir={root / 'sft'}")
    assert sft.returncode == 0, sft.stderr[-3000:]
    dpo = run_cli("peftlab-train", "debug=tiny", "data=date_prefs", "preference=dpo",
                  "preference.reference=frozen_adapter", "trainer.max_steps=12", "optim.lr=1e-2",
                  "trainer.limit_test_batches=null", "data.max_eval_examples=32",
                  f"init_adapter={root / 'sft' / 'adapter'}", f"hydra.run.dir={root / 'dpo'}")
    assert dpo.returncode == 0, dpo.stderr[-3000:]
    return root


# SFT then DPO as console scripts (init_adapter), their report and resume: CI's integration run. The fast suite
# trains DPO in process (test_precision.py), refuses bad init_adapters (the matrix) and resumes SFT bitwise
# (test_reliability.py)
@pytest.mark.integration
def test_sft_then_dpo_from_the_command_line(sft_then_dpo):
    root = sft_then_dpo
    m = json.loads((root / "dpo" / "metrics.json").read_text())
    assert (m["task_type"], m["primary_metric"], m["objective"]) == ("preference", "reward_accuracy",
                                                                     "val.reward_accuracy")
    assert m["init_adapter"] == str(root / "sft" / "adapter")
    assert m["preference"]["reference"] == "frozen_adapter" and m["preference"]["beta"] == 0.1
    assert set(m["test"]) == {"loss", "reward_accuracy", "reward_margin", "chosen_reward", "rejected_reward",
                              "chosen_logp", "rejected_logp", "exact_match"}
    # zero_shot is the starting (SFT) adapter, which is the reference: log 2 and no reward
    assert m["zero_shot"]["loss"] == pytest.approx(math.log(2), abs=1e-5)
    assert m["zero_shot"]["reward_margin"] == pytest.approx(0, abs=1e-5)
    assert m["test"]["loss"] < m["zero_shot"]["loss"] and m["test"]["reward_margin"] > 0
    # the adapter saved is the policy alone; the frozen reference stays out of it
    assert not (root / "dpo" / "adapter" / "reference").exists()
    report = json.loads((root / "dpo" / "merge_report.json").read_text())
    assert report["passed"] and set(report["metrics"]["merged"]) == {"exact_match", "chosen_logp", "rejected_logp"}
    assert report["metrics"]["merged"]["chosen_logp"] == pytest.approx(m["test"]["chosen_logp"], abs=1e-3)


@pytest.mark.integration
def test_the_report_reads_a_preference_run(sft_then_dpo, tmp_path):
    proc = run_cli("peftlab-report", str(sft_then_dpo / "dpo"), f"out_dir={tmp_path / 'report'}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    table = (tmp_path / "report" / "results.md").read_text()
    assert "reward_accuracy" in table


@pytest.mark.integration
@pytest.mark.parametrize("mode", ["frozen_adapter", "precomputed"])
def test_a_resumed_preference_run_ends_bitwise_equal(mode, sft_then_dpo, tmp_path, cache_dir):
    """Continuing from a mid-run checkpoint gives the uninterrupted run's adapter: the frozen
    reference is loaded again (it is in no checkpoint), the precomputed one computed again."""
    common = ["debug=tiny", "data=date_prefs", "preference=dpo", f"preference.reference={mode}",
              "trainer.max_steps=8", "callbacks.checkpoint.every_n_train_steps=4", "callbacks.checkpoint.save_top_k=-1",
              "optim.lr=1e-2",
              "merge_after=false", "zero_shot=false", f"init_adapter={sft_then_dpo / 'sft' / 'adapter'}"]
    full, again = resume_ends_equal(common, tmp_path, step=4)
    a, b = (json.loads((d / "metrics.json").read_text()) for d in (full, again))
    assert a["test"] == b["test"]


def _answer_logps(model, batch):
    """Summed answer log-probabilities and answer lengths from the full logits, by hand."""
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1].double()
    labels = batch["labels"][:, 1:]
    mask = labels != -100
    lp = torch.log_softmax(logits, -1).gather(-1, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    return (lp * mask).sum(-1), mask.sum(-1).double()


@pytest.mark.parametrize("loss", ["simpo", "orpo"])
def test_the_reference_free_losses_by_hand_from_full_logits(loss, cache_dir):
    """SimPO: -log σ(β (mean_c - mean_r) - γ); ORPO: the chosen NLL per token + λ (-log σ(log odds_c -
    log odds_r)), odds of the mean per-token probability. No reference is computed or held."""
    import torch.nn.functional as F

    task, model, batch = setup([f"preference={loss}"], cache_dir, perturb=0.1)
    assert task.settings.reference == "none" and task.reference_model is None and task.reference_bytes == 0
    with torch.no_grad():
        pairs = task._pairs(model, batch)
    summed, lengths = _answer_logps(model, batch)
    mean = summed / lengths
    b = len(mean) // 2
    if loss == "simpo":
        beta, gamma = 2.0, 0.5
        expected = -F.logsigmoid(beta * (mean[:b] - mean[b:]) - gamma)
    else:
        beta = 0.1
        p = mean.exp()
        odds = torch.log(p / (1 - p))
        expected = -mean[:b] - beta * F.logsigmoid(odds[:b] - odds[b:])
    torch.testing.assert_close(pairs["losses"], expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(pairs["chosen_reward"], beta * mean[:b], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(pairs["rejected_reward"], beta * mean[b:], atol=1e-5, rtol=1e-5)


def test_kto_by_hand_from_full_logits(cache_dir):
    """KTO: the chosen answer desirable, the rejected undesirable, each against z, the batch's mean
    log-ratio of prompts paired with the next example's chosen answer (at least 0, no gradient)."""
    task, model, batch = setup(["preference=kto"], cache_dir, perturb=0.1)
    assert "kl" in batch
    with torch.no_grad():
        pairs = task._pairs(model, batch)
        policy, _ = _answer_logps(model, batch)
        kl_policy, _ = _answer_logps(model, batch["kl"])
        with model.disable_adapter():
            reference, _ = _answer_logps(model, batch)
            kl_reference, _ = _answer_logps(model, batch["kl"])
    b = len(policy) // 2
    ratio = policy - reference
    z = (kl_policy - kl_reference).mean().clamp(min=0)
    assert float((kl_policy - kl_reference).mean()) != 0
    beta = 0.1
    expected = (1 - torch.sigmoid(beta * (ratio[:b] - z))) + (1 - torch.sigmoid(beta * (z - ratio[b:])))
    torch.testing.assert_close(pairs["losses"], expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(pairs["chosen_reward"], beta * ratio[:b], atol=1e-5, rtol=1e-5)
    # the mismatched rows: each prompt with the next example's answer
    first = batch["kl"]["input_ids"][0][batch["kl"]["labels"][0] != -100]
    second = batch["input_ids"][1][batch["labels"][1] != -100]
    assert first.tolist() == second.tolist()


@pytest.mark.parametrize("overrides,message", [
    (["preference=simpo", "preference.reference=adapter_off"],
     "preference.reference must be none for preference.loss=simpo, which uses no reference, got 'adapter_off'"),
    (["preference=dpo", "preference.reference=none"],
     "preference.reference cannot be none for preference.loss=sigmoid, which compares the policy with a reference"),
    (["preference=dpo", "preference.gamma=0.5"], "preference.gamma does not apply to preference.loss=sigmoid, got 0.5"),
    (["preference=simpo", "preference.desirable_weight=2"],
     "preference.desirable_weight does not apply to preference.loss=simpo, got 2.0"),
    (["preference=kto", "preference.undesirable_weight=-1"],
     "preference.undesirable_weight must be a finite number >= 0 for preference.loss=kto, got -1.0"),
    (["preference=orpo", "preference.sft_weight=1"], "preference.sft_weight does not apply to preference.loss=orpo"),
    (["preference=simpo", "preference.gamma=null"],
     "preference.gamma must be a finite number >= 0 for preference.loss=simpo"),
    (["preference=dpo", "preference.loss=kpo"], "preference.loss"),
])
def test_preference_settings_that_do_not_fit_their_loss_are_refused_with_one_line(overrides, message):
    from peftlab.config import validate
    from peftlab.errors import ConfigError

    with pytest.raises(ConfigError) as err:
        validate(compose([*PAIRS, *overrides]))
    assert message in str(err.value) and "\n" not in str(err.value), str(err.value)


def test_unpaired_kto_by_hand_from_full_logits(cache_dir):
    """Single answers labelled good or bad: each against z, the batch's mean log-ratio of prompts with
    the next example's answer; the desirable ones pulled above it, the undesirable pushed below."""
    task, model, batch = setup(["data=date_feedback"], cache_dir, perturb=0.1)
    assert task.settings.loss == "kto" and task.name == "unpaired"
    good = batch["desirable"]
    assert good.any() and (~good).any()
    with torch.no_grad():
        out = task._answers(model, batch)
        policy, _ = _answer_logps(model, batch)
        kl_policy, _ = _answer_logps(model, batch["kl"])
        with model.disable_adapter():
            reference, _ = _answer_logps(model, batch)
            kl_reference, _ = _answer_logps(model, batch["kl"])
    ratio = policy - reference
    z = (kl_policy - kl_reference).mean().clamp(min=0)
    beta = 0.1
    expected = torch.where(good, 1 - torch.sigmoid(beta * (ratio - z)), 1 - torch.sigmoid(beta * (z - ratio)))
    torch.testing.assert_close(out["losses"], expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out["reward"], beta * ratio, atol=1e-5, rtol=1e-5)


@pytest.mark.integration  # the console script end to end (the API run is fast): CI's integration run
def test_an_unpaired_kto_run_from_the_command_line(tmp_path):
    proc = run_cli("peftlab-train", "debug=tiny", "data=date_feedback", "trainer.max_steps=8", "optim.lr=1e-2",
                   "forgetting=null", f"hydra.run.dir={tmp_path / 'kto'}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    m = json.loads((tmp_path / "kto" / "metrics.json").read_text())
    assert (m["task_type"], m["primary_metric"], m["preference"]["loss"]) == ("unpaired", "reward_margin", "kto")
    assert set(m["test"]) == {"loss", "reward_margin", "desirable_reward", "undesirable_reward", "kl",
                              "desirable_logp", "exact_match"}
    # from a fresh adapter the policy is its reference: every reward 0, every loss 1 - sigmoid(0)
    assert m["zero_shot"]["loss"] == pytest.approx(0.5, abs=1e-6) and m["zero_shot"]["reward_margin"] == 0
    assert m["test"]["reward_margin"] > 0 and m["test"]["loss"] < 0.5
    rows = [json.loads(line) for line in (tmp_path / "kto" / "test_predictions.jsonl").read_text().splitlines()]
    assert {r["desirable"] for r in rows} == {True, False}
    assert all(r["correct"] is None for r in rows if not r["desirable"])
    assert json.loads((tmp_path / "kto" / "merge_report.json").read_text())["passed"]
