"""``--dry-run`` on every command: the command's own checks, with the command's own one-line
messages, then the plan, with no weights loaded and nothing written anywhere; and ``--cfg`` where it
used to fail (every job of a sweep, peftlab-report's positional folders).

Every case of the bad-input matrix (tests/test_bad_inputs.py) is caught by the dry run, none needs
the weights: a checkpoint that does not fit is found from its tensors' names and shapes against the
model built on the meta device. The fast suite runs one case of each kind, in this process through
the console script's own entry (``main()``); the integration run every case, each against the real
command's message, and a few as real console scripts."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from test_bad_inputs import (
    AS_COMMANDS,
    CASES,
    COMMAND_LINE_ONLY,
    _argv,
    _inputs,
    _left_nothing,
    _snapshot,
    _through_the_api,
)

from conftest import FINISHED_RUN, console_in_process, run_cli

# one case of each kind: config value, composition, disallowed target, GPU precision, checkpoint (read,
# and fitted on the meta device), run and sweep folders, resume, data (read, and tokenised), model,
# cache, method against the model, a starting adapter, and each other command's own inputs
FAST = {"negative rank", "unknown method", "callback code", "fp16 on cpu", "random bytes checkpoint",
        "finished folder", "a finished sweep's folder", "resume with other settings",
        "malformed json", "missing model folder", "unwritable cache", "unknown target module",
        "eval corrupt config", "eval an adapter that moves the base",
        "merge broken adapter", "report over a report", "generate without a prompt", "combine one adapter twice"}


@pytest.fixture(scope="module")
def inputs(tmp_path_factory, finished_run):
    """The matrix's files and run folders (tests/test_bad_inputs.py), made once for this module."""
    root = tmp_path_factory.mktemp("dry")
    return root, _inputs(root, finished_run)


def dry(prog: str, argv: list[str], monkeypatch, capsys, flag: str = "--dry-run") -> tuple[int, str, str]:
    """The console script ``prog`` with ``flag``, in this process: (exit status, stdout, stderr)."""
    return console_in_process(prog, [*([flag] if flag else []), *argv], monkeypatch, capsys)


def everything(root: Path) -> dict[str, tuple]:
    """Every file and folder under ``root``, with each file's size and modification time."""
    return {str(p.relative_to(root)): None if p.is_dir() else (p.lstat().st_size, p.lstat().st_mtime_ns)
            for p in root.rglob("*")}


# ------------------------------------------------------------------------------- the whole matrix
@pytest.mark.parametrize("case", [c if c[0] in FAST else pytest.param(c, marks=pytest.mark.integration)
                                  for c in CASES], ids=[c[0] for c in CASES])
def test_the_dry_run_refuses_as_the_command_does_and_writes_nothing(inputs, case, monkeypatch, capsys):
    from peftlab.config.messages import describe, user_errors

    root, files = inputs
    out = root / "dry" / case[0].replace(" ", "_")
    argv, fill = _argv(case, files, out)
    before = _snapshot(root)
    code, stdout, stderr = dry(case[1], argv, monkeypatch, capsys)
    assert code == 2, stdout + stderr
    last = stderr.rstrip("\n").splitlines()[-1]
    assert last.startswith(f"{case[1]}: error: ") and case[3].format(**fill) in last, last
    assert "Traceback" not in stderr and "nothing was written" not in stdout
    _left_nothing(root, out, before)
    if case[0] not in COMMAND_LINE_ONLY:  # the real command, in this process: the very same line
        real = root / "api" / f"dry-{out.name}"  # as the matrix runs it (api/ is left out of its snapshots)
        with pytest.raises(user_errors()) as err:
            _through_the_api(case[1], _argv(case, files, real)[0])
        assert last == f"{case[1]}: error: {describe(err.value).replace(str(real), str(out))}"


@pytest.mark.integration
@pytest.mark.parametrize("case", [c for c in CASES if c[0] in AS_COMMANDS], ids=[c[0] for c in CASES
                                                                                 if c[0] in AS_COMMANDS])
def test_the_dry_run_as_a_console_script(inputs, case):
    root, files = inputs
    out = root / "dry_cli" / case[0].replace(" ", "_")
    argv, fill = _argv(case, files, out)
    before = _snapshot(root)
    proc = run_cli(case[1], "--dry-run", *argv)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith(f"{case[1]}: error: ") and case[3].format(**fill) in last, last
    _left_nothing(root, out, before)


