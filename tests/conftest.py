"""Shared fixtures: Hydra compose with a temporary run folder, tiny models, CLI runner."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"

# tiny models are built into a cache of the test session; nothing touches the network
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

# Under pytest-xdist (`make test` runs one worker per core) each worker, and each process it
# starts, computes on one thread: two workers with a thread per core each would oversubscribe.
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ["OMP_NUM_THREADS"] = "1"
    os.environ["MKL_NUM_THREADS"] = "1"
    import torch

    torch.set_num_threads(1)


# the user's cache (real models converted once, shared with `make run`), read before any fixture
USER_CACHE = Path(os.environ.get("PEFTLAB_CACHE_DIR")
                  or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "peftlab")


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory, request) -> Path:
    path = tmp_path_factory.mktemp("cache")
    os.environ["PEFTLAB_CACHE_DIR"] = str(path)
    yield path
    if "not slow" in (request.config.getoption("-m") or ""):  # the fast suite stays on tiny models
        real = [p.name for p in path.glob("models/*") if not p.name.startswith(("tiny_", "."))]
        assert not real, f"a fast test built a real model into the test cache: {real}"


def compose(overrides: list[str] | None = None, config_name: str = "train", run_dir: Path | None = None):
    """Compose a shipped config like the CLI does, with paths.run_dir pointing at ``run_dir``."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from omegaconf import open_dict

    import peftlab.config  # noqa: F401  (registers the schemas)
    import peftlab.methods  # noqa: F401  (registers the method plug-ins)
    import peftlab.tasks  # noqa: F401  (registers the task plug-ins)

    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = hydra_compose(config_name=config_name, overrides=overrides or [])
    with open_dict(cfg):
        cfg.paths.run_dir = str(run_dir or "unused-run-dir")
    return cfg


def run_cli(*args: str, cwd: Path | None = None, timeout: int = 600, env: dict | None = None):
    """Run a console script of this venv; returns the CompletedProcess."""
    exe = Path(sys.executable).parent / args[0]
    full_env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", **(env or {})}
    return subprocess.run([str(exe), *args[1:]], cwd=cwd or ROOT, capture_output=True, text=True,
                          timeout=timeout, env=full_env)


def console_in_process(prog: str, argv: list[str], monkeypatch, capsys) -> tuple[int, str, str]:
    """The console script ``prog`` run in this process: (exit status, stdout, stderr)."""
    import importlib

    module = importlib.import_module(f"peftlab.commands.{prog.removeprefix('peftlab-')}")
    monkeypatch.setattr(sys, "argv", [prog, *argv])
    try:
        module.main()
        code = 0
    except SystemExit as exit:
        code = exit.code
    out, err = capsys.readouterr()
    return code, out, err


def build(overrides: list[str], cache_dir):
    """(validated config, task, backbone) of a composed config."""
    from peftlab.config import validate
    from peftlab.models import load_backbone
    from peftlab.tasks import make_task

    conf = validate(compose(overrides))
    task = make_task(conf.data)
    return conf, task, load_backbone(conf.model, cache_dir, task)


def wrap(backbone, method_cfg, task):
    """``apply_method`` on a loaded backbone, as training does."""
    from peftlab.methods import BuildContext, apply_method

    return apply_method(backbone.model, method_cfg, BuildContext(task, backbone.model, backbone.tokenizer,
                                                                 backbone.path))


@pytest.fixture(scope="session")
def tiny_backbone_factory(cache_dir):
    """Fresh tiny causal-LM backbones (built once into the cache, loaded anew per call)."""

    def make(model: str = "tiny_llama"):
        return build([f"model={model}"], cache_dir)[2]

    return make


def moved(model):
    """``model`` in eval mode with its trainable weights moved (seeded), so the method changes the outputs."""
    import torch

    torch.manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p) * 0.05)
    return model.eval()


@pytest.fixture(scope="session")
def causal_task():
    from peftlab.config import validate
    from peftlab.tasks import make_task

    return make_task(validate(compose(["model=tiny_llama"])).data)


def train(cfg):
    """Train a composed config into its ``paths.run_dir``, in this process (peftlab-train's work)."""
    from peftlab.engine.train import train_from_config

    return train_from_config(cfg, Path(cfg.paths.run_dir))


def evaluate_cfg(cfg):
    """Evaluate a composed eval config into its ``paths.run_dir``, in this process (peftlab-eval's work)."""
    from peftlab.engine.evaluate import evaluate_from_config

    return evaluate_from_config(cfg, Path(cfg.paths.run_dir))


# a finished tiny LoRA run that many tests read and none changes (merges go to their own folders)
FINISHED_RUN = ["debug=tiny", "trainer.max_steps=6", "optim.lr=1e-2", "zero_shot=false", "logger=none",
                "merge_after=false", "callbacks.checkpoint.every_n_train_steps=2"]


@pytest.fixture(scope="session")
def finished_run(tmp_path_factory, cache_dir) -> Path:
    """A finished tiny LoRA run (6 steps, checkpoints every 2, not merged), shared by the session:
    read it, copy it, merge it elsewhere; never write into it."""
    run_dir = tmp_path_factory.mktemp("shared") / "lora"
    run_dir.mkdir()
    train(compose(FINISHED_RUN, run_dir=run_dir))
    return run_dir


def fake_run(folder: Path, overrides: list[str], metrics: dict, curves: list[dict] | None = None) -> Path:
    """A finished run folder written by hand: .hydra/overrides.yaml, metrics.json and, given
    ``curves`` (rows of logs/metrics.csv), its log."""
    import json

    (folder / ".hydra").mkdir(parents=True)
    (folder / ".hydra" / "overrides.yaml").write_text("".join(f"- {o}\n" for o in overrides))
    (folder / "metrics.json").write_text(json.dumps({"status": "finished", **metrics}))
    if curves:
        keys = sorted({k for row in curves for k in row})
        (folder / "logs").mkdir()
        (folder / "logs" / "metrics.csv").write_text(
            ",".join(keys) + "\n" + "".join(",".join(str(row.get(k, "")) for k in keys) + "\n" for row in curves))
    return folder


def resume_ends_equal(common: list[str], tmp_path: Path, step: int, env: dict | None = None) -> tuple[Path, Path]:
    """Train with ``common`` uninterrupted, then again resumed from its step-``step`` checkpoint;
    both runs must end with the same adapter bytes. Returns the two run folders."""
    full, again = tmp_path / "full", tmp_path / "again"
    proc = run_cli("peftlab-train", *common, f"hydra.run.dir={full}", env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (ckpt,) = (full / "checkpoints").glob(f"step-{step}*.ckpt")
    proc = run_cli("peftlab-train", *common, f"resume_from={ckpt}", f"hydra.run.dir={again}", env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    # the adapter's weights (method=full: the whole model's)
    weights = [{p.name: p.read_bytes() for p in (d / "adapter").glob("*.safetensors")} for d in (full, again)]
    assert weights[0] and weights[0] == weights[1]
    return full, again


# make test hands whole files to its two workers (--dist loadfile) in collection order: the longest
# first, so that none of them starts last and leaves one worker idle at the end
LONGEST_FIRST = ["test_reliability.py", "test_methods.py", "test_preference.py", "test_rl.py", "test_bad_inputs.py",
                 "test_sweeps.py", "test_train.py", "test_merge.py", "test_config.py", "test_combine.py",
                 "test_precision.py", "test_dry_run.py", "test_plugins.py", "test_data_formats.py", "test_cards.py"]


def pytest_collection_modifyitems(config, items):
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: each file keeps its order
