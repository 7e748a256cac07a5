"""The compile cache: where a compiled spec's generated modules are kept, and how far they are trusted.

A compiled spec is a generated Python module (mirasc.codegen), cached on disk under `cache_dir()` by the hash of
the spec text, the options, the backend and the compiler's own sources (mirasc.cachekey).

The cache is trusted only as far as it is verified, because what is in it gets executed. Beside each module
`NAME.py` lies `NAME.sig`: an HMAC-SHA256, under a random secret made for that cache (`key`, mode 0600), of the
cache key and the module's SHA-256. A cached compile reads the module's bytes once, checks the signature, and
executes exactly those bytes (never the file a second time, never a `__pycache__` byte code). A module whose
signature does not match (edited, truncated, copied in from another cache) is regenerated and overwritten, never
executed. The folder is created 0700, and refused when it belongs to another user or others can write to it.
Files are written atomically (a temporary file, then os.replace), so processes compiling the same spec at once
each execute the complete module they generated. A cached compile imports neither lark nor sympy.
"""

from __future__ import annotations

import builtins
import hashlib
import hmac
import importlib.machinery
import linecache
import os
import secrets
import stat
import tempfile
import warnings
from pathlib import Path
from types import ModuleType
from typing import Any

import torch

from .cachekey import cache_key

_SIGNATURE_DOMAIN = b"mirasc-cache-1\0"


def cache_dir() -> Path:
    """The compile cache: $MIRASC_CACHE, else ~/.cache/mirasc. Created 0700; refused (RuntimeError naming it) when
    it is not a folder of this user's that only this user can write to, since its modules are executed."""
    env = os.environ.get("MIRASC_CACHE")
    path = Path(env or os.path.join(os.path.expanduser("~"), ".cache", "mirasc"))
    where = f"MIRASC_CACHE={env}" if env else f"the compile cache {path}"
    try:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
        st = os.stat(path)
    except OSError as e:
        raise RuntimeError(f"{where}: cannot create the folder ({e.strerror or e}); set MIRASC_CACHE to a folder "
                           f"you can write to") from None
    if not stat.S_ISDIR(st.st_mode):
        raise RuntimeError(f"{where}: not a folder; set MIRASC_CACHE to a private folder")
    if os.name == "posix":
        if st.st_uid != os.getuid():
            raise RuntimeError(f"{where}: the folder belongs to another user (uid {st.st_uid}), and compiled modules "
                               f"are executed from it: set MIRASC_CACHE to a folder of your own")
        if st.st_mode & 0o022:
            raise RuntimeError(f"{where}: other users can write to the folder (mode {stat.S_IMODE(st.st_mode):o}), "
                               f"and compiled modules are executed from it: chmod 700 it or set MIRASC_CACHE to a "
                               f"private folder")
    return path


def _read_secret(path: Path) -> bytes | None:
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    except OSError:
        return None
    with os.fdopen(fd, "rb") as f:
        data = f.read(200)
    try:
        secret = bytes.fromhex(data.decode("ascii").strip())
    except (UnicodeDecodeError, ValueError):
        return None
    return secret if len(secret) == 32 else None


def _cache_secret(folder: Path) -> bytes:
    """The cache's signing secret, made on first use. A malformed one is replaced (every signature made with the
    old one then fails, and those modules are regenerated). A key that was missing when read is only ever linked
    into place: where another process made one in the meantime, that key stays (replacing it would void the
    signatures that process has just made with it)."""
    path = folder / "key"
    present = os.path.lexists(path)  # before the read: a key present but unreadable is malformed
    secret = _read_secret(path)
    if secret is not None:
        return secret
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".key.", suffix=".tmp")  # mode 0600
    try:
        with os.fdopen(fd, "w", encoding="ascii") as f:
            f.write(secrets.token_hex(32) + "\n")
        if present:
            os.replace(tmp, path)
        else:
            try:
                os.link(tmp, path)  # atomic, and never replaces the key another process has just made
            except FileExistsError:
                pass
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    secret = _read_secret(path)
    if secret is None:
        raise RuntimeError(f"{path}: cannot read the compile cache's key; remove it or set MIRASC_CACHE elsewhere")
    return secret


def _signature(secret: bytes, key: str, source: bytes) -> str:
    msg = _SIGNATURE_DOMAIN + key.encode("ascii") + b"\0" + hashlib.sha256(source).digest()
    return hmac.new(secret, msg, hashlib.sha256).hexdigest()


