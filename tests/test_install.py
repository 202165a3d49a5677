"""peftlab installs anywhere: a non-editable wheel, in a fresh environment, runs from any folder
with the configs it carries (``peftlab.conf``)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig

from conftest import ROOT


def test_the_wheel_trains_from_any_folder(tmp_path, cache_dir):
    # build from a copy of the sources, so that the build leaves nothing in the checkout
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, src / name)
    for name in ("src", "conf"):
        shutil.copytree(ROOT / name, src / name, ignore=shutil.ignore_patterns("local", "__pycache__", "*.egg-info"))
    (src / "conf" / "local").mkdir()  # a machine's own settings stay out of the wheel
    (src / "conf" / "local" / "default.yaml").write_text("seed: 7\n")
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                            "-w", str(tmp_path / "dist"), str(src)], capture_output=True, text=True)
    assert build.returncode == 0, build.stderr[-2000:]
    (wheel,) = (tmp_path / "dist").glob("peftlab-*.whl")

    # a fresh environment that sees this environment's dependencies, but not its editable peftlab
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    site = next((venv / "lib").glob("python*/site-packages"))
    (site / "dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    install = subprocess.run([sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"), "install",
                              "--no-deps", "-q", str(wheel)], capture_output=True, text=True)
    assert install.returncode == 0, install.stderr[-2000:]

    work = tmp_path / "elsewhere"
    work.mkdir()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PEFTLAB_CACHE_DIR": str(cache_dir)}
    where = subprocess.run([str(venv / "bin" / "python"), "-c",
                            "import peftlab.config as c; print(c.__file__); print(c.CONF_DIR)"],
                           cwd=work, capture_output=True, text=True, env=env)
    module, conf_dir = where.stdout.split()
    assert module.startswith(str(site)) and conf_dir == str(site / "peftlab" / "conf"), where.stdout
    assert not (site / "peftlab" / "conf" / "local").exists()
    run = subprocess.run([str(venv / "bin" / "peftlab-train"), "debug=tiny", "merge_after=false", "logger=none",
                          "hydra.run.dir=run"], cwd=work, capture_output=True, text=True, env=env, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    assert json.loads((work / "run" / "metrics.json").read_text())["train"]["steps"] == 4
