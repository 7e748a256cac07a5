"""The on-disk compile cache: in-process reuse, fast cached compiles in a fresh process, concurrent compiles,
and a hash that covers the options."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import model_path

import mirasc
from mirasc.cachekey import spec_hash

REPO = Path(__file__).resolve().parent.parent


def _env(cache: Path) -> dict:
    env = dict(os.environ)
    env["MIRASC_CACHE"] = str(cache)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def _run(code: str, cache: Path, timeout: float = 120) -> str:
    res = subprocess.run([sys.executable, "-c", code], env=_env(cache), capture_output=True, text=True,
                         timeout=timeout, cwd=REPO)
    assert res.returncode == 0, res.stderr
    return res.stdout


def test_same_spec_twice_is_same_object():
    a = mirasc.compile(model_path("moneta"), backend="torch")
    b = mirasc.compile(model_path("moneta"), backend="torch")
    assert a is b
    text = Path(model_path("moneta")).read_text()
    c = mirasc.compile(text, backend="torch")  # same text, given inline: same hash, same op
    assert c is a


@pytest.fixture(scope="module")
def fresh_process_compiles(tmp_path_factory):
    """Compile titans in a fresh process with a cold cache, then again in another fresh process (cached)."""
    cache = tmp_path_factory.mktemp("cache")
    spec = model_path("titans")
    timing = (
        "import time, torch, mirasc\n"
        "t0 = time.perf_counter()\n"
        f"op = mirasc.compile({spec!r}, backend='torch')\n"
        "print(time.perf_counter() - t0)\n"
        "import sys; print('sympy' in sys.modules, 'lark' in sys.modules)\n"
    )
    first = _run(timing, cache).split()
    written = list(cache.glob("mirasc_*.py"))
    second = _run(timing, cache).split()
    return first, second, written


def test_cached_compile_in_fresh_process_is_fast(fresh_process_compiles):
    first, second, written = fresh_process_compiles
    assert written, "nothing written to the cache"
    cold, warm = float(first[0]), float(second[0])
    assert first[1] == "True", "the cold compile should have derived with sympy"
    assert warm < 0.5, f"cached compile took {warm:.3f} s (cold {cold:.3f} s)"


def test_cached_compile_does_not_import_sympy_or_lark(fresh_process_compiles):
    """mirasc/runtime.py: 'A cached compile reads the file, hashes it and imports the module: neither lark nor
    sympy is touched.'"""
    _, second, _ = fresh_process_compiles
    assert second[1] == "False", "a cached compile imported sympy"
    assert second[2] == "False", "a cached compile imported lark"


def test_concurrent_compiles_of_a_new_spec(tmp_path):
    text = ("model concurrent_test\nmemory mlp(depth = 2, expansion = 2)\ngate eta : scalar, range [0, inf)\n"
            "bias lp(2.5)\nretention none\nalgorithm gd(lr = eta)\n")
    code = (
        "import sys, torch, mirasc\n"
        f"op = mirasc.compile({text!r}, backend='torch')\n"
        "q = torch.randn(1, 5, 1, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(0))\n"
        "o, _ = op(q, q, q, gates={'eta': torch.full((1, 5, 1), 0.1, dtype=torch.float64)})\n"
        "print(float(o.sum()))\n"
    )
    procs = [subprocess.Popen([sys.executable, "-c", code], env=_env(tmp_path), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, cwd=REPO) for _ in range(3)]
    outs = [p.communicate(timeout=180) for p in procs]
    for p, (_, err) in zip(procs, outs):
        assert p.returncode == 0, err
    assert len({out.strip() for out, _ in outs}) == 1, "the processes computed different outputs"
    files = list(tmp_path.glob("mirasc_*.py"))
    assert len(files) == 1, files
    assert not list(tmp_path.glob("*.tmp")), "a temporary file was left behind"
    source = files[0].read_text()
    compile(source, str(files[0]), "exec")  # complete, valid Python
    assert "class ChunkwiseMemory" in source
    # and a later process imports it from the cache
    assert _run(code, tmp_path).strip() == outs[0][0].strip()


def test_options_change_the_hash(tmp_path, monkeypatch):
    text = Path(model_path("yaad")).read_text()
    assert spec_hash(text, None, "torch") != spec_hash(text, {"huber_form": "token"}, "torch")
    assert spec_hash(text, None, "torch") == spec_hash(text, {}, "torch")
    assert spec_hash(text, None, "torch") != spec_hash(text + "\n", None, "torch")
    a = mirasc.compile(model_path("yaad"), backend="torch")
    b = mirasc.compile(model_path("yaad"), backend="torch", options={"huber_form": "token"})
    assert a is not b
    assert a.module is not b.module
    assert a.module.__file__ != b.module.__file__
    assert [g["kind"] for g in a.meta["gates"] if g["name"] == "delta"] == ["channel"]
    assert [g["kind"] for g in b.meta["gates"] if g["name"] == "delta"] == ["scalar"]


def test_cold_cache_writes_module(tmp_path, monkeypatch):
    monkeypatch.setenv("MIRASC_CACHE", str(tmp_path))
    text = "model cold_cache_test\nmemory linear\nbias sum(log(1 + r^2))\nretention none\nalgorithm gd(lr = 1)\n"
    op = mirasc.compile(text, backend="torch")
    assert Path(op.module.__file__).parent == tmp_path
    assert Path(op.module.__file__).exists()


def test_cache_key_follows_the_compiler_sources(monkeypatch):
    """A module cached by an older compiler is never reused: the key includes the sources' fingerprint."""
    from mirasc import cachekey

    text = "model x\nmemory linear\nbias l2()\nalgorithm gd(lr = 1)\n"
    before = cachekey.cache_key(text, None, "torch")
    monkeypatch.setattr(cachekey, "compiler_fingerprint", lambda: "another compiler")
    assert cachekey.cache_key(text, None, "torch") != before
    assert cachekey.spec_hash(text, None, "torch") == cachekey.spec_hash(text, None, "torch")
