"""`pip install .` (a wheel, not editable) gives a working `cmrfm` with its configs packaged.

The wheel is built from a copy of the tree (a build in place would leave build/ behind, and a
stale build/ leaks old files into the next wheel) and installed without dependencies into a fresh
venv that borrows this venv's packages through a .pth file, so torch is not installed again; the
commands then run from a folder outside the repository. About 40-60 s, most of it Lightning's
import in the two `cmrfm pretrain` runs.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from importlib.util import find_spec
from pathlib import Path

import pytest

from cmrfm import __version__

REPO = Path(__file__).resolve().parents[2]
# Top-level folders a build never reads; __pycache__, *.egg-info and *_cache anywhere.
NOT_BUILT = {".git", ".venv", "runs", "tests", "benchmarks", "build", "dist", "shards", "wandb"}
PACKAGES = ("cmrfm", "cmrfm_io", "data_shards", "finetune", "foundation", "pretext")


def _skip(folder: str, names: list[str]) -> set[str]:
    top = Path(folder) == REPO
    return {
        n
        for n in names
        if n == "__pycache__"
        or n.endswith((".egg-info", "_cache", ".cache"))
        or (top and n in NOT_BUILT)
    }


def _run(args: list[str], cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    env["OMP_NUM_THREADS"] = "1"
    result = subprocess.run(
        args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )
    assert result.returncode == 0, f"{args}: exit {result.returncode}\n{result.stderr[-3000:]}"
    return result


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The wheel, and the venv it is installed in: {"wheel", "venv", "bin", "outside"}."""
    root = tmp_path_factory.mktemp("wheel")
    source, dist, venv, outside = (root / n for n in ("source", "dist", "venv", "outside"))
    shutil.copytree(REPO, source, symlinks=True, ignore=_skip)  # cmrfm/configs stays a link
    outside.mkdir()
    # This venv's setuptools when it has one (no download); else pip fetches pyproject's.
    isolation = [] if find_spec("setuptools") is None else ["--no-build-isolation"]
    _run([sys.executable, "-m", "pip", "wheel", str(source), "--no-deps", *isolation,
          "-q", "-w", str(dist)], cwd=outside)  # fmt: skip
    (wheel,) = dist.glob("cmrfm-*.whl")
    # --without-pip: a venv's own pip/setuptools would shadow this venv's; pip comes via the .pth.
    _run([sys.executable, "-m", "venv", "--without-pip", str(venv)], cwd=outside)
    python = venv / "bin" / "python"
    site = _run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                cwd=outside).stdout.strip()  # fmt: skip
    # Plain paths: a .pth's lines are added to sys.path, and .pth files there are not run, so the
    # editable install's finder (which would map cmrfm onto this checkout) stays off.
    ours = dict.fromkeys(sysconfig.get_paths()[k] for k in ("purelib", "platlib"))
    Path(site, "_cmrfm_test_deps.pth").write_text("".join(f"{p}\n" for p in ours))
    # --ignore-installed: never touch the editable cmrfm that pip sees through the .pth.
    _run([str(python), "-m", "pip", "install", "-q", "--no-deps", "--no-index",
          "--ignore-installed", str(wheel)], cwd=outside)  # fmt: skip
    return {"wheel": wheel, "venv": venv, "bin": venv / "bin", "outside": outside}


def test_the_wheel_holds_every_config_hub_file_and_package(installed: dict[str, Path]) -> None:
    names = set(zipfile.ZipFile(installed["wheel"]).namelist())
    configs = {f"cmrfm/configs/{p.name}" for p in (REPO / "configs").iterdir() if p.is_file()}
    assert configs, "no configs in the repository"
    assert configs <= names, f"configs missing from the wheel: {sorted(configs - names)}"
    hub = {f"cmrfm/models/{p.relative_to(REPO / 'models').as_posix()}"
           for p in (REPO / "models").glob("*/*") if p.is_file()}  # fmt: skip
    assert hub <= names, f"released model files missing from the wheel: {sorted(hub - names)}"
    packages = {f"{p.relative_to(REPO).as_posix()}"
                for name in PACKAGES for p in (REPO / name).rglob("__init__.py")}  # fmt: skip
    assert packages <= names, f"packages missing from the wheel: {sorted(packages - names)}"


def test_the_installed_cmrfm_is_the_wheel_with_its_configs(installed: dict[str, Path]) -> None:
    probe = """
import importlib.resources, json
from importlib.util import find_spec
import cmrfm
from cmrfm.shipped import config_path
from cmrfm_io.shipped import MODELS
from foundation.released import model_path
try:
    model_path("no-such-model")
    missing = None
except FileNotFoundError as error:
    missing = str(error)
print(json.dumps({
    "cmrfm": cmrfm.__file__, "foundation": find_spec("foundation").origin,
    "configs": str(cmrfm.CONFIGS), "models": str(MODELS), "missing": missing,
    "listed": sorted(p.name for p in cmrfm.CONFIGS.iterdir()),
    "resources": sorted(p.name for p in importlib.resources.files("cmrfm.configs").iterdir()),
    "by_name": str(config_path("configs/pretrain_mae_phantom.yaml")),
}))
"""
    venv = installed["venv"].resolve()
    out = _run([str(installed["bin"] / "python"), "-c", probe], cwd=installed["outside"])
    seen = json.loads(out.stdout)
    for key in ("cmrfm", "foundation", "configs", "models", "by_name"):
        assert Path(seen[key]).resolve().is_relative_to(venv), (key, seen[key])
    shipped = sorted(p.name for p in (REPO / "configs").iterdir() if p.is_file())
    assert seen["listed"] == shipped
    assert seen["resources"] == shipped
    assert Path(seen["by_name"]).name == "pretrain_mae_phantom.yaml"
    # An absent released model: a message naming the folder and the way around it.
    assert "no released model 'no-such-model'" in seen["missing"]
    assert seen["models"] in seen["missing"] and "--pretrained" in seen["missing"]


def test_the_command_runs_outside_the_repository(installed: dict[str, Path]) -> None:
    cmrfm, outside = str(installed["bin"] / "cmrfm"), installed["outside"]
    assert _run([cmrfm, "--version"], cwd=outside).stdout.strip() == f"cmrfm {__version__}"
    helped = _run([cmrfm, "pretrain", "--help"], cwd=outside).stdout
    assert helped.startswith("cmrfm pretrain:") and "--resume CKPT|last" in helped
    assert "--trainer.max_steps" in helped  # LightningCLI's own list followed
    # The README's `--config configs/X.yaml`, from a folder without configs/: the shipped file,
    # parsed by LightningCLI (its logger folder, not the default config's, shows which was read).
    config = "configs/pretrain_mae_contrastive_phantom.yaml"
    printed = _run([cmrfm, "pretrain", "--config", config, "--print_config"], cwd=outside).stdout
    assert "save_dir: runs/pretrain_mae_contrastive_phantom" in printed
    assert not (outside / "runs").exists()  # printing a config trains nothing
