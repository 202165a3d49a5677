"""The reward model sees what it learned from: its run's prompt format and system prompt (or a
stated rl.reward_format), a completion cut off by rl.max_new_tokens scored as unfinished, texts cut
to data.max_length counted, and scores that are not finite numbers stopping the run. On a reward
"run" folder made in seconds (the tiny base, a fresh LoRA reward adapter, its config.yaml)."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import pytest
import torch

from peftlab.errors import ConfigError

from conftest import compose

REWARD = ["debug=tiny", "data=date_prefs", "data.task_type=reward"]
RL = ["debug=tiny", "data=date_prompts", "rl=grpo", "data.batch_size=2"]
SYSTEM = "You convert dates to ISO 8601. Answer with only the date as YYYY-MM-DD."


def make_reward_run(folder: Path, cache_dir, overrides: tuple[str, ...] = ()) -> Path:
    """A reward-model run folder as peftlab-train leaves one (adapter/ with its score head, config.yaml),
    untrained: the alignment checks read its files, the scorer its weights."""
    from omegaconf import OmegaConf

    from peftlab.config import validate
    from peftlab.config.commands import TrainSchema
    from peftlab.methods import BuildContext, apply_method, save_adapter
    from peftlab.models import load_backbone
    from peftlab.tasks import make_task

    cfg = compose([*REWARD, *overrides], run_dir=folder)
    conf = validate(cfg, TrainSchema)
    task = make_task(conf.data, run=conf)
    backbone = load_backbone(conf.model, cache_dir, task)
    model = apply_method(backbone.model, conf.method, BuildContext(task, backbone.model, backbone.tokenizer,
                                                                   backbone.path))
    save_adapter(model, conf.method, folder / "adapter")
    backbone.tokenizer.save_pretrained(folder / "adapter")
    (folder / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
    (folder / "metrics.json").write_text(json.dumps({"status": "finished"}))
    return folder


def restated(run: Path, folder: Path, overrides: tuple[str, ...]) -> Path:
    """``run``'s adapter in a run folder whose config.yaml says ``overrides`` too."""
    from omegaconf import OmegaConf

    shutil.copytree(run / "adapter", folder / "adapter")
    (folder / "config.yaml").write_text(OmegaConf.to_yaml(compose([*REWARD, *overrides], run_dir=folder),
                                                          resolve=True))
    shutil.copy(run / "metrics.json", folder / "metrics.json")
    return folder


@pytest.fixture(scope="module")
def reward_run(tmp_path_factory, cache_dir) -> Path:
    return make_reward_run(tmp_path_factory.mktemp("reward") / "rm", cache_dir)


def rl_setup(overrides: list[str], cache_dir):
    """(the online RL objective, policy, data) of an RL run (this file's RL settings and
    ``overrides``) before its first step."""
    from test_rl import setup

    return setup([*RL, *overrides], cache_dir)


def learned(run: Path, *more: str) -> list[str]:
    return ["rl.rewards={reward_model: 1.0}", f"rl.reward_model={run / 'adapter'}", *more]


def first_batch(rl, data, n: int = 2):
    return rl.task.collator(data.tokenizer, evaluation=False)(data.splits["train"][:n])


# ------------------------------------------------------------------------------------ the format
@pytest.mark.parametrize("override, key, theirs, ours", [
    ("data.system_prompt=Be brief.", "system_prompt", "'Be brief.'", repr(SYSTEM)),
    ("data.prompt_format=plain", "prompt_format", "'plain'", "'auto'"),
])
def test_a_reward_run_of_another_format_is_refused_before_training(reward_run, tmp_path, override, key, theirs,
                                                                    ours):
    from peftlab.engine.train import checked

    other = restated(reward_run, tmp_path / "other", (override,))
    with pytest.raises(ConfigError) as err:
        checked(compose([*RL, *learned(other)]))
    assert str(err.value) == (
        f"rl.reward_model: {other / 'adapter'} was trained with data.{key}={theirs} and the policy has {ours}: a "
        "reward model scores texts formatted as those it learned from; set rl.reward_format=reward_run to score in "
        "the reward run's format, or rl.reward_format=policy to score in the policy's anyway")
    for stated in ("policy", "reward_run"):  # stated explicitly: accepted
        checked(compose([*RL, *learned(other, f"rl.reward_format={stated}")]))
    checked(compose([*RL, *learned(reward_run)]))  # the same format: nothing to state


def test_a_reward_adapter_without_its_run_config_needs_the_format_stated(reward_run, tmp_path):
    from peftlab.engine.train import checked

    bare = tmp_path / "bare"
    shutil.copytree(reward_run / "adapter", bare / "adapter")
    with pytest.raises(ConfigError) as err:
        checked(compose([*RL, *learned(bare)]))
    assert str(err.value) == (
        f"rl.reward_model: {bare / 'adapter'} has no run config beside it ({bare / 'config.yaml'}) to say the prompt "
        "format and system prompt it was trained with (rl.reward_format=match); set rl.reward_format=policy to score "
        "in the policy's")
    checked(compose([*RL, *learned(bare, "rl.reward_format=policy")]))


