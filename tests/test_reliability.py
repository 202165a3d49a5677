"""Nothing lost, nothing run that the user did not write: exact resume after kill -9, the
divergence guard, one lock per run folder, run folders read as data."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import run_cli

EXE = Path(sys.executable).parent
# validation.select=best: the best check's weights are tested and saved; a kill after that check must
# not lose it (the tiny model's exact match is 0 at every check: the first check, step 20, is the best)
RESUMABLE = ["debug=tiny", "trainer.max_steps=40", "trainer.val_check_interval=20", "trainer.limit_val_batches=1",
             "callbacks.checkpoint.every_n_train_steps=10", "merge_after=false", "optim.lr=5e-3",
             "validation.select=best"]


# --- exact resume ---------------------------------------------------------------------------------
def test_the_training_loader_gives_torchs_shuffled_order_and_resumes_mid_epoch():
    from torch.utils.data import DataLoader

    from peftlab.data.loaders import ResumableLoader

    data = [{"i": i} for i in range(23)]
    collate = lambda rows: [r["i"] for r in rows]  # noqa: E731
    torch_loader = DataLoader(data, batch_size=4, shuffle=True, collate_fn=collate,
                              generator=torch.Generator().manual_seed(7))
    torch_order = [b for _ in range(2) for b in torch_loader]
    ours = ResumableLoader(data, 4, collate, seed=7)
    assert [b for _ in range(2) for b in ours] == torch_order  # epoch after epoch, the same batches
    first = ResumableLoader(data, 4, collate, seed=7)
    it = iter(first)
    seen = [next(it) for _ in range(3)]
    resumed = ResumableLoader(data, 4, collate, seed=7)
    resumed.load_state_dict(first.state_dict())
    assert first.state_dict() == {"epoch": 0, "position": 3}
    assert seen + list(resumed) == torch_order[:6]  # the rest of the epoch, nothing repeated or skipped
    assert resumed.state_dict() == {"epoch": 1, "position": 0}


def test_the_random_generators_are_saved_and_restored():
    import random

    import numpy as np

    from peftlab.engine.callbacks import ResumeState

    torch.manual_seed(3)
    random.seed(3)
    np.random.seed(3)
    saved = ResumeState().state_dict()
    expected = (torch.rand(3), random.random(), np.random.rand())
    torch.manual_seed(99)
    random.seed(99)
    np.random.seed(99)
    restore = ResumeState()
    restore.load_state_dict(saved)
    restore.on_train_start(None, None)
    assert torch.equal(torch.rand(3), expected[0]) and random.random() == expected[1]
    assert np.random.rand() == expected[2]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, cache_dir):
    run_dir = tmp_path_factory.mktemp("resume") / "full"
    proc = run_cli("peftlab-train", *RESUMABLE, f"hydra.run.dir={run_dir}")
    assert proc.returncode == 0, proc.stderr[-2000:]
    return run_dir


def _latest_step(run_dir: Path) -> int:
    steps = [int(m.group(1)) for f in run_dir.glob("checkpoints/step-*.ckpt") if (m := re.match(r"step-(\d+)", f.name))]
    return max(steps, default=0)


# the fast suite kills once, between the best check (step 20) and the end; CI's integration run at
# three points
@pytest.mark.parametrize("kill_after", [pytest.param(10, marks=pytest.mark.integration), 30,
                                        pytest.param(20, marks=pytest.mark.integration)])
def test_a_run_killed_and_resumed_ends_bitwise_equal(uninterrupted, kill_after, tmp_path, cache_dir):
    """kill -9 once a checkpoint of at least ``kill_after`` steps exists, then ``resume=``: the
    final adapter and every metric equal the uninterrupted run's, bit for bit."""
    run_dir = tmp_path / "killed"
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen([str(EXE / "peftlab-train"), *RESUMABLE, f"hydra.run.dir={run_dir}"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while _latest_step(run_dir) < kill_after and proc.poll() is None and time.time() < deadline:
        time.sleep(0.005)
    assert proc.poll() is None, "the run ended before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (run_dir / "metrics.json").exists()  # it really was interrupted
    (run_dir / "checkpoints" / ".last.ckpt.tmp-deadbeef").write_bytes(b"half a checkpoint")  # a killed save's
    resumed = run_cli("peftlab-train", f"resume={run_dir}", "trainer.enable_progress_bar=false")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    full, again = (json.loads((d / "metrics.json").read_text()) for d in (uninterrupted, run_dir))
    assert again["train"]["resumed_from"].startswith(str(run_dir / "checkpoints"))
    for key in ("zero_shot", "test", "val", "params"):
        assert again[key] == full[key], key
    chosen = ("select", "step", "score")
    assert [again["selection"][k] for k in chosen] == [full["selection"][k] for k in chosen] == ["best", 20, 0.0]
    assert again["train"]["steps"] == full["train"]["steps"] == 40
    assert (run_dir / "adapter" / "adapter_model.safetensors").read_bytes() == \
        (uninterrupted / "adapter" / "adapter_model.safetensors").read_bytes()
    assert again["overrides"][: len(full["overrides"])] == full["overrides"]  # the settings it started with
    assert "trainer.enable_progress_bar=false" in again["overrides"]  # what resume= may change, to the end
    assert not list(run_dir.rglob(".*.tmp-*"))


# --- divergence -----------------------------------------------------------------------------------
def _guard_world(scale=None, weight=1.0, grad=1.0, moment=0.0):
    """A trainer and module as the guard sees them: one trained weight with its gradient, an Adam
    moment, and under fp16 a loss scaler at ``scale``."""
    from types import SimpleNamespace

    weight_param = torch.nn.Parameter(torch.tensor([weight]))
    weight_param.grad = torch.tensor([grad])
    module = torch.nn.Module()
    module.w = weight_param
    module.last_loss = torch.tensor(grad)
    optimizer = torch.optim.Adam([weight_param])
    optimizer.state[weight_param] = {"exp_avg": torch.tensor([moment]), "step": torch.tensor(3.0)}
    scaler = None if scale is None else SimpleNamespace(get_scale=lambda: scale)
    trainer = SimpleNamespace(global_step=3, optimizers=[optimizer],
                              strategy=SimpleNamespace(precision_plugin=SimpleNamespace(scaler=scaler)))
    return trainer, module, optimizer


def test_the_guard_sees_a_nan_that_appears_only_in_the_update():
    from peftlab.engine.callbacks import Diverged, DivergenceGuard

    guard = DivergenceGuard()
    trainer, module, optimizer = _guard_world(weight=float("nan"))
    guard.on_before_optimizer_step(trainer, module, optimizer)  # the loss and gradient were fine
    with pytest.raises(Diverged, match="the trained weights are not finite after the update"):
        guard.on_train_batch_end(trainer, module, None, None, 0)
    trainer, module, optimizer = _guard_world(moment=float("inf"))
    with pytest.raises(Diverged, match="the optimizer's state is not finite after the update"):
        DivergenceGuard().on_train_batch_end(trainer, module, None, None, 0)
    trainer, module, optimizer = _guard_world()
    DivergenceGuard().on_train_batch_end(trainer, module, None, None, 0)  # all finite: nothing to say
    trainer, module, optimizer = _guard_world(weight=float("nan"))
    guard.on_train_batch_end(trainer, module, None, None, 1)  # the same step again (accumulation): checked once


def test_an_fp16_overflow_is_a_skipped_step_not_divergence():
    """A GradScaler skips a step whose gradients overflow and lowers its scale: that is fp16's normal
    work. Only a scale that collapses (every step overflowing) is divergence."""
    from peftlab.engine.callbacks import Diverged, DivergenceGuard

    guard = DivergenceGuard()
    trainer, module, optimizer = _guard_world(scale=32768.0, grad=float("inf"))
    guard.on_before_optimizer_step(trainer, module, optimizer)  # an overflow: no divergence
    trainer, module, optimizer = _guard_world(scale=None, grad=float("inf"))
    with pytest.raises(Diverged, match="the training loss is inf"):  # without a scaler it is divergence
        guard.on_before_optimizer_step(trainer, module, optimizer)
    trainer, module, optimizer = _guard_world(scale=2.0 ** -30, grad=float("inf"))
    with pytest.raises(Diverged, match="the fp16 loss scale fell to"):
        guard.on_before_optimizer_step(trainer, module, optimizer)


def test_a_diverging_run_stops_with_one_line_and_exports_nothing(tmp_path, cache_dir):
    run_dir = tmp_path / "run"
    proc = run_cli("peftlab-train", "debug=tiny", "optim.lr=1e30", "trainer.max_steps=8",
                   "callbacks.checkpoint.every_n_train_steps=1", f"hydra.run.dir={run_dir}")
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "optim.lr=1e+30 is above 1" in proc.stdout  # the validator warned
    last = proc.stderr.strip().splitlines()[-1]
    m = re.match(r"peftlab-train: error: training diverged at step (\d+): (.*)", last)
    assert m, last
    step = int(m.group(1))
    assert "nothing was exported; metrics.json says status: diverged" in last and "Traceback" not in proc.stderr
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["status"] == "diverged" and metrics["diverged"]["step"] == step
    assert not (run_dir / "adapter").exists() and not (run_dir / "merged").exists()
    good = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)  # the last good step's
    assert good["global_step"] == step - 1
    assert all(torch.isfinite(v).all() for v in good["state_dict"].values())
    # eval and merge refuse it with one line
    proc = run_cli("peftlab-eval", f"run_dir={run_dir}", f"hydra.run.dir={tmp_path / 'eval'}")
    assert proc.returncode == 2 and "diverged during training" in proc.stderr.strip().splitlines()[-1]


def test_every_merge_check_requires_finite_values():
    from peftlab.export.verify import Tolerance, compare, problems

    ref = [{"all": torch.zeros(3, 5), "answer": torch.zeros(2, 5)}]
    nan = [{"all": torch.full((3, 5), float("nan")), "answer": torch.full((2, 5), float("nan"))}]
    result = compare(ref, iter(nan))
    assert result["max_abs_error"] == float("inf")  # Python's max() would have skipped the NaN
    report = {"checks": {"reloaded": {**result, "max_abs_error_fp64": float("nan"), "probes": 2,
                                      "probes_identical": 2}},
              "metrics": {"adapter": {"exact_match": 0.5}, "merged": {"exact_match": float("nan")}},
              "probe_name": "greedy generations"}
    found = problems(report, Tolerance(max_abs=1e-4, min_top1=0.0, metric_slack=1.0), "exact_match")
    assert any("max logit error nan" in f for f in found) and any("test exact_match nan" in f for f in found)


# --- one lock per run folder ----------------------------------------------------------------------
def test_the_second_of_two_runs_in_one_folder_stops_at_once(tmp_path, cache_dir):
    run_dir = tmp_path / "shared"
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    first = subprocess.Popen([str(EXE / "peftlab-train"), "debug=tiny", "trainer.max_steps=30", "merge_after=false",
                              f"hydra.run.dir={run_dir}"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True)
    deadline = time.time() + 120
    while not ((run_dir / ".lock").exists() and (run_dir / ".lock").read_text()) and time.time() < deadline:
        time.sleep(0.01)
    hydra_config = (run_dir / ".hydra" / "config.yaml")
    second = run_cli("peftlab-train", "debug=tiny", "method=ia3", f"hydra.run.dir={run_dir}")
    assert second.returncode == 2
    assert re.search(rf"peftlab-train: error: hydra.run.dir: {re.escape(str(run_dir))} is in use by another peftlab "
                     r"command \(pid \d+ on .* since .*\); wait for it to end or pick another folder",
                     second.stderr.strip().splitlines()[-1]), second.stderr[-500:]
    _, err = first.communicate(timeout=300)
    assert first.returncode == 0, err[-2000:]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["method"] == "lora" and "method=ia3" not in hydra_config.read_text()


# --- run folders are data -------------------------------------------------------------------------
EVIL = """import pathlib
pathlib.Path("{marker}").write_text("yes")
from transformers import LlamaConfig, LlamaForCausalLM
class EvilConfig(LlamaConfig):
    model_type = "evil"
class EvilModel(LlamaForCausalLM):
    config_class = EvilConfig
"""


def test_a_run_folder_cannot_make_eval_run_its_models_code(tmp_path, cache_dir):
    """A shared run folder whose config names a model with its own code and trust_remote_code: true:
    peftlab-eval refuses to load it, and nothing of its code runs; the user's own flag decides."""
    import shutil

    from conftest import build, compose

    tiny = Path(build(["model=tiny_llama"], cache_dir)[2].path)
    model = tmp_path / "model"
    shutil.copytree(tiny, model)
    (model / "evil.py").write_text(EVIL.format(marker=model / "EXECUTED"))
    config = json.loads((model / "config.json").read_text())
    (model / "config.json").write_text(json.dumps({**config, "model_type": "evil", "auto_map": {
        "AutoConfig": "evil.EvilConfig", "AutoModelForCausalLM": "evil.EvilModel"}}))

    cfg = compose(["model=hf", f"model.name_or_path={model}", "model.trust_remote_code=true"],
                  run_dir=tmp_path / "run")
    run = tmp_path / "run"
    (run / "adapter").mkdir(parents=True)
    import torch
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(1)}, run / "adapter" / "model.safetensors")  # a finished run's weights file
    (run / "metrics.json").write_text(json.dumps({"status": "finished"}))
    from omegaconf import OmegaConf

    (run / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
    proc = run_cli("peftlab-eval", f"run_dir={run}", f"hydra.run.dir={tmp_path / 'eval'}")
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert proc.stderr.strip().splitlines()[-1] == (
        f"peftlab-eval: error: model.name_or_path: cannot load '{model}': its code lives in the model folder and "
        "runs only if you allow it (model.trust_remote_code=true on the peftlab-train command line, "
        "trust_remote_code=true for peftlab-eval and peftlab-merge)")
    assert not (model / "EXECUTED").exists() and not (tmp_path / "eval").exists()
    # the user's own choice on the command line is obeyed (here the model then loads and runs its code)
    proc = run_cli("peftlab-eval", f"run_dir={run}", "trust_remote_code=true", f"hydra.run.dir={tmp_path / 'eval2'}")
    assert (model / "EXECUTED").exists(), proc.stderr[-2000:]


@pytest.mark.parametrize("edit,message", [
    ("callbacks:\n  evil:\n    _target_: os.system\n    command: touch {marker}\n",
     "callbacks.evil._target_: 'os.system' is not a class peftlab instantiates"),
    ("hydra:\n  callbacks:\n    evil:\n      _target_: os.system\n      command: touch {marker}\n",
     "hydra: a rerun file may not set hydra"),
    ("paths:\n  cache_dir: /tmp/elsewhere\n", "paths: a rerun file may not set paths"),
    ("notes: ${{oc.env:HOME}}\n",
     "notes: '${oc.env:HOME}' calls the resolver oc.env, which a file read as data may not"),
    ("optim:\n  optimizer:\n    _target_: builtins.exec\n",
     "optim.optimizer._target_: 'builtins.exec' is not a class peftlab instantiates"),
])
def test_a_rerun_file_is_read_as_data(edit, message, tmp_path, cache_dir):
    from test_train import run_in_process

    run_dir, _ = run_in_process(tmp_path, "run", "trainer.max_steps=1")
    marker = tmp_path / "EXECUTED"
    with open(run_dir / "rerun.yaml", "a") as f:
        f.write(edit.format(marker=marker))
    proc = run_cli("peftlab-train", "--config-dir", str(run_dir), "--config-name", "rerun",
                   f"hydra.run.dir={tmp_path / 'again'}")
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert message in proc.stderr.strip().splitlines()[-1]
    assert not marker.exists() and not (tmp_path / "again").exists()


@pytest.mark.parametrize("planted", ["schema_train.yaml", "hydra/job_logging/default.yaml", "model/evil.yaml"])
def test_a_config_beside_the_rerun_file_is_refused(planted, tmp_path, cache_dir):
    """With --config-dir <run folder>, Hydra would load these before peftlab's own configs."""
    from test_train import run_in_process

    run_dir, _ = run_in_process(tmp_path, "run", "trainer.max_steps=1")
    (run_dir / planted).parent.mkdir(parents=True, exist_ok=True)
    (run_dir / planted).write_text("version: 1\nhandlers: {}\n")
    proc = run_cli("peftlab-train", "--config-dir", str(run_dir), "--config-name", "rerun",
                   f"hydra.run.dir={tmp_path / 'again'}")
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert proc.stderr.strip().splitlines()[-1] == (
        f"peftlab-train: error: {run_dir}: holds {planted.split('/')[0]}, which Hydra would load with --config-dir; "
        "a run folder holds no other config (a rerun file is read as data)")
    assert not (tmp_path / "again").exists()


# --- ownership: a refused command changes no byte of a folder it does not own --------------------
STATES = ["finished", "killed", "diverged", "locked", "users_own", "finished_sweep",
          "child_of_finished", "child_of_live", "linked_report", "linked_merged", "linked_checkpoints"]
COMMANDS = ["train", "train -m", "resume", "eval", "eval runs=", "merge", "merge here", "combine", "generate",
            "report", "report out_dir="]
# what a command may legitimately do with a folder (and still must not change it, but for report)
SUCCEEDS = {("finished", "eval"), ("finished", "merge"), ("finished", "generate"), ("finished", "eval runs="),
            ("finished", "combine"), ("linked_report", "eval"), ("linked_report", "merge"),
            ("linked_report", "generate"), ("linked_report", "eval runs="), ("linked_report", "combine"),
            ("linked_merged", "eval"), ("linked_merged", "merge"), ("linked_merged", "generate"),
            ("linked_merged", "eval runs="), ("linked_merged", "combine"), ("finished_sweep", "eval runs=")}
BY_DESIGN = {("finished", "report"), ("finished_sweep", "report"),  # the report goes into <input>/report
             ("linked_merged", "report"),
             ("finished", "merge here"), ("linked_report", "merge here"),  # the merged model into <run_dir>/merged
             ("killed", "resume")}  # continuing a killed run in its own folder is what resume is for
# where a state's folder lies inside the folder it belongs to: what must not change is that owner
CHILDREN = {"child_of_finished": "finished", "child_of_live": "locked"}
# a diagonal of the matrix, each state and each command at least once, as console scripts in the
# fast suite; CI's integration run runs every cell
FAST_CELLS = {(s, COMMANDS[(i + 2) % len(COMMANDS)]) for i, s in enumerate(STATES)} | {
    ("users_own", "report out_dir="), ("locked", "eval runs="), ("child_of_live", "combine"),
    ("linked_report", "report"), ("linked_merged", "merge here"), ("linked_checkpoints", "resume"),
    ("child_of_finished", "train")}


@pytest.fixture(scope="module")
def folder_states(tmp_path_factory, finished_run):
    """One folder in each state; the locked one held by a live process for the module's tests."""
    root = tmp_path_factory.mktemp("states")
    no_lock = shutil.ignore_patterns(".lock")
    shutil.copytree(finished_run, root / "finished", ignore=no_lock)
    shutil.copytree(finished_run, root / "killed", ignore=shutil.ignore_patterns(".lock", "adapter", "metrics.json",
                                                                                "*predictions.jsonl"))
    shutil.copytree(root / "killed", root / "diverged")
    (root / "diverged" / "metrics.json").write_text(json.dumps({"status": "diverged"}))
    shutil.copytree(root / "killed", root / "locked")
    (root / "users_own").mkdir()
    (root / "users_own" / "config.yaml").write_text("mine: true\n")
    (root / "users_own" / "train.log").write_text("my notes\n")
    shutil.copytree(finished_run, root / "finished_sweep" / "0", ignore=no_lock)
    (root / "finished_sweep" / "multirun.yaml").write_text("hydra: {}\n")
    (root / "elsewhere").mkdir()  # where the links point: no command may write there either
    (root / "elsewhere" / "mine.txt").write_text("someone else's\n")
    for name in ("report", "merged"):
        shutil.copytree(finished_run, root / f"linked_{name}", ignore=no_lock)
        (root / f"linked_{name}" / name).symlink_to(root / "elsewhere", target_is_directory=True)
    shutil.copytree(root / "killed", root / "linked_checkpoints", ignore=shutil.ignore_patterns("checkpoints"))
    (root / "linked_checkpoints" / "checkpoints").symlink_to(root / "killed" / "checkpoints", target_is_directory=True)
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from pathlib import Path; "
                               "from peftlab.runs.locks import lock_folder; lock_folder(Path(sys.argv[1])); "
                               "print('held', flush=True); time.sleep(900)", str(root / "locked")],
                              stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    yield root
    holder.kill()
    holder.wait()


