"""The on-disk compile cache: in-process reuse, fast cached compiles in a fresh process, concurrent compiles, a
hash that covers the options, signatures checked before anything is executed, a private folder; and the forms a
spec argument takes (prebuilt name, path, text, Spec) on a cold cache."""

from __future__ import annotations

import dataclasses
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import model_path

import mirasc
from mirasc import module_cache, runtime
from mirasc.cachekey import cache_key, spec_hash
from mirasc.sample import random_inputs

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
    """mirasc/module_cache.py: 'A cached compile reads the file, hashes it and imports the module: neither lark nor
    sympy is touched.'"""
    _, second, _ = fresh_process_compiles
    assert second[1] == "False", "a cached compile imported sympy"
    assert second[2] == "False", "a cached compile imported lark"


def test_concurrent_compiles_of_a_new_spec(tmp_path):
    """Four processes compile the same new spec at once: one valid module, a signature that holds, no error."""
    text = ("model concurrent_test\nmemory mlp(depth = 2, expansion = 2)\ngate eta : scalar, range [0, inf)\n"
            "bias lp(2.5)\nretention none\nalgorithm gd(lr = eta)\n")
    code = (
        "import sys, torch, mirasc\n"
        f"op = mirasc.compile({text!r}, backend='torch')\n"
        "q = torch.randn(1, 5, 1, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(0))\n"
        "o, _ = op(q, q, q, gates={'eta': torch.full((1, 5, 1), 0.1, dtype=torch.float64)})\n"
        "print(float(o.sum()))\n"
        "from mirasc.cachekey import cache_key\n"
        f"print(cache_key({text!r}, None, 'torch'))\n"   # the key as those processes computed it
    )
    procs = [subprocess.Popen([sys.executable, "-c", code], env=_env(tmp_path), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, cwd=REPO) for _ in range(4)]
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
    assert _signature_holds(files[0], outs[0][0].split()[-1])
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
    assert [g.kind for g in a.meta.gates if g.name == "delta"] == ["channel"]
    assert [g.kind for g in b.meta.gates if g.name == "delta"] == ["scalar"]


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