def test_reward_format_reward_run_scores_in_the_reward_run_s_format_and_is_recorded(reward_run, tmp_path, cache_dir):
    other = restated(reward_run, tmp_path / "other", ("data.system_prompt=Be brief.",))
    rl, policy, data = rl_setup(learned(other, "rl.reward_format=reward_run"), cache_dir)
    ids, mask = rl.scorer.texts(["Rewrite 3 May 2001"], ["2001-05-03"])
    text = data.tokenizer.decode(ids[0][mask[0].bool()])
    assert "Be brief." in text and SYSTEM not in text
    record = rl.settings_record()["rl"]
    assert record["reward_format"] == "reward_run"
    assert record["reward_text_format"] == {"prompt_format": "auto", "system_prompt": "Be brief."}


# ------------------------------------------------------------------------- unfinished completions
def test_a_completion_cut_off_by_the_budget_is_scored_without_an_end_of_turn(reward_run, cache_dir):
    rl, policy, data = rl_setup(learned(reward_run, "rl.num_generations=2"), cache_dir)
    tok, scorer = data.tokenizer, rl.scorer
    ids, mask = scorer.texts(["Rewrite 3 May 2001"] * 2, ["2001-05-03"] * 2, finished=[True, False])
    ended, cut_off = (row[m.bool()].tolist() for row, m in zip(ids, mask, strict=True))
    answer = tok("2001-05-03", add_special_tokens=False).input_ids
    assert cut_off[-len(answer):] == answer  # the unfinished text ends with the answer's own tokens
    assert ended[:len(cut_off)] == cut_off and ended[len(cut_off)] == tok.eos_token_id  # the finished one: the end

    # the run tells the scorer which completions ended: the first ends within rl.max_new_tokens, the
    # second runs to the budget without an end token
    other = next(t for t in range(10, 100) if t not in (tok.eos_token_id, tok.pad_token_id))
    completion = torch.tensor([answer + [tok.eos_token_id], answer + [other]])
    ends = torch.isin(completion, torch.tensor([tok.eos_token_id]))
    done = ~((ends.long().cumsum(1) - ends.long()) > 0)
    batch = {"prompts": ["Rewrite 3 May 2001"], "references": ["2001-05-03"], "fields": [{}]}
    from peftlab.objectives.rl_rollout import finished

    ended = finished(policy, tok, completion, done)  # what the rollout hands the rewards
    assert ended.tolist() == [True, False]
    _, per_reward, texts, _ = rl.score(policy, batch, completion, done, ended)
    prompts = ["Rewrite 3 May 2001"] * 2
    as_they_are = scorer.score(policy, prompts, texts, [True, False]).double()
    both_ended = scorer.score(policy, prompts, texts, [True, True]).double()
    assert torch.equal(per_reward["reward_model"], as_they_are)
    assert not torch.equal(per_reward["reward_model"], both_ended)


# ---------------------------------------------------------------------------------- texts cut short
def test_texts_cut_to_max_length_are_flagged_and_counted(reward_run, cache_dir, caplog):
    rl, policy, data = rl_setup(learned(reward_run), cache_dir)
    rl.scorer.max_length = 8  # shorter than every prompt: each text loses the start of its prompt
    batch = first_batch(rl, data)
    with caplog.at_level(logging.WARNING, logger="peftlab.objectives.online_rl"):
        rl.loss(policy, batch)
    n = 2 * rl.settings.num_generations
    assert rl.scorer.cut == [True] * n
    assert rl.step_logs()["reward_texts_cut"] == n
    assert rl.settings_record()["rl"]["reward_texts_cut"] == n
    assert [r.getMessage() for r in caplog.records if "lost the start of their prompt" in r.getMessage()] == [
        f"rl.reward_model: {n} of {n} texts at step 1 were longer than data.max_length=8 and lost the start of "
        "their prompt before scoring (counted: metrics.json rl.reward_texts_cut, train/reward_texts_cut)"]
    rl.scorer.max_length = 384
    rl.loss(policy, batch)
    assert rl.step_logs()["reward_texts_cut"] == 0 and rl.settings_record()["rl"]["reward_texts_cut"] == n


# -------------------------------------------------------------------------------- scores not finite
def test_a_reward_model_score_that_is_not_finite_stops_the_run_with_one_line(reward_run, cache_dir):
    rl, policy, data = rl_setup(learned(reward_run), cache_dir)
    rl.scorer.head["weight"] = torch.full_like(rl.scorer.head["weight"], float("nan"))
    with pytest.raises(ConfigError) as err:
        rl.loss(policy, first_batch(rl, data))
    n = 2 * rl.settings.num_generations
    assert str(err.value) == (
        f"rl.reward_model: the reward model gave {n} of {n} completions a score that is not a finite number at step 1 "
        f"([nan, nan, nan, nan]): check the reward run ({reward_run / 'adapter'})")