def _snapshot(folder: Path) -> dict[str, tuple]:
    return {str(p.relative_to(folder)): (p.is_symlink(), p.is_dir(), p.lstat().st_mtime_ns,
                                         None if p.is_dir() or p.is_symlink() else p.read_bytes())
            for p in sorted(folder.rglob("*"))}


def _command(command: str, folder: Path, elsewhere: Path, finished: Path) -> list[str]:
    return {
        "train": ["peftlab-train", "debug=tiny", f"hydra.run.dir={folder}"],
        "train -m": ["peftlab-train", "-m", "debug=tiny", "seed=1,2", f"hydra.sweep.dir={folder}"],
        "resume": ["peftlab-train", f"resume={folder}"],
        "eval": ["peftlab-eval", f"run_dir={folder}", f"hydra.run.dir={elsewhere / 'eval'}"],
        "eval runs=": ["peftlab-eval", f"runs=[{folder}]", f"hydra.run.dir={elsewhere / 'eval'}"],
        "merge": ["peftlab-merge", f"run_dir={folder}", f"out_dir={elsewhere / 'merged'}",
                  f"hydra.run.dir={elsewhere / 'merge'}"],
        "merge here": ["peftlab-merge", f"run_dir={folder}", f"hydra.run.dir={elsewhere / 'merge'}"],
        "combine": ["peftlab-combine", f"runs=[{folder}]", f"hydra.run.dir={elsewhere / 'combine'}"],
        "generate": ["peftlab-generate", f"run_dir={folder}", "prompt=hi"],
        "report": ["peftlab-report", str(folder)],
        "report out_dir=": ["peftlab-report", str(finished), f"out_dir={folder}", "plots=false", "html=false"],
    }[command]


