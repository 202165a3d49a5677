"""KL to the base on the task's prompts (engine/kl_to_base.py): the measure RL's Razor finds
forgetting to track, recorded by every language-model run."""

from __future__ import annotations

import json
import statistics

import pytest
import torch
from scipy import stats

from peftlab.data.datamodule import TaskDataModule
from peftlab.engine.kl_to_base import KLToBase, answer_log_probs, sample_answers

from conftest import FINISHED_RUN, build, compose, moved, wrap


def _setup(cache_dir, prompts=6):
    conf, task, bb = build(["model=tiny_llama", "method=lora", f"kl_to_base.prompts={prompts}"], cache_dir)
    data = TaskDataModule(task, bb.tokenizer)
    data.setup()
    return conf, task, bb, [e["prompt_ids"] for e in data.splits["val"]]


def test_a_fresh_adapter_has_moved_nothing_and_training_moves_it(cache_dir):
    conf, task, bb, prompts = _setup(cache_dir)
    meter = KLToBase(conf.kl_to_base, prompts, conf.data.max_new_tokens, bb.tokenizer, bb.model)
    model = wrap(bb, conf.method, task)
    fresh = meter.record(model)
    assert fresh["kl"] == 0.0 and fresh["reverse"] == 0.0 and fresh["kl_ci95"] == 0.0
    assert fresh["prompts"] == 6 and fresh["tokens"] == sum(len(a) for a in meter.answers) > 6
    moved(model)
    after = meter.record(model)
    assert after["kl"] > 0 and after["reverse"] > 0
    # by hand: each answer's summed exact KL(base || trained) over the vocabulary, then the mean over
    # the prompts with its Student-t interval
    each = []
    for prompt, answer, base in zip(meter.prompts, meter.answers, meter.before, strict=True):
        ids = torch.tensor([prompt + answer])
        with torch.no_grad():
            new = torch.log_softmax(model(input_ids=ids).logits[0, len(prompt) - 1:-1].double(), -1)
        each.append(float((base.double().exp() * (base.double() - new)).sum()))
    assert after["kl"] == pytest.approx(statistics.fmean(each), rel=1e-4)
    half = stats.t.ppf(0.975, len(each) - 1) * statistics.stdev(each) / len(each) ** 0.5
    assert after["kl_ci95"] == pytest.approx(half, rel=1e-3)
    assert after["per_token"] == pytest.approx(sum(each) / after["tokens"], rel=1e-4)


def test_the_answers_come_from_the_base_and_leave_trainings_random_numbers_alone(cache_dir):
    conf, task, bb, prompts = _setup(cache_dir)
    torch.manual_seed(123)
    state = torch.get_rng_state()
    first = sample_answers(bb.model, bb.tokenizer, prompts[:4], 8, seed=0)
    assert torch.equal(torch.get_rng_state(), state)  # training's random numbers are untouched
    assert first == sample_answers(bb.model, bb.tokenizer, prompts[:4], 8, seed=0)  # the seed fixes them
    assert first != sample_answers(bb.model, bb.tokenizer, prompts[:4], 8, seed=1)
    assert all(0 < len(a) <= 8 for a in first)
    base = answer_log_probs(bb.model, prompts[0], first[0])
    assert base.shape == (len(first[0]), bb.model.config.vocab_size)
    assert torch.allclose(base.exp().sum(-1), torch.ones(len(first[0])), atol=1e-5)


def test_every_language_model_run_records_it(tmp_path, cache_dir):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    from conftest import train

    train(compose([*FINISHED_RUN, "trainer.max_steps=3", "kl_to_base.prompts=4"], run_dir=run_dir))
    record = json.loads((run_dir / "metrics.json").read_text())["kl_to_base"]
    assert record["prompts"] == 4 and record["split"] == "val" and record["kl"] > 0
    assert set(record) == {"kl", "kl_ci95", "per_token", "reverse", "prompts", "tokens", "split", "seed"}
    from peftlab.config.commands import ReportSchema
    from peftlab.reporting import write_report

    write_report([run_dir], tmp_path / "report", ReportSchema(plots=False, html=False))
    table = (tmp_path / "report" / "results.md").read_text()
    assert "| KL to base (nats, mean ± std) |" in table and f"| {record['kl']:.4f} |" in table


def test_classification_runs_record_none(tmp_path):
    from conftest import train

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    train(compose(["model=tiny_bert", "data=reviews", "data.max_eval_examples=8", "trainer.max_steps=1",
                   "trainer.val_check_interval=1", "trainer.enable_progress_bar=false", "callbacks.checkpoint=null",
                   "logger=none", "merge_after=false", "zero_shot=false"], run_dir=run_dir))
    assert json.loads((run_dir / "metrics.json").read_text())["kl_to_base"] is None


def test_bad_settings_are_refused():
    from peftlab.config import validate
    from peftlab.errors import ConfigError

    for override, message in (("kl_to_base.split=test", "kl_to_base.split must be one of val, train, got 'test'"),
                               ("kl_to_base.prompts=0", "kl_to_base.prompts must be > 0, got 0")):
        with pytest.raises(ConfigError) as err:
            validate(compose(["model=tiny_llama", override]))
        assert str(err.value) == message