def _verified_source(path: Path, secret: bytes, key: str) -> str | None:
    """The cached module's text if its signature matches, else None (missing, torn, edited or foreign)."""
    sig_path = path.with_suffix(".sig")
    try:
        data = path.read_bytes()
        sig = sig_path.read_bytes().decode("ascii", errors="replace").strip()
    except FileNotFoundError:
        return None
    except OSError as e:
        raise RuntimeError(f"{path}: cannot read the cached module ({e.strerror or e})") from None
    if not hmac.compare_digest(sig, _signature(secret, key, data)):
        warnings.warn(f"mirasc: the cached module {path} does not match its signature (changed after it was "
                      f"written); it is not executed but regenerated", RuntimeWarning, stacklevel=5)
        return None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:  # pragma: no cover - a signed module is always UTF-8
        return None


def exec_module(source: str, path: Path, name: str) -> ModuleType:
    """A module executed from `source` (text already verified), filed under `path` for tracebacks."""
    module = ModuleType(name)
    module.__file__ = str(path)
    module.__spec__ = importlib.machinery.ModuleSpec(name, None, origin=str(path))
    module.__mirasc_source__ = source  # what MemoryOp._variant re-executes, instead of reading the file again
    # inspect.getsource (Triton's @jit reads its kernels' source) and tracebacks read these lines, not the file;
    # an entry without mtime is never invalidated by linecache.checkcache.
    linecache.cache[str(path)] = (len(source), None, source.splitlines(True), str(path))
    exec(builtins.compile(source, str(path), "exec", dont_inherit=True), module.__dict__)
    return module


def write_atomic(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as f:  # the bytes that are signed: no translation
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def spec_source(spec_or_path, options) -> tuple[str, str, dict | None, Any]:
    """(text, file, options, Spec or None) of a prebuilt name, path, spec text or Spec (see mirasc.sources).
    A Spec keeps the options it was loaded with; `options` given with it apply on top."""
    from .spec import Spec

    if isinstance(spec_or_path, Spec):
        from .loader import load, spec_options

        spec = load(spec_or_path, options) if options else spec_or_path
        return spec.source, spec.file, (spec_options(spec) or None), spec
    from .sources import resolve

    src = resolve(spec_or_path)
    return src.text, src.file, (dict(options) if options else None), None


def read_spec(spec_or_path) -> tuple[str, str]:
    """(text, file name) of a prebuilt name, path, spec text or Spec."""
    text, file, _, _ = spec_source(spec_or_path, None)
    return text, file


def generated_module(text: str, file: str, options: dict | None, backend: str, spec=None) -> tuple[ModuleType, str]:
    """The generated module of one backend ("torch" or "triton"): the cached one when its signature holds, else
    generated (from `spec` when given, else from the text) and cached."""
    key = cache_key(text, options, backend)
    folder = cache_dir()
    path = folder / f"mirasc_{backend}_{key[:24]}.py"
    secret = _cache_secret(folder)
    source = _verified_source(path, secret, key)
    if source is None:
        from .codegen import generate, generate_triton

        if spec is None:
            from .loader import load_source

            spec = load_source(text, file, options)
        source = (generate if backend == "torch" else generate_triton)(spec, options)
        write_atomic(path, source)
        write_atomic(path.with_suffix(".sig"), _signature(secret, key, source.encode("utf-8")) + "\n")
    if backend == "triton":
        _prepare_triton()
    return exec_module(source, path, f"mirasc_generated_{backend}_{key[:16]}"), key


def _prepare_triton() -> None:
    """Triton kernels need a GPU, or the interpreter, which must be chosen before triton is imported (its own
    library functions are defined at import time)."""
    import sys

    if not torch.cuda.is_available():
        if "triton" in sys.modules and os.environ.get("TRITON_INTERPRET") != "1":
            raise RuntimeError("backend='triton' on a machine without a GPU runs the Triton interpreter, which "
                               "must be chosen before triton is imported: set TRITON_INTERPRET=1 at start-up")
        os.environ["TRITON_INTERPRET"] = "1"
    try:
        import triton  # noqa: F401
    except ImportError as e:
        raise RuntimeError("backend='triton' needs the triton package (pip install triton)") from e


def triton_usable() -> bool:
    if not torch.cuda.is_available():
        return False
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True