OWNERSHIP_CELLS = [pytest.param(command, state, id=f"{command}-{state}",
                                 marks=() if (state, command) in FAST_CELLS else pytest.mark.integration)
                    for command in COMMANDS for state in STATES if (state, command) not in BY_DESIGN]


def test_the_ownership_matrix_is_whole():
    assert len(STATES) * len(COMMANDS) == len(OWNERSHIP_CELLS) + len(BY_DESIGN) == 121
    assert {s for s, _ in FAST_CELLS} == set(STATES) and {c for _, c in FAST_CELLS} == set(COMMANDS)
    assert not FAST_CELLS & BY_DESIGN


@pytest.mark.parametrize("command,state", OWNERSHIP_CELLS)
def test_a_command_changes_no_byte_of_a_folder_it_does_not_own(folder_states, state, command, tmp_path):
    folder = folder_states / state
    if state in CHILDREN:
        folder = folder_states / CHILDREN[state] / "adapter" / "child"
    owner = folder_states / CHILDREN.get(state, state)
    before, elsewhere = _snapshot(owner), _snapshot(folder_states / "elsewhere")
    proc = run_cli(*_command(command, folder, tmp_path, folder_states / "finished_sweep" / "0"), cwd=tmp_path)
    expected = 0 if (state, command) in SUCCEEDS else 2
    assert proc.returncode == expected, proc.stderr[-2000:]
    if expected == 2:
        assert proc.stderr.strip().splitlines()[-1].startswith(f"{_command(command, folder, tmp_path, owner)[0]}: "
                                                               "error: ")
        assert "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert _snapshot(owner) == before
    assert _snapshot(folder_states / "elsewhere") == elsewhere
    assert not folder.exists() or state not in CHILDREN


