"""Reward models and online RL (GRPO, RLOO) on the tiny model: the Bradley-Terry loss and the GRPO
loss against computations by hand from full logits, a reward model that reloads with plain
transformers + peft, its scores on the policy's own base equal to a separate model's, learning, the
run's records, and an exact resume. The refusals are in the bad-input matrix (test_bad_inputs.py)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch

from conftest import compose, resume_ends_equal, run_cli

REWARD = ["debug=tiny", "data=date_prefs", "data.task_type=reward", "data.max_eval_examples=16"]
RL = ["debug=tiny", "data=date_prompts", "rl=grpo"]


def setup(overrides: list[str], cache_dir):
    """(the training objective, model, data) as a run sets them up before its first step."""
    from peftlab.config import user_plugins, validate
    from peftlab.config.commands import TrainSchema
    from peftlab.config.user_plugins import load as load_plugins
    from peftlab.data.datamodule import TaskDataModule
    from peftlab.methods import BuildContext, apply_method
    from peftlab.models import load_backbone
    from peftlab.objectives import make_objective
    from peftlab.tasks import make_task

    before = dict(user_plugins._LOADED)  # what this process's later runs record as loaded: left as it was
    load_plugins(overrides)  # plugins=[...]: as the command line loads them, before the config is checked
    conf = validate(compose(overrides), TrainSchema)
    user_plugins._LOADED.clear()
    user_plugins._LOADED.update(before)
    task = make_task(conf.data, run=conf)
    objective = make_objective(task, conf)
    assert task.check(conf) == [] and objective.check(conf) == []
    backbone = load_backbone(conf.model, cache_dir, task)
    data = TaskDataModule(task, backbone.tokenizer)
    data.setup()
    task.before_wrapping(backbone.model)
    objective.before_wrapping(backbone.model)
    model = apply_method(backbone.model, conf.method, BuildContext(task, backbone.model, backbone.tokenizer,
                                                                   backbone.path), conf.init_adapter)
    task.before_training(model, data)
    objective.before_training(model, data)
    return objective, model, data


def _move(model, scale: float) -> None:
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(scale * torch.randn(p.shape, generator=g))


# ----------------------------------------------------------------------------------- reward models
def test_the_reward_loss_is_bradley_terry_from_the_model_s_own_scores(cache_dir):
    objective, model, data = setup(REWARD, cache_dir)
    _move(model, 0.3)
    model.eval()
    batch = next(iter(data.val_dataloader()))
    batch["margin"] = torch.linspace(0, 1, len(batch["margin"]))
    total, count = objective.loss(model, batch)
    with torch.no_grad():
        scores = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, 0].double()
        b = len(scores) // 2
        expected = -torch.nn.functional.logsigmoid(scores[:b] - scores[b:] - batch["margin"].double()).sum()
    assert int(count) == b and float(total) == pytest.approx(float(expected), rel=1e-5)


@pytest.fixture(scope="module")
def reward_run(tmp_path_factory, cache_dir):
    root = tmp_path_factory.mktemp("reward")
    proc = run_cli("peftlab-train", *REWARD, "trainer.max_steps=40", "optim.lr=1e-2", "trainer.limit_test_batches=null",
                   "forgetting=null", f"hydra.run.dir={root / 'rm'}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return root / "rm"


@pytest.mark.integration  # a whole run through the command line; the fast suite checks the losses by hand
def test_a_reward_model_trains_records_and_merges(reward_run):
    m = json.loads((reward_run / "metrics.json").read_text())
    assert (m["task_type"], m["primary_metric"]) == ("reward", "pair_accuracy")
    assert set(m["test"]) == {"loss", "pair_accuracy", "margin", "chosen_score", "rejected_score"}
    assert m["test"]["loss"] < m["zero_shot"]["loss"] and m["test"]["margin"] > m["zero_shot"]["margin"]
    assert m["test"]["pair_accuracy"] > m["zero_shot"]["pair_accuracy"]
    report = json.loads((reward_run / "merge_report.json").read_text())
    assert report["passed"]


@pytest.mark.integration  # a whole run through the command line; the fast suite checks the losses by hand
def test_a_reward_adapter_reloads_with_plain_transformers_and_peft(reward_run):
    """The saved folder (adapter and score head) gives the scores the run recorded."""
    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    config = json.loads((reward_run / "adapter" / "adapter_config.json").read_text())
    base = AutoModelForSequenceClassification.from_pretrained(config["base_model_name_or_path"], num_labels=1)
    tokenizer = AutoTokenizer.from_pretrained(reward_run / "adapter")
    base.config.pad_token_id = tokenizer.pad_token_id
    model = PeftModel.from_pretrained(base, reward_run / "adapter").eval()
    from peftlab.config import validate
    from peftlab.data.datamodule import TaskDataModule
    from peftlab.tasks import make_task

    conf = validate(compose(REWARD))
    task = make_task(conf.data, run=conf)
    data = TaskDataModule(task, tokenizer)
    data.setup()
    batch = task.collator(tokenizer, evaluation=True)(data.splits["test"][:8])  # the first pairs, in the split's order
    with torch.no_grad():
        scores = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, 0]
    recorded = [json.loads(line) for line in (reward_run / "test_predictions.jsonl").read_text().splitlines()]
    b = len(scores) // 2
    assert [r["chosen_score"] for r in recorded[:b]] == pytest.approx(scores[:b].tolist(), abs=2e-4)
    assert [r["rejected_score"] for r in recorded[:b]] == pytest.approx(scores[b:].tolist(), abs=2e-4)


def test_the_reward_model_on_the_policy_s_base_scores_as_a_separate_model(tmp_path, cache_dir):
    """One-base mode: the reward adapter beside the policy's, and the head on the last real token,
    give the separate model's (plain transformers + peft) scores; the policy is left active."""
    from test_reward_alignment import make_reward_run

    from peftlab.tasks.reward_scorer import RewardScorer

    reward_run = make_reward_run(tmp_path / "rm", cache_dir)  # its random head: scores that differ

    rl, policy, data = setup(RL, cache_dir)
    _move(policy, 0.3)
    prompts, completions = ["Rewrite 3 May 2001", "Rewrite 1999/12/31"] * 2, ["2001-05-03", "1999-12-31", "x", ""]
    one = RewardScorer(str(reward_run / "adapter"), policy, data.tokenizer, rl.task.data, separate=False)
    two = RewardScorer(str(reward_run / "adapter"), policy, data.tokenizer, rl.task.data, separate=True)
    assert policy.active_adapter == "default" and set(policy.peft_config) == {"default", "reward"}
    a, b = one.score(policy, prompts, completions), two.score(policy, prompts, completions)
    assert torch.allclose(a, b, atol=1e-5), (a, b)
    assert a.std() > 0
    # one base: the reward model adds its adapter and head, not a second base
    assert one.bytes < 0.5 * two.bytes


