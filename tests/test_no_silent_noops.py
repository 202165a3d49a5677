"""No silent no-ops: a configuration that gives no gradient by construction is refused with one line
(every reward weight 0, a temperature at which sampling is greedy in effect, KTO with both weights 0,
unpaired data with one kind of answer), RL counts the batches in which every group scored alike, the
counts have upper bounds, and a run whose primary metric is not a number is never reported as ok."""

from __future__ import annotations

import json
import logging
import math

import pytest
from test_reward_alignment import first_batch, rl_setup

import peftlab.tasks  # noqa: F401  (registers the rewards and the preference losses with the config checks)
from peftlab.errors import ConfigError, DataError

from conftest import compose, train


# ----------------------------------------------------------------------------------- RL settings
@pytest.mark.parametrize("settings, message", [
    (dict(rewards={"date_exact": 0, "length_penalty": 0.0}),
     "rl.rewards must give at least one reward a weight other than 0 (with every weight 0 every completion's reward "
     "is 0, every advantage 0: no gradient), got {'date_exact': 0, 'length_penalty': 0.0}"),
    (dict(temperature=1e-30),
     "rl.temperature must be a finite number >= 0.01: below it sampling is greedy in effect, every completion of a "
     "group the same and every advantage 0 (no gradient), got 1e-30"),
    (dict(temperature=0.0099),
     "rl.temperature must be a finite number >= 0.01: below it sampling is greedy in effect, every completion of a "
     "group the same and every advantage 0 (no gradient), got 0.0099"),
    (dict(num_generations=1025),
     "rl.num_generations must be <= 1024 (completions sampled per prompt, all held at once), got 1025"),
    (dict(max_new_tokens=32769), "rl.max_new_tokens must be in [1, 32768] or null, got 32769"),
    (dict(completions_every=10**7), "rl.completions_every must be in [0, 1000000] (steps; 0: never), got 10000000"),
    (dict(reward_format="mine"), "rl.reward_format must be one of match, reward_run, policy, got 'mine'"),
    (dict(reward_format="policy"),
     "rl.reward_format needs rl.reward_model (it says how the reward model's texts are formatted), got 'policy'"),
])
def test_rl_settings_that_train_nothing_or_cannot_fit_are_refused(settings, message):
    from peftlab.config.rl import RLSchema

    with pytest.raises(ConfigError) as err:
        RLSchema(name="grpo", **settings)
    assert str(err.value) == message


def test_the_limits_themselves_are_accepted():
    from peftlab.config.rl import RLSchema

    RLSchema(name="grpo", temperature=0.01, num_generations=1024, max_new_tokens=32768, completions_every=10**6,
             rewards={"date_exact": 1.0, "length_penalty": 0.0})


def test_a_generation_budget_that_leaves_no_room_for_a_prompt_is_refused_before_any_model():
    from peftlab.engine.train import checked

    with pytest.raises(ConfigError) as err:
        checked(compose(["debug=tiny", "data=date_prompts", "rl=grpo", "rl.max_new_tokens=384"]))
    assert str(err.value) == "rl.max_new_tokens=384 leaves no room for a prompt within data.max_length=384"