# ---------------------------------------------------------------------------------- good commands
def _plan_lines(stdout: str) -> dict[str, str]:
    return {line.split()[0]: line.strip() for line in stdout.splitlines() if line.startswith("  ")}


def test_a_good_run_prints_its_plan_with_the_runs_own_counts(finished_run, tmp_path, monkeypatch, capsys):
    """The plan of the finished run's own command line: its parameter counts are those the run
    reported, from the config alone; the run folder and the cache are left as they were (empty)."""
    monkeypatch.chdir(tmp_path)
    cache = tmp_path / "cache"
    code, stdout, stderr = dry("peftlab-train", [*FINISHED_RUN, f"paths.cache_dir={cache}"], monkeypatch, capsys)
    assert code == 0, stderr
    assert stdout.startswith("peftlab-train --dry-run: every check passed; nothing was written and no weights "
                             "were loaded\n")
    params = json.loads((finished_run / "metrics.json").read_text())["params"]
    lines = _plan_lines(stdout)
    assert lines["method"] == (f"method      lora: {params['trainable']:,} trainable of {params['total']:,} parameters "
                               f"({params['trainable_pct']:.4f}%, counted on the meta device)")
    assert lines["model"].startswith(f"model       model=tiny_llama <- random init (model.init_seed=0), built into "
                                     f"{cache}/models/tiny_llama-")
    assert lines["model"].endswith(" on first use")
    assert "train 2,000, val 8, test 8 examples" in lines["data"] and lines["objective"].endswith("val.exact_match")
    assert lines["precision"].startswith("precision   fp32: trainer 32-true")
    assert "(would be created)" in lines["run"] and lines["writes"].endswith("checkpoints/, adapter/")
    assert everything(tmp_path) == {}