# ----------------------------------------------------------------------------------------- GRPO, RLOO
def test_the_grpo_loss_by_hand_from_full_logits(cache_dir):
    """The step's loss: per completion token -A + beta * k3(KL), summed, with the completions the
    step sampled, the rewards of their lengths, the group-normalised advantages and the reference
    (the adapter off) all computed again here from the full logits."""
    from peftlab.tasks.rewards import length_penalty

    rl, model, data = setup([*RL, "rl.beta=0.5", "rl.rewards={length_penalty: 1.0}", "rl.num_generations=3"],
                              cache_dir)
    _move(model, 0.3)
    model.eval()
    batch = next(iter(data.train_dataloader()))
    G = 3
    torch.manual_seed(7)
    total, count = rl.loss(model, batch)
    prompts = batch["gen_input_ids"].repeat_interleave(G, 0)
    prompt_mask = batch["gen_attention_mask"].repeat_interleave(G, 0)
    completion, done = rl.rollout.completion, rl.rollout.done  # what the step sampled (the test below: how)
    assert torch.equal(rl.rollout.prompts, prompts)
    lengths = done.sum(1).tolist()
    rewards = torch.tensor(length_penalty(prompts=[""] * len(lengths), completions=[""] * len(lengths),
                                          completion_lengths=lengths, max_new_tokens=rl.settings.max_new_tokens),
                           dtype=torch.float64).view(-1, G)
    adv = ((rewards - rewards.mean(1, keepdim=True)) / (rewards.std(1, keepdim=True) + 1e-4)).view(-1)
    ids = torch.cat([prompts, completion], 1)
    mask = torch.cat([prompt_mask, done.long()], 1)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)

    def token_logps(m):
        with torch.no_grad():
            logits = m(input_ids=ids, attention_mask=mask, position_ids=positions).logits.double()
        w = prompts.shape[1]
        lp = torch.log_softmax(logits[:, w - 1:-1], -1).gather(-1, completion.unsqueeze(-1)).squeeze(-1)
        return lp

    policy = token_logps(model)
    with model.disable_adapter():
        reference = token_logps(model)
    d = reference - policy
    per_token = -adv[:, None] + 0.5 * (torch.exp(d) - d - 1)
    expected = (per_token * done).sum()
    assert int(count) == int(done.sum())
    assert float(total) == pytest.approx(float(expected), rel=1e-4, abs=1e-4)
    assert rl.step_logs()["kl"] > 0 and rl.step_logs()["clip_fraction"] == 0
    assert rl.step_logs()["completion_length"] == pytest.approx(sum(lengths) / len(lengths))


