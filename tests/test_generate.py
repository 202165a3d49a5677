"""peftlab-generate and peftlab.generate: the run's prompt format and greedy decoding give the
answers its test saw; merged and adapter models agree; classification answers with a label."""

from __future__ import annotations

import json

import pytest

import peftlab
from peftlab.data.sources import BUILTIN_DIR

from conftest import run_cli


@pytest.fixture(scope="module")
def lm_run(tmp_path_factory, cache_dir):
    folder = tmp_path_factory.mktemp("gen") / "lm"
    peftlab.train(["debug=tiny", "trainer.max_steps=6", "optim.lr=1e-2", f"hydra.run.dir={folder}"])
    return folder


def test_the_answers_are_the_ones_the_test_saw(lm_run):
    """Greedy answers to the first test prompts, formatted with the run's chat template and system
    prompt, equal the run's own test predictions."""
    rows = [json.loads(line) for line in (BUILTIN_DIR / "dates" / "test.jsonl").read_text().splitlines()[:8]]
    seen = [json.loads(line)["prediction"] for line in (lm_run / "test_predictions.jsonl").read_text().splitlines()]
    answers = peftlab.generate(lm_run, [r["prompt"] for r in rows])
    assert [a["answer"] for a in answers] == seen[:8]
    assert [a["prompt"] for a in answers] == [r["prompt"] for r in rows]
    merged = peftlab.generate(lm_run, [r["prompt"] for r in rows], ["merged=true"])
    assert merged == answers


@pytest.mark.integration  # the console script end to end: CI's integration run
def test_the_command_prints_one_answer_per_prompt(lm_run, tmp_path):
    prompt = json.loads((BUILTIN_DIR / "dates" / "test.jsonl").read_text().splitlines()[0])["prompt"]
    expected = peftlab.generate(lm_run, [prompt])[0]["answer"]
    one = run_cli("peftlab-generate", f"run_dir={lm_run}", f"prompt={prompt}")
    assert one.returncode == 0, one.stderr[-2000:]
    assert one.stdout.endswith(expected + "\n")  # not splitlines(): the tiny model's answers hold control bytes
    (tmp_path / "prompts.jsonl").write_text(json.dumps({"prompt": prompt}) + "\n" + json.dumps("12 May 2001") + "\n")
    out = tmp_path / "answers.jsonl"
    many = run_cli("peftlab-generate", f"run_dir={lm_run}", f"file={tmp_path / 'prompts.jsonl'}", f"out={out}")
    assert many.returncode == 0, many.stderr[-2000:]
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["prompt"] for r in rows] == [prompt, "12 May 2001"] and rows[0]["answer"] == expected


def test_interactive_answers_stream_until_the_input_ends(lm_run):
    import subprocess
    import sys
    from pathlib import Path

    prompt = json.loads((BUILTIN_DIR / "dates" / "test.jsonl").read_text().splitlines()[0])["prompt"]
    expected = peftlab.generate(lm_run, [prompt])[0]["answer"]
    exe = Path(sys.executable).parent / "peftlab-generate"
    proc = subprocess.run([str(exe), f"run_dir={lm_run}", "interactive=true"], input=f"{prompt}\nexit\n",
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert expected in proc.stdout and proc.stdout.count("> ") == 2


def test_sampling_is_seeded(lm_run):
    sample = ["do_sample=true", "temperature=1.5", "max_new_tokens=12"]
    a = peftlab.generate(lm_run, ["12 May 2001"] * 3, [*sample, "seed=1"])
    b = peftlab.generate(lm_run, ["12 May 2001"] * 3, [*sample, "seed=1"])
    assert a == b


def test_a_classification_run_answers_with_a_label_and_its_probability(tmp_path, cache_dir):
    folder = tmp_path / "cls"
    peftlab.train(["debug=tiny", "model=tiny_bert", "data=reviews", "trainer.max_steps=2", f"hydra.run.dir={folder}"])
    answers = peftlab.generate(folder, ["A wonderful film.", "Not good at all."])
    assert all(a["answer"] in ("negative", "positive") and 0.5 <= a["probability"] <= 1 for a in answers)
    proc = run_cli("peftlab-generate", f"run_dir={folder}", "prompt=A wonderful film.")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.splitlines()[-1] == f"{answers[0]['answer']} (p={answers[0]['probability']:.4f})"


def test_generating_writes_nothing_where_it_is_started(lm_run, tmp_path, monkeypatch):
    """peftlab-generate has no folder of its own: from Python too, nothing is written where it
    runs, and a failure removes nothing there (a config.yaml of the user's stays)."""
    from peftlab.errors import ConfigError

    monkeypatch.chdir(tmp_path)
    (tmp_path / "config.yaml").write_text("mine: 1\n")
    peftlab.generate(lm_run, ["12 May 2001"])
    with pytest.raises(ConfigError, match="is not a finished peftlab-train run folder"):
        peftlab.generate(tmp_path / "absent", ["x"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.yaml"]
