"""The wheel: it ships every data file a user needs, and the package works from it outside the checkout, both
unpacked (what pip installs) and imported straight from the zip. scripts/wheel_check.sh goes further in CI
(pip install of the wheel into a fresh venv, then the CLI and a short training run)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SPECS = sorted(p.name for p in (REPO / "models").glob("*.miras"))
CONFIGS = sorted(p.name for p in (REPO / "models" / "configs").glob("*.toml"))


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """Build the wheel from a copy of the sources (the build writes build/ and *.egg-info beside them)."""
    src = tmp_path_factory.mktemp("src")
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, src / name)
    for name in ("mirasc", "grammar", "templates", "models"):
        shutil.copytree(REPO / name, src / name, ignore=ignore)
    out = tmp_path_factory.mktemp("dist")
    res = subprocess.run([sys.executable, "-m", "pip", "wheel", str(src), "--no-deps", "--no-build-isolation",
                          "--disable-pip-version-check", "-q", "-w", str(out)], capture_output=True, text=True,
                         timeout=300)
    assert res.returncode == 0, res.stderr
    (whl,) = out.glob("mirasc-*.whl")
    return whl


def test_wheel_ships_the_data(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    need = {"mirasc/grammar/miras.lark", "mirasc/templates/torch_module.py.j2", "mirasc/templates/triton_module.py.j2",
            "mirasc/stdlib.miras"}
    need |= {f"mirasc/specs/{n}" for n in SPECS} | {f"mirasc/specs/configs/{n}" for n in CONFIGS}
    assert not need - names, sorted(need - names)
    assert len(SPECS) >= 11 and "moneta.miras" in SPECS and "tiny.toml" in CONFIGS


def test_wheel_ships_every_module(wheel):
    """Every module of the source tree is in the wheel (a subpackage missing from pyproject's list is not: the Triton
    launcher, mirasc.backends, once was)."""
    names = set(zipfile.ZipFile(wheel).namelist())
    modules = {p.relative_to(REPO).as_posix() for p in (REPO / "mirasc").rglob("*.py") if "__pycache__" not in p.parts}
    assert not modules - names, sorted(modules - names)


def _python(code: str, pythonpath: Path, cwd: Path, timeout: float = 300) -> str:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PYTHONPATH"] = str(pythonpath)
    env["MIRASC_CACHE"] = str(cwd / "cache")
    res = subprocess.run([sys.executable, "-c", code], env=env, cwd=cwd, capture_output=True, text=True,
                         timeout=timeout)
    assert res.returncode == 0, res.stdout + res.stderr
    return res.stdout


def test_unpacked_wheel_works_outside_the_checkout(wheel, tmp_path):
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    work = tmp_path / "work"
    work.mkdir()
    code = f"""
import sys, torch, mirasc
from pathlib import Path
from mirasc.resources import resource_dir
from mirasc.train.config import config_path, resolve_spec
site = Path({str(site)!r})
assert Path(mirasc.__file__).is_relative_to(site), mirasc.__file__
for name in ("grammar", "templates", "specs"):
    assert resource_dir(name).is_relative_to(site), (name, resource_dir(name))
assert [p + ".miras" for p in mirasc.prebuilt_names()] == {SPECS!r}
assert config_path("tiny").is_relative_to(site) and Path(resolve_spec("moneta")).is_relative_to(site)
op = mirasc.compile("memora", backend="torch")
from mirasc.sample import random_inputs
q, k, v, g, p = random_inputs(op, 1, 9, 2, 4, torch.float32)
o, _ = op(q, k, v, gates=g, params=p)
assert o.shape == (1, 9, 2, 4) and torch.isfinite(o).all()
from mirasc.cli import main
assert main(["check", "moneta"]) == 0
assert main(["explain", "yaad"]) == 0
print("OK")
"""
    out = _python(code, site, work)
    assert out.strip().endswith("OK")
    assert "moneta: ok" in out and "yaad" in out


def test_zipped_package_finds_its_data(wheel, tmp_path):
    """Imported from the zip itself (zipimport): the data folders come out as real folders (lark and jinja2 read
    files), and the grammar parses a prebuilt spec."""
    code = """
import zipfile
import mirasc
from mirasc import resources
assert ".whl" in mirasc.__file__, mirasc.__file__
assert not isinstance(resources.resources.files("mirasc"), type(resources.Path()))
for name, probe in (("grammar", "miras.lark"), ("templates", "torch_module.py.j2"), ("specs", "moneta.miras")):
    folder = resources.resource_dir(name)
    assert (folder / probe).is_file(), (name, folder)
assert (resources.resource_dir("specs") / "configs" / "tiny.toml").is_file()
assert resources.resource_file("stdlib.miras").read_text().strip()
assert "moneta" in mirasc.prebuilt_names()
from mirasc.parse import parse
from mirasc.sources import resolve
src = resolve("moneta")
prog = parse(src.text, src.file)
print("OK", len(prog.stmts))
"""
    out = _python(code, wheel, tmp_path)
    assert out.startswith("OK") and int(out.split()[1]) > 5