@pytest.mark.parametrize("model", ["tiny_llama", "tiny_gemma2",  # gemma2: a sliding-window cache
                                   *[pytest.param(m, marks=pytest.mark.integration)
                                     for m in ("tiny_gpt2", "tiny_qwen2")]])
def test_a_group_samples_from_its_prompt_read_once_as_from_the_prompt_read_whole(model, cache_dir):
    """Sampling reads each prompt once and shares its keys and values with the group: the next-token
    logits along a completion equal those of the whole sequence read in one forward (left padding
    included), and the tokens drawn with a seed equal generate's from the prompts repeated."""
    from transformers import GenerationConfig

    from peftlab.objectives.rl_rollout import sample, shared_prompts, sharing_holds

    rl, policy, data = setup([*RL, f"model={model}", "rl.num_generations=3"], cache_dir)
    _move(policy, 0.3)
    policy.eval()
    by_length = {len(e["prompt_ids"]): e for e in data.splits["train"]}  # prompts of three lengths
    batch = rl.task.collator(data.tokenizer, evaluation=False)([by_length[n] for n in sorted(by_length)[:3]])
    prompts, mask = batch["gen_input_ids"], batch["gen_attention_mask"]
    assert (mask == 0).any()  # prompts of different lengths: left padding is exercised
    rl.share_prompts = sharing_holds(policy, prompts, mask, 3)  # what the first rollout finds
    assert rl.share_prompts
    torch.manual_seed(11)
    completion, done = sample(policy, rl.tokenizer, rl.settings, 6, prompts, mask, 0, group=3)
    rows, row_mask = prompts.repeat_interleave(3, 0), mask.repeat_interleave(3, 0)
    ids, full = torch.cat([rows, completion], 1), torch.cat([row_mask, torch.ones_like(completion)], 1)
    positions = (full.cumsum(-1) - 1).masked_fill(full == 0, 1)
    w = rows.shape[1]
    with torch.no_grad():
        whole = policy(input_ids=ids, attention_mask=full, position_ids=positions).logits[:, w - 1:-1]
        cache = shared_prompts(policy, prompts, mask, 3)["past_key_values"]
        shared = policy(input_ids=ids[:, w - 1:-1], attention_mask=full[:, :-1], position_ids=positions[:, w - 1:-1],
                        past_key_values=cache, use_cache=True).logits
    assert torch.allclose(shared, whole, atol=1e-5), (shared - whole).abs().max()
    torch.manual_seed(11)
    config = GenerationConfig(max_new_tokens=6, do_sample=True, top_k=0, top_p=1.0, temperature=rl.settings.temperature,
                              pad_token_id=rl.tokenizer.pad_token_id, eos_token_id=rl.tokenizer.eos_token_id)
    with torch.no_grad():
        again = policy.generate(input_ids=rows, attention_mask=row_mask, generation_config=config)[:, w:]
    assert torch.equal(again[:, :completion.shape[1]][done], completion[done])
    _forwards_read_each_prompt_once(rl, policy, rows, row_mask, completion, done)