def test_fingerprint_covers_the_checker(tmp_path):
    """The checker (mirasc/check/, a subpackage) and the components (mirasc/components/) decide what a spec
    compiles to: an edit there changes the fingerprint, as an edit to a top-level module does."""
    import shutil

    repo = Path(__file__).resolve().parents[1]
    for name in ("mirasc", "templates", "grammar", "models"):
        shutil.copytree(repo / name, tmp_path / name, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(repo / "pyproject.toml", tmp_path / "pyproject.toml")  # a checkout: its data beside the package

    def fingerprint() -> str:
        code = "from mirasc.cachekey import compiler_fingerprint; print(compiler_fingerprint())"
        env = {**os.environ, "PYTHONPATH": str(tmp_path)}
        return subprocess.run([sys.executable, "-c", code], env=env, cwd=tmp_path, capture_output=True, text=True,
                              check=True).stdout.strip()

    before = fingerprint()
    with open(tmp_path / "mirasc" / "check" / "components.py", "a", encoding="utf-8") as f:
        f.write("\n# an edit\n")
    after_check = fingerprint()
    assert after_check != before
    with open(tmp_path / "mirasc" / "components" / "maps" / "lq.py", "a", encoding="utf-8") as f:
        f.write("\n# an edit\n")
    assert fingerprint() != after_check



def _signature_holds(module: Path, key: str) -> bool:
    """Whether `module`'s .sig is the HMAC of `key` and its bytes under its cache's secret."""

    secret = module_cache._read_secret(module.parent / "key")
    sig = module.with_suffix(".sig").read_text().strip()
    return secret is not None and sig == module_cache._signature(secret, key, module.read_bytes())


# ------------------------------------------------------------------ what is executed is what was signed
_CANARY_SPEC = "model tamper_test\nmemory linear\nbias sum(log(1 + r^2))\nretention none\nalgorithm gd(lr = 1)\n"


def _tamper_code(canary: Path) -> str:
    return (
        "import warnings, torch, mirasc\n"
        "warnings.simplefilter('always')\n"
        f"op = mirasc.compile({_CANARY_SPEC!r}, backend='torch')\n"
        "x = torch.ones(1, 3, 1, 2, dtype=torch.float64)\n"
        "print(float(op(x, x, x)[0].sum()))\n"
        "from mirasc.cachekey import cache_key\n"
        f"print(cache_key({_CANARY_SPEC!r}, None, 'torch'))\n"   # the key as that process computed it
    )


@pytest.mark.parametrize("how", ["append code", "edit signature", "truncate", "replace with another module"])
def test_tampered_cache_file_is_regenerated_not_executed(tmp_path, how):
    cache, canary = tmp_path / "cache", tmp_path / "CANARY"
    first = _run(_tamper_code(canary), cache)
    (module,) = cache.glob("mirasc_torch_*.py")
    original = module.read_bytes()
    if how == "append code":
        module.write_text(original.decode() + f"\nopen({str(canary)!r}, 'w').write('ran')\n")
    elif how == "edit signature":
        module.with_suffix(".sig").write_text("0" * 64 + "\n")
        module.write_text(original.decode() + f"\nopen({str(canary)!r}, 'w').write('ran')\n")
    elif how == "truncate":
        module.write_bytes(original[: len(original) // 2])
    else:  # a module signed for another spec, renamed onto this one's name
        _run(_tamper_code(canary).replace("tamper_test", "other_test"), cache)
        other = next(p for p in cache.glob("mirasc_torch_*.py") if p != module)
        module.write_bytes(other.read_bytes())
        module.with_suffix(".sig").write_bytes(other.with_suffix(".sig").read_bytes())
    res = subprocess.run([sys.executable, "-c", _tamper_code(canary)], env=_env(cache), capture_output=True,
                         text=True, timeout=120, cwd=REPO)
    assert res.returncode == 0, res.stderr
    assert not canary.exists(), "the altered cached module was executed"
    assert res.stdout == first
    assert "does not match its signature" in res.stderr
    assert module.read_bytes() == original, "the altered module was not regenerated"
    assert _signature_holds(module, res.stdout.split()[-1])


def test_unsigned_module_is_not_executed(tmp_path, monkeypatch):
    """A module dropped into the cache without a signature (or with the key file replaced) is regenerated."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("MIRASC_CACHE", str(cache))
    monkeypatch.setattr(runtime, "_OPS", {})
    canary = tmp_path / "CANARY"
    key = cache_key(_CANARY_SPEC, None, "torch")
    cache.mkdir(mode=0o700)
    planted = cache / f"mirasc_torch_{key[:24]}.py"
    planted.write_text(f"open({str(canary)!r}, 'w').write('ran')\n")
    op = mirasc.compile(_CANARY_SPEC, backend="torch")
    assert not canary.exists()
    assert "class ChunkwiseMemory" in planted.read_text() and _signature_holds(planted, key)
    # a new key makes every signature fail: regenerated again, never executed
    planted.write_text(f"open({str(canary)!r}, 'w').write('ran')\n")
    (cache / "key").write_text("not a key\n")
    monkeypatch.setattr(runtime, "_OPS", {})
    with pytest.warns(RuntimeWarning, match="does not match its signature"):
        op2 = mirasc.compile(_CANARY_SPEC, backend="torch")
    assert not canary.exists() and op2 is not op and _signature_holds(planted, key)


def test_a_key_another_process_makes_first_is_kept(tmp_path, monkeypatch):
    """Two processes start on an empty cache: the one that finds no key, and then finds the other's in place when it
    links its own, signs with the other's (replacing it would void what the other has just signed)."""
    cache = tmp_path / "cache"
    cache.mkdir(mode=0o700)
    theirs = bytes(range(32))
    read = module_cache._read_secret
    calls = []

    def read_while_another_writes(path):
        calls.append(path)
        if len(calls) == 1:  # no key yet when read; the other process links its key right after
            path.write_text(theirs.hex() + "\n")
            return None
        return read(path)

    monkeypatch.setattr(module_cache, "_read_secret", read_while_another_writes)
    assert module_cache._cache_secret(cache) == theirs
    assert read(cache / "key") == theirs
    assert not [p for p in cache.iterdir() if p.name != "key"]  # no temporary key left behind


def test_cache_folder_is_private(tmp_path, monkeypatch):
    cache = tmp_path / "a" / "b" / "cache"
    monkeypatch.setenv("MIRASC_CACHE", str(cache))
    assert module_cache.cache_dir() == cache
    assert stat.S_IMODE(cache.stat().st_mode) == 0o700
    module_cache._cache_secret(cache)
    assert stat.S_IMODE((cache / "key").stat().st_mode) == 0o600
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    monkeypatch.setenv("MIRASC_CACHE", str(shared))
    with pytest.raises(RuntimeError, match="MIRASC_CACHE=.*other users can write"):
        module_cache.cache_dir()
    afile = tmp_path / "afile"
    afile.write_text("")
    monkeypatch.setenv("MIRASC_CACHE", str(afile))
    with pytest.raises(RuntimeError, match="MIRASC_CACHE"):
        module_cache.cache_dir()


# ------------------------------------------------------------------ the forms of a spec argument, cold
def _cold(tmp_path, monkeypatch) -> Path:
    cache = tmp_path / "cold"
    monkeypatch.setenv("MIRASC_CACHE", str(cache))
    monkeypatch.setattr(runtime, "_OPS", {})   # no in-process reuse either
    return cache


def _runs(op) -> None:
    B, T, H, D = 1, 5, 2, 4
    gen = torch.Generator().manual_seed(0)
    q, k, v, gates, params = random_inputs(op, B, T, H, D, torch.float64, generator=gen)
    o, _ = op(q, k, v, gates=gates, params=params)
    assert o.shape == (B, T, H, D) and torch.isfinite(o).all()


@pytest.mark.parametrize("form", ["prebuilt name", "path str", "pathlib.Path", "text", "bytes", "Spec",
                                  "Spec with options"])
def test_spec_forms_on_a_cold_cache(tmp_path, monkeypatch, form):
    cache = _cold(tmp_path, monkeypatch)
    path = model_path("yaad")
    arg, opts = {
        "prebuilt name": ("yaad", None),
        "path str": (path, None),
        "pathlib.Path": (Path(path), None),
        "text": (Path(path).read_text(), None),
        "bytes": (Path(path).read_bytes(), None),
        "Spec": (mirasc.load("yaad"), None),
        "Spec with options": (mirasc.load("yaad", {"huber_form": "token"}), {"huber_form": "token"}),
    }[form]
    op = mirasc.compile(arg, backend="torch")
    assert list(cache.glob("mirasc_torch_*.py")), "nothing compiled into the cold cache"
    assert op.options == opts
    delta = [g.kind for g in op.meta.gates if g.name == "delta"]
    assert delta == (["scalar"] if opts else ["channel"])
    assert op.spec.options == mirasc.load("yaad", opts).options
    _runs(op)
    spec = mirasc.load(arg)   # load takes the same forms
    assert spec.name == "yaad" and spec.options == op.spec.options


def test_spec_with_options_on_top(tmp_path, monkeypatch):
    _cold(tmp_path, monkeypatch)
    base = mirasc.load("moneta", {"normalisation": "none"})
    op = mirasc.compile(base, backend="torch", options={"p": 4})
    assert op.options == {"normalisation": "none", "p": 4.0}
    assert dict(op.spec.params)["p"] == 4.0 and dict(op.spec.options)["normalisation"] == "none"
    assert mirasc.load(base, {"p": 4}) == op.spec


def test_changed_spec_is_refused(tmp_path, monkeypatch):
    """A Spec edited after loading no longer matches its text, so it must not be filed under that text's key."""
    _cold(tmp_path, monkeypatch)
    spec = dataclasses.replace(mirasc.load("retnet"), chunk_size=16)
    with pytest.raises(ValueError, match="changed after loading"):
        mirasc.compile(spec, backend="torch")


def test_single_word_that_names_nothing(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(mirasc.SpecError) as exc:
        mirasc.compile("monet", backend="torch")
    msg = str(exc.value)
    assert "not a prebuilt spec" in msg and "moneta" in msg and "no such file" in msg and "not spec text" in msg
    assert "did you mean 'moneta'" in msg and exc.value.line == 1
    with pytest.raises(mirasc.SpecError, match="cannot read"):
        mirasc.load("nowhere/x.miras")


def test_prebuilt_name_that_is_also_a_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "moneta").write_text(Path(model_path("retnet")).read_text())
    with pytest.raises(mirasc.SpecError) as exc:
        mirasc.load("moneta")
    assert "both the prebuilt spec" in str(exc.value) and "./moneta" in str(exc.value)
    assert mirasc.load("./moneta").name == "retnet"           # the file, said plainly
    assert mirasc.load(Path("moneta")).name == "retnet"


def test_cli_takes_prebuilt_names(capsys):
    from mirasc.cli import main

    assert main(["check", "moneta", "yaad"]) == 0
    out = capsys.readouterr().out
    assert "moneta: ok" in out and "yaad: ok" in out
    assert main(["check", "monet"]) == 1
    assert "did you mean 'moneta'" in capsys.readouterr().err


# Momentum with a channel decay gate: its chunk program keeps a (C, C, D) tile, which no Triton kernel holds.
NO_TRITON_FORM = """model channel_momentum
memory linear
gate alpha : channel, range (0, 1], activation sigmoid
gate eta   : scalar, range [0, inf), activation softplus
gate theta : scalar, range [0, 1), activation sigmoid
bias l2()
retention decay(alpha)
algorithm momentum(lr = eta, momentum = theta)
"""


def test_a_spec_without_a_triton_form_is_refused_plainly_and_runs_on_torch(tmp_path, monkeypatch, capsys):
    """Asked for Triton: an error naming the file and the tile. "auto" on a GPU machine: a warning, and the torch
    backend runs the op. `mirasc compile -o`: the torch module is written, the Triton one is one line on stderr."""
    from mirasc import runtime
    from mirasc.cli import main
    from mirasc.emit_triton import CubeTileError

    spec = tmp_path / "channel_momentum.miras"
    spec.write_text(NO_TRITON_FORM)
    with pytest.raises(CubeTileError, match=r"channel_momentum\.miras: the Triton backend cannot run this spec: .*"
                                            r"three axes"):
        mirasc.compile(spec, backend="triton")
    monkeypatch.setattr(runtime, "triton_usable", lambda: True)  # as on a machine with a GPU and triton
    with pytest.warns(UserWarning, match="no Triton kernels for this spec, the torch backend runs it"):
        op = mirasc.compile(spec, backend="auto")
    assert op.triton_module is None
    q = torch.randn(1, 5, 1, 4)
    gates = {n: torch.full(op.gate_shapes(1, 5, 1, 4)[n], 0.5) for n in ("alpha", "eta", "theta")}
    out, _ = op(q, q, q, gates=gates)
    assert out.shape == q.shape and torch.isfinite(out).all()
    assert main(["compile", str(spec), "-o", str(tmp_path / "gen")]) == 1
    err = capsys.readouterr().err
    assert "no triton module" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert (tmp_path / "gen" / "torch" / "channel_momentum.py").exists()
    assert not (tmp_path / "gen" / "triton" / "channel_momentum.py").exists()
    assert main(["aot", str(spec)]) == 1
    err = capsys.readouterr().err
    assert "no Triton kernels to compile" in err and len(err.strip().splitlines()) == 1
