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


# the user's cache (real models converted once, shared with `make run`), read before any fixture
USER_CACHE = Path(os.environ.get("PEFTLAB_CACHE_DIR")
                  or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "peftlab")


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("cache")
    os.environ["PEFTLAB_CACHE_DIR"] = str(path)
    return path


def compose(overrides: list[str] | None = None, config_name: str = "train", run_dir: Path | None = None):
    """Compose a shipped config like the CLI does, with paths.run_dir pointing at ``run_dir``."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from omegaconf import open_dict

    import peftlab.config  # noqa: F401  (registers the schemas)

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


@pytest.fixture(scope="session")
def tiny_backbone_factory(cache_dir):
    """Fresh tiny backbones (built once into the cache, loaded anew per call)."""
    from peftlab.config import validate
    from peftlab.models import load_backbone

    def make(model: str = "tiny_llama", task_type: str = "causal_lm"):
        conf = validate(compose([f"model={model}"]))
        return load_backbone(conf.model, cache_dir, task_type)

    return make