def _forwards_read_each_prompt_once(rl, policy, rows, row_mask, completion, done):
    """The policy's and the reference's forward read each prompt once too: the same log-probabilities,
    and the same gradient, the group's flowing back into the one reading of its prompt."""
    from peftlab.objectives.rl_rollout import Rollout

    r = Rollout(step=0, prompts=rows, prompt_mask=row_mask, completion=completion, done=done,
                finished=done.any(1), rewards=torch.zeros(len(rows)), per_reward={}, advantages=torch.zeros(len(rows)))
    shared_batch = r.joint()
    whole_batch = {k: v for k, v in shared_batch.items() if k != "prompt_width"}  # no sharing without the width
    trained = [p for p in policy.parameters() if p.requires_grad]
    grads = []
    for batch_ in (shared_batch, whole_batch):
        policy.zero_grad()
        logps, _ = rl.token_logps(policy, batch_)
        (logps * torch.linspace(-1, 1, len(logps))).sum().backward()
        grads.append((logps.detach(), [p.grad.clone() for p in trained]))
    assert torch.allclose(grads[0][0], grads[1][0], atol=1e-5)
    pairs = zip(grads[0][1], grads[1][1], strict=True)
    worst = max(float((a - b).abs().max() / b.abs().max().clamp(min=1e-12)) for a, b in pairs)
    assert worst < 1e-4, worst
    assert any(g.abs().sum() > 0 for g in grads[0][1])


def test_a_rollout_is_trained_on_num_iterations_times_against_its_sampling_policy(cache_dir, monkeypatch):
    """rl.num_iterations=2: the second step trains on the first step's completions, rewards and
    reference, with the ratio to the log-probabilities stored when they were sampled; the policy
    moved in between, so the ratio leaves 1 and the clip binds. The third step samples again."""
    from peftlab.config import plugins
    from peftlab.objectives.rl_loss import policy_loss
    from peftlab.tasks import rewards

    monkeypatch.setitem(rewards.REWARD_FUNCTIONS, "ascii_share", ascii_share)  # rewards that differ: advantages
    monkeypatch.setattr(plugins, "REWARDS", [*plugins.REWARDS, "ascii_share"])
    rl, model, data = setup([*RL, "rl.num_iterations=2", "rl.epsilon_high=0.28", "rl.beta=0.1",
                               "rl.rewards={ascii_share: 1.0}"], cache_dir)
    model.train()
    batches = iter(data.train_dataloader())
    torch.manual_seed(3)
    rl.step = 0
    rl.loss(model, next(batches))
    first = rl.rollout
    assert rl.step_logs()["clip_fraction"] == 0 and rl.counts["batches_sampled"] == 1
    assert first.advantages.abs().max() > 0
    stored = first.old.clone()
    _move(model, 0.5)
    rl.step = 1
    total, count = rl.loss(model, next(batches))  # a fresh batch, unused: the rollout is kept
    assert rl.rollout is first and rl.counts["batches_sampled"] == 1 and torch.equal(first.old, stored)
    logps = first.tokens(rl.token_logps(model, first.joint())[0])
    expected = policy_loss(logps, stored, first.reference, first.advantages, first.done, rl.settings,
                           rl.max_new_tokens)
    assert float(total) == pytest.approx(float(expected.total), rel=1e-5)
    assert int(count) == int(first.done.sum())
    assert rl.step_logs()["clip_fraction"] > 0
    assert rl.step_logs()["clip_fraction"] == pytest.approx(rl.step_logs()["clip_low"]
                                                              + rl.step_logs()["clip_high"])
    rl.step = 2
    rl.loss(model, next(batches))
    assert rl.rollout is not first and rl.rollout.step == 2 and rl.counts["batches_sampled"] == 2


