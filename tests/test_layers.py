"""The import contract (pyproject.toml, [tool.importlinter]): layers point down, no cycles, every module in a layer."""

from __future__ import annotations

import os
import pkgutil
import shutil
import subprocess
import sys
import tomllib

import ray_recall

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LINT = os.path.join(os.path.dirname(sys.executable), "lint-imports")


def _contracts() -> list[dict]:
    with open(os.path.join(REPO, "pyproject.toml"), "rb") as f:
        return tomllib.load(f)["tool"]["importlinter"]["contracts"]


def _lint(root: str) -> subprocess.CompletedProcess:
    """lint-imports on the package under `root` (the repository or a copy of it)."""
    env = {**os.environ, "PYTHONPATH": root}
    return subprocess.run([LINT, "--config", os.path.join(root, "pyproject.toml"), "--no-cache"], cwd=root, env=env,
                          capture_output=True, text=True, timeout=120)


def test_the_import_contract_holds():
    out = _lint(REPO)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "Layers point down KEPT" in out.stdout and "0 broken" in out.stdout


def test_every_module_is_in_a_layer():
    layers = next(c for c in _contracts() if c["type"] == "layers")["layers"]
    entries = [m.strip() for layer in layers for m in layer.split("|")]
    modules = [m.name for m in pkgutil.walk_packages(ray_recall.__path__, "ray_recall.")]
    containers = {"ray_recall.stages"}  # a package whose children are the layer's members
    outside = [m for m in modules if m not in containers
               and not any(m == e or m.startswith(e + ".") for e in entries)]
    assert not outside, f"modules in no layer of pyproject.toml's contract: {outside}"


def test_an_upward_import_breaks_the_contract(tmp_path):
    """The check can fail: a model importing the pipeline (an upward import) is reported."""
    shutil.copytree(os.path.join(REPO, "ray_recall"), tmp_path / "ray_recall")
    shutil.copy(os.path.join(REPO, "pyproject.toml"), tmp_path / "pyproject.toml")
    with open(tmp_path / "ray_recall" / "models" / "dssm.py", "a") as f:
        f.write("\nimport ray_recall.pipeline  # planted by the test\n")
    out = _lint(str(tmp_path))
    assert out.returncode != 0
    assert "ray_recall.models.dssm -> ray_recall.pipeline" in out.stdout, out.stdout[-3000:]


def test_the_data_stage_runs_without_torch():
    """The preprocess stage (what Ray Data's workers import to build sequences) does not load torch: a worker
    process would pay ~1.6 s and a few hundred MB for it, per process."""
    code = ("import sys, ray_recall.stages.preprocess, ray_recall.rundir, ray_recall.batch\n"
            "assert 'torch' not in sys.modules, sorted(m for m in sys.modules if m.startswith('ray_recall'))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
