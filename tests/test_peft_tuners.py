"""``method=peft``: any tuner peft ships, by name, with the capabilities the probe measured
(engine/probe.py, methods/peft_tuners.json)."""

from __future__ import annotations

import json

import pytest

from conftest import compose, train

TINY = ["debug=tiny", "trainer.max_steps=4", "optim.lr=1e-2", "zero_shot=false", "logger=none", "forgetting=null"]


def test_the_probe_file_covers_every_tuner_of_the_pinned_peft():
    """A new peft (or a new tuner in it) fails here: run python scripts/probe_peft_tuners.py."""
    import peft
    from peft.mapping import PEFT_TYPE_TO_CONFIG_MAPPING

    from peftlab.methods.generic import PROBE_FILE

    recorded = json.loads(PROBE_FILE.read_text())
    assert recorded["peft"] == peft.__version__
    assert set(recorded["tuners"]) == {getattr(k, "value", k) for k in PEFT_TYPE_TO_CONFIG_MAPPING}


@pytest.mark.parametrize("peft_type,task_type", [("VERA", "causal_lm"), ("DELORA", "seq_cls"),
                                                 ("PREFIX_TUNING", "seq_cls"), ("TRAINABLE_TOKENS", "seq_cls"),
                                                 ("POLY", "causal_lm")])
def test_the_probe_reproduces_what_it_recorded(peft_type, task_type, cache_dir):
    """Passing and failing tuners alike: the recorded file is what the probe finds now."""
    from peftlab.engine.probe import probe
    from peftlab.methods.generic import probe_results

    found = probe(peft_type, task_type, str(cache_dir))
    recorded = probe_results()[peft_type]["tasks"][task_type]
    assert {k: v for k, v in found.items() if k != "options"} == {k: v for k, v in recorded.items() if k != "options"}


def test_peft_prompt_learning_still_cannot_switch_off_on_classification(cache_dir):
    """peft 0.21's disable_adapter on a SEQ_CLS prompt-learning model reads a variable it never set;
    the probe records it as a failure on seq_cls. When this fails, re-run the probe."""
    from peftlab.engine.probe import probe

    assert "old_prepare_inputs_for_generation" in probe("PROMPT_TUNING", "seq_cls", str(cache_dir))["reason"]


def test_a_probed_tuner_trains_saves_and_merges_through_the_real_run(tmp_path, cache_dir):
    """method=peft with the probe's capabilities: a run trains, saves an adapter plain peft reloads,
    and merges (the probe found RANDLORA's merge exact) with a verified export."""
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    metrics = train(compose([*TINY, "method=peft", "method.peft_type=randlora", "merge_after=true"],
                            run_dir=run_dir))
    assert metrics["method"] == "peft" and metrics["train"]["steps"] == 4
    config = json.loads((run_dir / "adapter" / "adapter_config.json").read_text())
    assert config["peft_type"] == "RANDLORA"
    report = json.loads((run_dir / "merged" / "merge_report.json").read_text())
    assert report["passed"] is True


@pytest.mark.parametrize("overrides,message", [
    (["method.peft_type=NOPE"], "method.peft_type: unknown peft tuner 'NOPE' (peft ships: ADALORA, "),
    (["method.peft_type=vera", "+method.options.bogus=1"], "method.options.bogus: not an option of peft's VeraConfig"),
    (["+method.options.task_type=SEQ_CLS"], "method.options.task_type: set by peftlab"),
    (["method.options=3"], "method.options must be {<option>: <value>, ...} of peft's config class, got 3"),
    (["method.peft_type=shadow", "model=tiny_bert", "data=reviews"],
     "method.peft_type=SHADOW did not pass the capability probe on data.task_type=seq_cls ('ShadowCarrier'"),
    (["method.peft_type=poly"], "method.peft_type=POLY did not pass the capability probe on data.task_type=causal_lm"),
])
def test_bad_tuner_settings_are_refused_with_one_line(overrides, message):
    from peftlab.config import validate
    from peftlab.errors import ConfigError

    with pytest.raises(ConfigError) as err:
        validate(compose(["method=peft", *overrides]))
    assert message in str(err.value) and "\n" not in str(err.value), str(err.value)


def test_options_peft_refuses_stop_before_training_with_one_line(tmp_path, cache_dir):
    from peftlab.errors import ConfigError

    (tmp_path / "run").mkdir()
    with pytest.raises(ConfigError) as err:
        train(compose([*TINY, "method=peft", "method.peft_type=vblora", "+method.options.vector_length=7"],
                      run_dir=tmp_path / "run"))
    assert str(err.value).startswith("method (peft): ") and "\n" not in str(err.value)