def test_num_iterations_with_accumulated_batches_is_refused():
    from peftlab.config import validate
    from peftlab.config.commands import TrainSchema
    from peftlab.objectives import make_objective
    from peftlab.tasks import make_task

    conf = validate(compose([*RL, "rl.num_iterations=2", "trainer.accumulate_grad_batches=2"]), TrainSchema)
    assert make_objective(make_task(conf.data, run=conf), conf).check(conf) == [
        "rl.num_iterations=2 with trainer.accumulate_grad_batches=2: a rollout is one batch, trained on for whole "
        "steps; raise data.batch_size instead"]


@pytest.mark.integration  # the command line: trains, clips, resumes bitwise mid-rollout, merges
def test_the_grpo_family_run_clips_resumes_bitwise_and_merges(tmp_path, cache_dir):
    common = [*RL, "rl.num_iterations=2", "rl.loss_type=dapo", "rl.epsilon_high=0.28", "method=full", "rl.beta=0",
              "rl.reference=none", "optim.lr=2e-3", "rl.rewards={ascii_share: 1.0}", "plugins=[ascii_reward]",
              "trainer.max_steps=4", "trainer.log_every_n_steps=1", "callbacks.checkpoint.every_n_train_steps=1",
              "callbacks.checkpoint.save_top_k=-1", "zero_shot=false", "forgetting=null", "merge_after=false"]
    # step 1 trains on step 0's rollout, which the step-1 checkpoint holds
    full, _ = resume_ends_equal(common, tmp_path, step=1, env={"PYTHONPATH": str(Path(__file__).parent)})
    rows = list(csv.DictReader((full / "logs" / "metrics.csv").open()))
    clips = [float(r["train/clip_fraction"]) for r in rows if r.get("train/clip_fraction")]
    assert clips[0] == 0 and max(clips[1::2]) > 0  # the sampling steps' ratio is 1; the reusing steps' is not
    assert {"train/clip_low", "train/clip_high", "train/entropy"} <= set(rows[0])
    lora = [*RL, "rl.num_iterations=2", "rl.loss_type=dapo", "rl.epsilon_high=0.28", "trainer.max_steps=2",
            "zero_shot=false", "forgetting=null", f"hydra.run.dir={tmp_path / 'lora'}"]
    proc = run_cli("peftlab-train", *lora)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads((tmp_path / "lora" / "merge_report.json").read_text())["passed"]


def ascii_share(prompts, completions, **kwargs):
    """A reward a random tiny model can earn: the share of its answer's characters that are ASCII."""
    return [sum(ord(ch) < 128 for ch in c) / max(1, len(c)) for c in completions]


@pytest.mark.parametrize("algorithm", ["grpo", "rloo"])
def test_online_rl_raises_the_reward_it_is_given(algorithm, tmp_path, cache_dir):
    """Each algorithm raises the mean reward of its samples, with a reward registered by a plug-in
    (here, for this test's run only). Full fine-tuning, because a LoRA of the random tiny model
    moves its nearly uniform output too slowly to see in a few steps (the SmolLM2 runs show LoRA)."""
    from peftlab import api
    from peftlab.config import plugins
    from peftlab.tasks import rewards

    with pytest.MonkeyPatch.context() as mp:
        mp.setitem(rewards.REWARD_FUNCTIONS, "ascii_share", ascii_share)
        mp.setattr(plugins, "REWARDS", [*plugins.REWARDS, "ascii_share"])
        api.train([*RL, f"rl={algorithm}", "method=full", "rl.beta=0", "rl.reference=none",
                   "rl.rewards={ascii_share: 1.0}", "rl.num_generations=8", "trainer.max_steps=30", "optim.lr=2e-3",
                   "rl.completions_every=1", "zero_shot=false", "forgetting=null", f"hydra.run.dir={tmp_path / 'rl'}"])
    rows = [json.loads(line) for line in (tmp_path / "rl" / "completions.jsonl").read_text().splitlines()]
    first = [r["reward"] for r in rows if r["step"] < 6]
    last = [r["reward"] for r in rows if r["step"] >= 24]
    assert sum(last) / len(last) > sum(first) / len(first) + 0.1, (first, last)