def test_batches_whose_groups_all_scored_alike_are_counted_and_said(cache_dir, caplog, monkeypatch):
    """Every advantage of a group that scored alike is 0: a batch of such groups gives the rewards no
    gradient. The run counts them; one where no batch had a signal says so."""
    from peftlab.config import plugins
    from peftlab.tasks import rewards

    monkeypatch.setitem(rewards.REWARD_FUNCTIONS, "constant", lambda completions, **kwargs: [1.0] * len(completions))
    monkeypatch.setitem(rewards.REWARD_FUNCTIONS, "position", lambda completions, **kwargs: [
        float(i) for i in range(len(completions))])
    monkeypatch.setattr(plugins, "REWARDS", [*plugins.REWARDS, "constant", "position"])
    rl, policy, data = rl_setup(["rl.rewards={constant: 1.0}"], cache_dir)
    batch = first_batch(rl, data)
    rl.loss(policy, batch)
    assert rl.step_logs()["groups_without_signal"] == 1.0
    with caplog.at_level(logging.WARNING, logger="peftlab.objectives.online_rl"):
        record = rl.settings_record()["rl"]
    assert (record["batches_sampled"], record["batches_without_signal"]) == (1, 1)
    assert [r.getMessage() for r in caplog.records if r.name == "peftlab.objectives.online_rl"] == [
        "rl: in every one of the 1 sampled batches, each prompt's completions all scored the same: every advantage "
        "was 0 and the rewards gave no gradient (metrics.json rl.batches_without_signal; see rl.temperature, "
        "rl.rewards)"]
    rl.settings.rewards = {"position": 1.0}
    rl.loss(policy, batch)
    assert rl.step_logs()["groups_without_signal"] == 0.0
    record = rl.settings_record()["rl"]
    assert (record["batches_sampled"], record["batches_without_signal"]) == (2, 1)


# ------------------------------------------------------------------------------------------ KTO
def test_kto_with_both_weights_zero_is_refused():
    from peftlab.config.schema import PreferenceSchema

    with pytest.raises(ConfigError) as err:
        PreferenceSchema(name="kto", loss="kto", desirable_weight=0.0, undesirable_weight=0.0)
    assert str(err.value) == (
        "preference.desirable_weight and preference.undesirable_weight must not both be 0 (each answer's loss is "
        "weighted by one of them: every loss would be 0, no gradient), got (0.0, 0.0)")
    PreferenceSchema(name="kto", loss="kto", desirable_weight=0.0, undesirable_weight=1.0)  # one kind weighed: fine


def test_unpaired_data_with_one_kind_of_answer_is_refused_naming_its_file(tmp_path):
    from peftlab.data.sources import BUILTIN_DIR
    from peftlab.engine.train import checked

    source = BUILTIN_DIR / "date_feedback"
    rows = {split: [json.loads(line) for line in (source / f"{split}.jsonl").read_text().splitlines() if line.strip()]
            for split in ("train", "val", "test")}
    rows["test"] = [r for r in rows["test"] if r["label"] is True][:5]
    folder = tmp_path / "feedback"
    folder.mkdir()
    for split, found in rows.items():
        (folder / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in found))
    overrides = ["debug=tiny", "data=date_feedback"]
    checked(compose(overrides))  # the shipped data holds both kinds in every split
    with pytest.raises(DataError) as err:
        checked(compose([*overrides, f"data.path={folder}"]))
    assert str(err.value) == (
        f"{folder / 'test.jsonl'}: all 5 answers of the test split are desirable (label=true): KTO's reward margin, "
        "the primary metric, compares desirable with undesirable answers and is undefined with one kind only")


# ------------------------------------------------------------------------- a primary metric of NaN
def test_a_run_whose_primary_metric_is_nan_is_not_reported_as_ok(tmp_path, cache_dir, monkeypatch, caplog):
    from peftlab.engine import job
    from peftlab.reporting.runs import group_runs, read_run

    def nan_test(trainer, module, data):
        return {"exact_match": float("nan"), "loss": 1.0, "perplexity": math.e}

    monkeypatch.setattr(job, "test_metrics", nan_test)
    run_dir = tmp_path / "run"
    with caplog.at_level(logging.WARNING, logger="peftlab.train"):
        train(compose(["debug=tiny", "trainer.max_steps=1", "zero_shot=false", "merge_after=false", "forgetting=null",
                       "logger=none", "save_adapter=false"], run_dir=run_dir))
    m = json.loads((run_dir / "metrics.json").read_text())
    assert (m["status"], m["nan_metric"]) == ("nan_metric", ["test.exact_match"])
    assert "test.exact_match is not a finite number: metrics.json says status: nan_metric, and reports count the " \
           "run as no result" in caplog.text
    [group] = group_runs([read_run(run_dir)])
    assert group.status == "1 of 1 nan_metric" and group.finished == []
