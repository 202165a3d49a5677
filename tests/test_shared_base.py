"""A shared base stays the base, and a source is a finished run read by one reader.

peft re-runs the initialisation an adapter's config names when it loads the adapter; some rewrite
the base's weights. Every place that puts a saved adapter on a model goes through
``models.adapters.load_adapter``: it refuses those initialisations from the file and checks a
fingerprint of the base after the load. Every command that takes a run as a source reads it with
``runs.config.read_run_config``, which validates every block of its config."""

from __future__ import annotations

import json
import shutil

import pytest

from conftest import FINISHED_RUN, compose, train


@pytest.fixture(scope="module")
def pissa_run(tmp_path_factory, cache_dir):
    """A finished tiny PiSSA run: its saved adapter is converted to one of the original base."""
    run_dir = tmp_path_factory.mktemp("pissa") / "run"
    run_dir.mkdir()
    train(compose([*FINISHED_RUN, "method.init=pissa"], run_dir=run_dir))
    return run_dir


def _eval(runs, folder):
    import peftlab

    report = peftlab.evaluate(None, [f"runs=[{','.join(str(r) for r in runs)}]", f"hydra.run.dir={folder}"])
    return {r["run_dir"]: r["metrics"]["loss"] for r in report["runs"]}


def test_a_pissa_run_beside_another_leaves_its_scores_as_alone(pissa_run, finished_run, tmp_path):
    """The PiSSA run is loaded first: had its load rewritten the base, the second run's loss would move."""
    alone = _eval([finished_run], tmp_path / "alone")[str(finished_run)]
    together = _eval([pissa_run, finished_run], tmp_path / "together")
    assert json.loads((pissa_run / "adapter" / "adapter_config.json").read_text())["init_lora_weights"] is True
    assert together[str(finished_run)] == pytest.approx(alone, rel=1e-6)


def test_a_load_that_changes_the_base_is_caught_by_its_fingerprint(finished_run, tmp_path, cache_dir, monkeypatch):
    """With the refusal by name switched off, an adapter whose config says pissa is loaded beside
    another: peft rewrites the targeted base weights, and the fingerprint check stops it."""
    from peftlab.errors import ConfigError
    from peftlab.models.adapters import AdapterBank
    from peftlab.runs import adapters
    from peftlab.runs.config import read_run_config
    from peftlab.tasks import make_task

    folder = tmp_path / "pissa_config"
    shutil.copytree(finished_run, folder, ignore=shutil.ignore_patterns(".lock"))
    config = folder / "adapter" / "adapter_config.json"
    config.write_text(json.dumps({**json.loads(config.read_text()), "init_lora_weights": "pissa"}))
    run = read_run_config(finished_run)
    bank = AdapterBank(run.model, cache_dir, make_task(run.data, run=run))
    bank.add("sft", finished_run / "adapter")
    with pytest.raises(ConfigError, match=r"^runs: .*adapter_config.json says init_lora_weights='pissa', which "):
        bank.add("pissa", folder / "adapter")
    monkeypatch.setattr(adapters, "KEEPS_THE_BASE", (*adapters.KEEPS_THE_BASE, "pissa"))
    with pytest.raises(ConfigError, match=rf"^runs: loading {folder / 'adapter'} changed the base's weights "
                                          r"\(.*q_proj.*\); it cannot share this base$"):
        bank.add("pissa", folder / "adapter")
    assert adapters.base_fingerprint(bank.model)  # the check reads the base's own tensors


def test_method_peft_applies_the_refusals_of_method_lora(cache_dir):
    from peftlab.config import validate
    from peftlab.config.commands import TrainSchema
    from peftlab.errors import ConfigError

    with pytest.raises(ConfigError, match=r"^method.options.init_lora_weights='pissa' rewrites the base's weights"):
        validate(compose(["debug=tiny", "method=peft", "method.peft_type=LORA",
                          "method.options={init_lora_weights: pissa}"]), TrainSchema)
    with pytest.raises(ConfigError, match=r"^method.options.init_lora_weights='corda' rewrites the base's weights"):
        validate(compose(["debug=tiny", "method=peft", "method.peft_type=LORA",
                          "method.options={init_lora_weights: corda}"]), TrainSchema)
    assert validate(compose(["debug=tiny", "method=peft", "method.peft_type=LORA",
                             "method.options={init_lora_weights: gaussian}"]), TrainSchema).method.peft_type == "LORA"


def test_a_run_folders_optional_blocks_are_validated_when_read_back(finished_run, tmp_path):
    """A preference or rl block read from a run's config.yaml is its schema, not a plain dict; a bad
    value in it is one line naming the file and the key."""
    import yaml

    from peftlab.config.schema import PreferenceSchema
    from peftlab.errors import ConfigError
    from peftlab.runs.config import read_run_config

    folder = tmp_path / "run"
    shutil.copytree(finished_run, folder, ignore=shutil.ignore_patterns(".lock"))
    config = yaml.safe_load((folder / "config.yaml").read_text())
    config["preference"] = {"name": "dpo", "beta": 0.1}
    (folder / "config.yaml").write_text(yaml.safe_dump(config))
    assert isinstance(read_run_config(folder).preference, PreferenceSchema)
    config["preference"]["beta"] = "steep"
    (folder / "config.yaml").write_text(yaml.safe_dump(config))
    with pytest.raises(ConfigError, match=rf"^run_dir: {folder / 'config.yaml'}: preference.beta must be a"):
        read_run_config(folder)


def test_a_run_a_live_process_holds_is_not_a_source(finished_run, tmp_path):
    import subprocess
    import sys

    from peftlab.errors import ConfigError
    from peftlab.runs.config import read_run_config

    folder = tmp_path / "run"
    shutil.copytree(finished_run, folder, ignore=shutil.ignore_patterns(".lock"))
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from pathlib import Path; "
                               "from peftlab.runs.locks import lock_folder; lock_folder(Path(sys.argv[1])); "
                               "print('held', flush=True); time.sleep(60)", str(folder)],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(ConfigError, match=rf"^init_adapter: {folder} is in use by another peftlab command"):
            read_run_config(folder, key="init_adapter")
    finally:
        holder.kill()
        holder.wait()
    assert read_run_config(folder).method.name == "lora"  # once it has ended