@pytest.fixture(scope="module")
def rl_run(tmp_path_factory, cache_dir):
    root = tmp_path_factory.mktemp("rl")
    proc = run_cli("peftlab-train", *RL, "rl.rewards={date_exact: 1.0, length_penalty: 0.1}", "trainer.max_steps=6",
                   "rl.completions_every=1", "trainer.log_every_n_steps=1", "forgetting=null",
                   f"hydra.run.dir={root / 'grpo'}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return root / "grpo"


@pytest.mark.integration  # a whole run through the command line; the fast suite checks the losses by hand
def test_an_rl_run_records_its_steps_and_merges(rl_run):
    m = json.loads((rl_run / "metrics.json").read_text())
    assert (m["task_type"], m["primary_metric"]) == ("rl", "exact_match")
    assert m["rl"]["algorithm"] == "grpo" and m["rl"]["rewards"] == {"date_exact": 1.0, "length_penalty": 0.1}
    assert m["rl"]["reference_bytes"] == 0 and m["rl"]["reward_model_bytes"] == 0
    assert set(m["test"]) == {"loss", "exact_match", "perplexity"}
    rows = [json.loads(line) for line in (rl_run / "completions.jsonl").read_text().splitlines()]
    assert {r["step"] for r in rows} == set(range(6)) and len(rows) == 6 * 4
    assert set(rows[0]) == {"step", "prompt", "reference", "completion", "reward", "date_exact", "length_penalty"}
    assert all(r["reward"] == pytest.approx(r["date_exact"] + 0.1 * r["length_penalty"], abs=1e-3) for r in rows)
    header = (rl_run / "logs" / "metrics.csv").read_text().splitlines()[0].split(",")
    assert {"train/reward", "train/reward_std", "train/kl", "train/clip_fraction", "train/completion_length",
            "train/reward/date_exact", "train/reward/length_penalty"} <= set(header)
    assert json.loads((rl_run / "merge_report.json").read_text())["passed"]


@pytest.mark.integration  # the RLHF chain end to end: CI's integration run
def test_rl_from_an_sft_adapter_against_a_learned_reward_on_one_base(reward_run, tmp_path):
    """The RLHF chain's last step: the policy starts from an adapter (the frozen reference beside
    it), and a reward model trained on the same base scores its completions as a third adapter."""
    start = reward_run.parent / "sft"
    if not start.exists():
        sft = run_cli("peftlab-train", "debug=tiny", "merge_after=false", "forgetting=null", f"hydra.run.dir={start}")
        assert sft.returncode == 0, sft.stderr[-3000:]
    proc = run_cli("peftlab-train", *RL, "rl.reference=frozen_adapter", f"init_adapter={start / 'adapter'}",
                   "rl.rewards={reward_model: 1.0, date_exact: 1.0}", f"rl.reward_model={reward_run / 'adapter'}",
                   "trainer.max_steps=2", "merge_after=false", "forgetting=null", f"hydra.run.dir={tmp_path / 'rlhf'}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    m = json.loads((tmp_path / "rlhf" / "metrics.json").read_text())
    assert m["rl"]["reference_bytes"] > 0 and m["rl"]["reward_model_bytes"] > 0
    assert sorted(p.name for p in (tmp_path / "rlhf" / "adapter").iterdir() if p.is_dir()) == []  # the policy alone
    rows = [json.loads(line) for line in (tmp_path / "rlhf" / "completions.jsonl").read_text().splitlines()]
    assert {"reward_model", "date_exact"} <= set(rows[0])


@pytest.mark.integration  # the fast suite resumes SFT and DPO runs; CI's integration run RL too
def test_a_resumed_rl_run_ends_bitwise_equal(tmp_path, cache_dir):
    """Sampling draws from the generators the checkpoint saves: a resumed run samples what the
    uninterrupted one sampled, and ends with its adapter."""
    common = [*RL, "rl.rewards={length_penalty: 1.0}", "trainer.max_steps=4", "optim.lr=1e-2",
              "callbacks.checkpoint.every_n_train_steps=2", "callbacks.checkpoint.save_top_k=-1", "merge_after=false",
              "zero_shot=false", "forgetting=null"]
    resume_ends_equal(common, tmp_path, step=2)


def test_a_reward_that_breaks_its_contract_is_named(tmp_path, cache_dir):
    from peftlab import api
    from peftlab.config import plugins
    from peftlab.errors import ConfigError
    from peftlab.tasks import rewards

    with pytest.MonkeyPatch.context() as mp:
        mp.setitem(rewards.REWARD_FUNCTIONS, "broken", lambda completions, **kwargs: [float("nan")] * len(completions))
        mp.setattr(plugins, "REWARDS", [*plugins.REWARDS, "broken"])
        with pytest.raises(ConfigError, match=r"rl.rewards.broken: the reward must give one finite number \(or None\) "
                                              r"per completion; .*<lambda> gave \[nan, nan"):
            api.train([*RL, "rl.rewards={broken: 1.0}", "trainer.max_steps=1", "zero_shot=false",
                       "forgetting=null", f"hydra.run.dir={tmp_path / 'rl'}"])


def test_a_diverging_rl_run_stops_with_one_line(tmp_path, cache_dir):
    proc = run_cli("peftlab-train", *RL, "rl.rewards={length_penalty: 1.0}", "optim.lr=1e30", "trainer.max_steps=6",
                   "zero_shot=false", f"hydra.run.dir={tmp_path / 'rl'}")
    assert proc.returncode == 2, proc.stderr[-2000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("peftlab-train: error: training diverged at step") and "Traceback" not in proc.stderr
    assert json.loads((tmp_path / "rl" / "metrics.json").read_text())["status"] == "diverged"


# ------------------------------------------------------------------------------ objectives of one's own
def test_an_objective_of_one_s_own_overrides_one_named_step(cache_dir):
    """docs/guides/objectives.md's example (tests/median_objective.py, loaded as a plug-in): the
    rollout's advantages are the rewards less their group's median, by hand; the rest is GRPO's."""
    from peftlab.objectives import OBJECTIVES

    rl, model, data = setup([*RL, "plugins=[ascii_reward,median_objective]", "training_objective=grpo_median",
                             "rl.rewards={ascii_share: 1.0}", "rl.num_generations=3"], cache_dir)
    assert type(rl).__name__ == "MedianBaseline" and OBJECTIVES["grpo_median"] is type(rl)
    assert rl.steps == ("sample", "score", "advantages", "reference", "loss")
    torch.manual_seed(5)
    total, count = rl.loss(model, next(iter(data.train_dataloader())))
    rewards = rl.rollout.rewards.view(-1, 3)
    by_hand = [r - sorted(g)[1] for g in rewards.tolist() for r in g]  # the median of 3: the middle one
    assert rl.rollout.advantages.tolist() == pytest.approx(by_hand) and any(by_hand)
    assert int(count) > 0 and torch.isfinite(total)


def test_an_objective_must_have_a_method_for_each_named_step():
    from peftlab.objectives import Objective, register_objective

    class Unfinished(Objective):
        name = "unfinished"
        steps = ("sample", "loss")

    with pytest.raises(ValueError, match="objective 'unfinished' names steps it has no method for: sample"):
        register_objective(Unfinished)


def test_the_objectives_guide_shows_the_tested_plug_in():
    from conftest import ROOT

    page = (ROOT / "docs" / "guides" / "objectives.md").read_text()
    shown = page.split("```python\n", 1)[1].split("```", 1)[0]
    module = (ROOT / "tests" / "median_objective.py").read_text()
    assert shown.strip() == module.split('"""', 2)[2].strip()