def test_a_kill_between_the_adapter_and_metrics_json_is_resumed_to_the_end(tmp_path, cache_dir):
    """The adapter is saved, then the record: a kill in between leaves an adapter without a
    metrics.json, a folder that resume= completes (it trains no further and writes both again)."""
    import peftlab

    folder = tmp_path / "run"
    peftlab.train(["debug=tiny", "trainer.max_steps=4", "callbacks.checkpoint.every_n_train_steps=2",
                   "merge_after=false", "logger=none", f"hydra.run.dir={folder}"])
    adapter = (folder / "adapter" / "adapter_model.safetensors").read_bytes()
    (folder / "metrics.json").unlink()  # the kill
    metrics = peftlab.train([f"resume={folder}"])
    assert metrics["status"] == "finished" and (folder / "metrics.json").exists()
    assert (folder / "adapter" / "adapter_model.safetensors").read_bytes() == adapter


def test_a_resumed_run_refuses_data_that_changed(tmp_path, cache_dir):
    """The checkpoint holds the sha256 of every data file; resume= with a changed file stops with
    one line naming it, and the folder is left as it was."""
    import peftlab
    from peftlab.errors import ConfigError

    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps({"prompt": f"What is {i}?", "response": f"{i}"}) + "\n" for i in range(40)))
    folder = tmp_path / "run"
    peftlab.train(["debug=tiny", "data=custom", f"data.path={data}", "trainer.max_steps=4",
                   "callbacks.checkpoint.every_n_train_steps=2", "merge_after=false", "logger=none",
                   f"hydra.run.dir={folder}"])
    (folder / "metrics.json").unlink()  # killed after its checkpoints, say
    shutil.rmtree(folder / "adapter")
    data.write_text(data.read_text().replace("What is 3?", "What is three?"))
    before = {p: p.read_bytes() for p in folder.rglob("*") if p.is_file() and p.name != ".lock"}
    with pytest.raises(ConfigError, match=rf"^resume: the data file {re.escape(str(data))} changed since the "
                                          "checkpoint was written"):
        peftlab.train([f"resume={folder}"])
    assert {p: p.read_bytes() for p in folder.rglob("*") if p.is_file() and p.name != ".lock"} == before