def test_method_r_0_and_fp16_on_a_cpu_are_refused_as_the_run_refuses_them(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    for args, message in ((["method.r=0"], "method.r must be > 0, got 0"),
                          (["precision=fp16"], "precision.trainer=16-mixed needs a GPU (hardware.accelerator=cpu); "
                                               "use precision=bf16 or precision=fp32 on CPU")):
        code, stdout, stderr = dry("peftlab-train", ["debug=tiny", *args], monkeypatch, capsys)
        assert (code, stdout, stderr.strip()) == (2, "", f"peftlab-train: error: {message}")
    assert everything(tmp_path) == {}


def test_a_sweep_prints_every_jobs_plan(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    code, stdout, stderr = dry("peftlab-train", ["-m", "method=lora,full", "seed=1,2", "debug=tiny"], monkeypatch,
                               capsys)
    assert code == 0, stderr
    assert stdout.startswith("peftlab-train -m --dry-run: 4 job(s), 4 passed every check")
    jobs = [line for line in stdout.splitlines() if line.startswith("job ")]
    assert jobs == ["job 0: method=lora seed=1 debug=tiny", "job 1: method=lora seed=2 debug=tiny",
                    "job 2: method=full seed=1 debug=tiny", "job 3: method=full seed=2 debug=tiny"]
    methods = [line.split(":")[0].split()[-1] for line in stdout.splitlines() if line.startswith("  method ")]
    assert methods == ["lora", "lora", "full", "full"]
    assert [line.rsplit("/", 1)[1] for line in stdout.splitlines() if line.startswith("  run folder")] == [
        "0 (would be created)", "1 (would be created)", "2 (would be created)", "3 (would be created)"]
    assert everything(tmp_path) == {}


def test_a_sweep_with_a_bad_job_shows_the_others_and_names_it(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    code, stdout, stderr = dry("peftlab-train", ["-m", "method.r=4,0,-1", "debug=tiny"], monkeypatch, capsys)
    assert code == 2
    assert "2 passed every check" not in stdout and "1 passed every check" in stdout
    assert "job 1: method.r=0 debug=tiny\n  refused: method.r must be > 0, got 0" in stdout
    assert stderr.strip().splitlines()[-1] == ("peftlab-train: error: job 1 (method.r=0 debug=tiny): method.r must "
                                               "be > 0, got 0 (1 more job(s) refused: see above)")
    assert everything(tmp_path) == {}


def test_a_sweeper_that_chooses_is_checked_before_its_first_job(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    code, stdout, stderr = dry("peftlab-train", ["-m", "hydra/sweeper=tune_then_test", "objective=test.exact_match",
                                                 "debug=tiny"], monkeypatch, capsys)
    assert code == 2 and stdout == ""
    assert stderr.strip().startswith("peftlab-train: error: objective=test.exact_match: the sweeper "
                                     "(TuneThenTestSweeper) would choose by the test split")
    assert everything(tmp_path) == {}


@pytest.mark.parametrize("prog,args,expected", [
    ("peftlab-eval", ["run_dir={run}"], ["adapter      {run}/adapter (method=lora)", "scored on test"]),
    ("peftlab-eval", ["runs=[{run}]"], ["run 0        {run}: tiny_llama + lora on dates (seed 42), scored on "
                                        "dates/test"]),
    ("peftlab-merge", ["run_dir={run}"], ["merged model  {run}/merged (would be created)"]),
    ("peftlab-combine", ["runs=[{run}]", "combination_type=linear"], ["combines    combination_type=linear"]),
    ("peftlab-report", ["{run}", "out_dir={tmp}/report"], ["runs           1 runs in 1 groups",
                                                            "report folder  {tmp}/report (would be created)"]),
    ("peftlab-generate", ["run_dir={run}", "prompt=3rd of March, 1998"],
     ["answers  1 prompt(s), greedy, up to 12 new tokens each -> standard output"]),
    ("peftlab-params", ["model=tiny_llama"], ["method  lora: 16,384 trainable of 123,840 parameters"]),
    ("peftlab-harness", ["run_dir={run}", "limit=4"],
     ["{run}: lora on dates; lm-eval loads the base (tiny_llama) with peft={run}/adapter",
      "peftlab (split test, at most 4 documents)"]),
    ("peftlab-train", ["debug=tiny", "init_adapter={run}/adapter"],
     ["starts from  {run}/adapter", "method       lora: 16,384 trainable of 123,840 parameters"]),
], ids=["eval", "eval runs", "merge", "combine", "report", "generate", "params", "harness", "train from an adapter"])
def test_every_command_prints_its_plan_and_writes_nothing(finished_run, tmp_path, monkeypatch, capsys, prog, args,
                                                          expected):
    monkeypatch.chdir(tmp_path)
    fill = {"run": str(finished_run), "tmp": str(tmp_path)}
    before = everything(finished_run)
    code, stdout, stderr = dry(prog, [a.format(**fill) for a in args], monkeypatch, capsys)
    assert code == 0, stderr
    assert stdout.startswith(f"{prog} --dry-run: every check passed; nothing was written and no weights were loaded")
    for line in expected:
        assert line.format(**fill) in stdout, stdout
    assert everything(tmp_path) == {} and everything(finished_run) == before


@pytest.mark.integration
def test_resuming_a_killed_run_is_checked_in_its_own_folder(cache_dir, tmp_path, monkeypatch, capsys):
    """A run killed after its checkpoint: its config, data and checkpoint (names and shapes, on the
    meta device) are checked as the resumed run checks them, and its folder is left as it was."""
    import shutil

    from peftlab import api

    run = tmp_path / "killed"
    api.train(["debug=tiny", "trainer.max_steps=2", "zero_shot=false", "logger=none", "merge_after=false",
               "forgetting=null", "callbacks.checkpoint.every_n_train_steps=1", f"hydra.run.dir={run}"])
    (run / "metrics.json").unlink()  # killed between its last checkpoint and its record
    shutil.rmtree(run / "adapter")
    before = everything(run)
    monkeypatch.chdir(tmp_path)
    code, stdout, stderr = dry("peftlab-train", [f"resume={run}"], monkeypatch, capsys)
    assert code == 0, stderr
    lines = _plan_lines(stdout)
    assert lines["resumes"].endswith(f" {run}/checkpoints/last.ckpt (in its own folder)")
    assert lines["run"].endswith(f" {run} (exists; written into)")
    code, stdout, stderr = dry("peftlab-train", [f"resume={run}", "method.r=4"], monkeypatch, capsys)
    assert code == 2 and "resume: method.r=4: a resumed run keeps the settings it started with" in stderr
    assert everything(run) == before


def test_the_dry_run_does_not_combine_with_cfg(monkeypatch, capsys):
    code, stdout, stderr = dry("peftlab-train", ["--cfg", "job"], monkeypatch, capsys)
    assert (code, stdout, stderr.strip()) == (2, "", "peftlab-train: error: --dry-run: checks a run and prints its "
                                                     "plan; it does not combine with --cfg")


def _isolated(root: Path, warm: bool = True) -> dict[str, str]:
    """Home, caches and the working folder under ``root`` (with ``warm``, the temporary folder too).
    What the libraries make the first time they are imported on a machine (matplotlib's font list,
    which Lightning's import builds; torch's compiler folder) is made first (``warm``), or left where
    it already is."""
    import matplotlib

    for name in ("home", "work", "tmp", "cache"):
        (root / name).mkdir()
    env = {"HOME": str(root / "home"), "XDG_CACHE_HOME": str(root / "home" / ".cache"),
           "PEFTLAB_CACHE_DIR": str(root / "cache"), "HF_HOME": str(root / "home" / "hf")}
    if not warm:
        return {**env, "MPLCONFIGDIR": matplotlib.get_configdir()}
    env.update(TMPDIR=str(root / "tmp"), MPLCONFIGDIR=str(root / "home" / "mpl"))
    subprocess.run([sys.executable, "-c", "import lightning, peft, transformers"], cwd=root / "work", check=True,
                   env={**os.environ, **env}, capture_output=True)
    return env


@pytest.mark.integration
def test_the_console_script_writes_nothing_anywhere(tmp_path):
    """After the dry run of a tiny run, none of the folders a command could write holds anything new."""
    env = _isolated(tmp_path, warm=False)
    before = everything(tmp_path)
    proc = run_cli("peftlab-train", "--dry-run", "debug=tiny", cwd=tmp_path / "work", env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.startswith("peftlab-train --dry-run: every check passed")
    assert "method      lora: 16,384 trainable of 123,840 parameters" in proc.stdout
    assert everything(tmp_path) == before


@pytest.mark.integration
def test_the_default_command_reads_the_packaged_model_without_converting_it(tmp_path):
    """SmolLM2 from its GGUF file: the tokenizer and the config are read from the file (its header),
    and nothing is converted into the empty cache."""
    env = _isolated(tmp_path)
    before = everything(tmp_path)
    proc = run_cli("peftlab-train", "--dry-run", cwd=tmp_path / "work", env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = _plan_lines(proc.stdout)
    assert "SmolLM2-135M-Instruct.Q4_1.gguf, converted once into" in lines["model"]
    # what the measured SmolLM2 runs report (docs/figures/method_comparison/results.md: 2,442,240, 1.783%)
    assert lines["method"].startswith("method      lora: 2,442,240 trainable of 136,957,248 parameters (1.7832%")
    assert everything(tmp_path) == before


# ---------------------------------------------------------------------------------------- --cfg
def test_cfg_with_a_sweep_prints_every_jobs_config(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    code, stdout, stderr = dry("peftlab-train", ["-m", "method=lora,full", "--cfg", "job"], monkeypatch, capsys,
                               flag="")
    assert code == 0 and "Traceback" not in stderr, stderr
    heads = [line for line in stdout.splitlines() if line.startswith("# job")]
    assert heads == ["# job 0: method=lora", "# job 1: method=full"]
    names = [line.split(": ")[1] for line in stdout.splitlines() if line.startswith("  name: ")]
    assert "lora" in names and "full" in names and "\nhydra:" not in stdout  # the jobs' configs, not Hydra's
    assert everything(tmp_path) == {}


def test_report_cfg_takes_job_as_the_options_value(finished_run, tmp_path, monkeypatch, capsys):
    from peftlab.commands.report import positional_to_inputs

    assert positional_to_inputs(["--cfg", "job", "a", "out_dir=x"]) == ["inputs=['a']", "--cfg", "job", "out_dir=x"]
    assert positional_to_inputs(["a", "-c", "hydra", "b"]) == ["inputs=['a','b']", "-c", "hydra"]
    assert positional_to_inputs(["--info", "defaults", "a"]) == ["inputs=['a']", "--info", "defaults"]
    monkeypatch.chdir(tmp_path)
    code, stdout, stderr = dry("peftlab-report", ["--cfg", "job", str(finished_run)], monkeypatch, capsys, flag="")
    assert code == 0, stderr
    assert f"inputs:\n- {finished_run}\n" in stdout
    assert everything(tmp_path) == {}


def test_the_dry_run_leaves_hydras_state_clear(tmp_path, monkeypatch, capsys):
    """A notebook's next call composes afresh: nothing of the dry run's Hydra set-up is left."""
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig

    monkeypatch.chdir(tmp_path)
    environment = dict(os.environ)
    assert dry("peftlab-params", ["model=tiny_llama"], monkeypatch, capsys)[0] == 0
    assert not GlobalHydra.instance().is_initialized() and not HydraConfig.initialized()
    assert {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"} == {
        k: v for k, v in environment.items() if k != "HYDRA_FULL_ERROR"}  # hydra.job.env_set was for the job