def test_the_reliability_guide_states_the_ownership_matrix_as_it_is():
    from conftest import ROOT

    guide = " ".join((ROOT / "docs" / "guides" / "reliability.md").read_text().split())
    for figure in (f"for each of {len(COMMANDS)} commands", f"and {len(STATES)} folder states",
                   f"({len(STATES) * len(COMMANDS) - len(BY_DESIGN)} pairs; the other {len(BY_DESIGN)} are"):
        assert figure in guide, figure


@pytest.mark.parametrize("command", [["peftlab-eval", "run_dir={killed}"], ["peftlab-combine", "runs=[{killed}]"]])
def test_a_failed_start_in_a_default_folder_leaves_no_file(finished_run, tmp_path, command):
    """Without hydra.run.dir the command's folder is Hydra's timestamped one: a refusal before the
    work removes what was written there (.hydra/, the lock, the log), as for a folder named."""
    killed = tmp_path / "killed"
    shutil.copytree(finished_run, killed, ignore=shutil.ignore_patterns(".lock", "metrics.json"))
    work = tmp_path / "work"
    work.mkdir()
    proc = run_cli(*[a.format(killed=killed) for a in command], cwd=work)
    assert proc.returncode == 2 and "is not a finished run" in proc.stderr.strip().splitlines()[-1], proc.stderr
    assert [str(p.relative_to(work)) for p in work.rglob("*") if not p.is_dir()] == []


def test_probing_a_lock_changes_no_byte_and_a_failed_start_removes_only_its_own(finished_run, tmp_path):
    """Reading a finished run probes its lock read-only (its holder line stays); a foreign ``.lock``
    above an output folder is no peftlab lock; a failed start's clean-up leaves a folder that holds
    anything it did not write exactly as it was."""
    from peftlab.runs.config import read_run_config
    from peftlab.runs.folders import check_claimable, discard_unstarted_run_dir

    run = tmp_path / "run"
    shutil.copytree(finished_run, run, ignore=shutil.ignore_patterns(".lock"))
    (run / ".lock").write_text("pid 1 on elsewhere since 2026-01-01 00:00:00")
    read_run_config(run)
    assert (run / ".lock").read_text() == "pid 1 on elsewhere since 2026-01-01 00:00:00"
    (tmp_path / "project").mkdir()
    (tmp_path / "project" / ".lock").write_text("another tool's lock\n")
    check_claimable(tmp_path / "project" / "new")
    assert (tmp_path / "project" / ".lock").read_text() == "another tool's lock\n"
    mine = tmp_path / "mine"
    mine.mkdir()
    for name, text in (("config.yaml", "mine: true\n"), ("notes.txt", "my notes\n"), ("run.log", "my log\n")):
        (mine / name).write_text(text)
    discard_unstarted_run_dir(mine)
    assert sorted(p.name for p in mine.iterdir()) == ["config.yaml", "notes.txt", "run.log"]


def test_a_resumed_rl_run_reads_past_a_half_written_completions_line(tmp_path):
    from peftlab.objectives.rl_records import write_completions

    path = tmp_path / "completions.jsonl"
    rows = [json.dumps({"step": 0, "completion": "a"}), json.dumps({"step": 2}), '{"step": 3, "comp']  # killed mid-line
    path.write_text("\n".join(rows))
    write_completions(path, 2, [{"step": 2, "completion": "b"}], resumed=True)
    assert [json.loads(line) for line in path.read_text().splitlines()] == [
        {"step": 0, "completion": "a"}, {"step": 2, "completion": "b"}]
