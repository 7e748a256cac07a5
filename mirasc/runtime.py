"""runtime: `mirasc.compile` and the `MemoryOp` a compiled spec becomes.

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
import copy
import hashlib
import hmac
import importlib.machinery
import itertools
import linecache
import math
import os
import secrets
import stat
import tempfile
import threading
import warnings
from collections import namedtuple
from pathlib import Path
from types import ModuleType
from typing import Any

import torch

from .cachekey import cache_key
from .opmeta import GateInfo, OpMeta

_LOCK = threading.Lock()
_VARIANT_IDS = itertools.count(1)
_OPS: dict[tuple[str, str], MemoryOp] = {}
_SIGNATURE_DOMAIN = b"mirasc-cache-1\0"
CHECK_ENV = "MIRASC_CHECK"


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
    old one then fails, and those modules are regenerated)."""
    path = folder / "key"
    secret = _read_secret(path)
    if secret is not None:
        return secret
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".key.", suffix=".tmp")  # mode 0600
    try:
        with os.fdopen(fd, "w", encoding="ascii") as f:
            f.write(secrets.token_hex(32) + "\n")
        if os.path.lexists(path):
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


def _exec_module(source: str, path: Path, name: str) -> ModuleType:
    """A module executed from `source` (text already verified), filed under `path` for tracebacks."""
    module = ModuleType(name)
    module.__file__ = str(path)
    module.__spec__ = importlib.machinery.ModuleSpec(name, None, origin=str(path))
    module.__mirasc_source__ = source  # what _variant re-executes, instead of reading the file again
    # inspect.getsource (Triton's @jit reads its kernels' source) and tracebacks read these lines, not the file;
    # an entry without mtime is never invalidated by linecache.checkcache.
    linecache.cache[str(path)] = (len(source), None, source.splitlines(True), str(path))
    exec(builtins.compile(source, str(path), "exec", dont_inherit=True), module.__dict__)
    return module


def _write_atomic(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as f:  # the bytes that are signed: no translation
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _source(spec_or_path, options) -> tuple[str, str, dict | None, Any]:
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


def _read_spec(spec_or_path) -> tuple[str, str]:
    """(text, file name) of a prebuilt name, path, spec text or Spec."""
    text, file, _, _ = _source(spec_or_path, None)
    return text, file


def _module(text: str, file: str, options: dict | None, backend: str, spec=None) -> tuple[ModuleType, str]:
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
        _write_atomic(path, source)
        _write_atomic(path.with_suffix(".sig"), _signature(secret, key, source.encode("utf-8")) + "\n")
    if backend == "triton":
        _prepare_triton()
    return _exec_module(source, path, f"mirasc_generated_{backend}_{key[:16]}"), key


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


def compile(spec_or_path, backend: str = "auto", options: dict | None = None) -> MemoryOp:  # noqa: A001
    """Compile a spec to a MemoryOp, cached by content hash.

    spec_or_path: a prebuilt name ("moneta"), a path, spec text, or a Spec (which keeps the options it was loaded
    with; `options` apply on top). backend: "torch" (the chunkwise torch path), "triton" (the Triton kernels:
    natively on CUDA tensors, under the Triton interpreter on CPU tensors), or "auto" (Triton on CUDA tensors
    when triton is installed, torch otherwise, decided per call).
    """
    if backend not in ("auto", "torch", "triton"):
        raise ValueError(f"backend must be 'auto', 'torch' or 'triton', got {backend!r}")
    text, file, options, spec = _source(spec_or_path, options)
    with _LOCK:
        key = (cache_key(text, options, "torch"), backend)
        if key in _OPS:
            return _OPS[key]
        torch_module, _ = _module(text, file, options, "torch", spec)
        triton_module = None
        if backend == "triton" or (backend == "auto" and triton_usable()):
            triton_module, _ = _module(text, file, options, "triton", spec)
        op = MemoryOp(torch_module, text, file, options, backend=backend, triton_module=triton_module)
        op._spec = spec
        _OPS[key] = op
        return op


def _expected(name: str, shape, got) -> ValueError:
    return ValueError(f"{name}: expected shape {list(shape)}, got {list(got)}")


class MemoryOp:
    """A compiled Miras memory. See docs/semantics.md for what it computes.

    op(q, k, v, gates=..., initial_state=None, output_final_state=False, chunk_size=None, params=None)
        -> (o, final_state or None); q, k, v [B, T, H, D]; o in q's dtype; state fp32 (fp64 for fp64 inputs).
    op.recurrent(...)  the exact per-token recurrence (or the chunked oracle with chunk_size=C)
    op.step(q_t, k_t, v_t, gates_t, state)  one decoding step ([B, H, D] inputs)
    """

    def __init__(self, module: ModuleType, text: str, file: str, options: dict | None, backend: str = "torch",
                 triton_module: ModuleType | None = None):
        self.module = module
        self.triton_module = triton_module
        self.backend = backend
        self.meta = OpMeta.from_dict(module.METADATA)
        self.name = self.meta.name
        self.source, self.file, self.options = text, file, options
        self.State = namedtuple(f"{self.name.title().replace('_', '')}State", module.STATE_FIELDS)
        self._spec = None
        self.dot_precision = "tf32"  # fp32 contractions in the Triton kernels (with_dot_precision)

    def __repr__(self) -> str:
        return f"MemoryOp({self.name!r}, backend={self.backend!r}, state={self.module.STATE_FIELDS})"

    # Module-level switches of the torch module that a variant inherits from the op it was made from.
    _SWITCHES = ("USE_FACTORED", "KEEP_FORWARD_VALUES", "_mirasc_compiled")

    def _variant(self, **switches) -> MemoryOp:
        """A new op over a private copy of this op's torch module, so that its switches stay local to it (ops
        are cached per spec, and the module of `mirasc.compile(spec)` is shared by every caller)."""
        src = self.module
        module = _exec_module(src.__mirasc_source__, Path(src.__file__), f"{src.__name__}_v{next(_VARIANT_IDS)}")
        for name, value in vars(src).items():
            if name.startswith(("chunk_forward", "chunk_backward")) or name in self._SWITCHES:
                setattr(module, name, value)
        for name, value in switches.items():
            setattr(module, name, value)
        op = MemoryOp(module, self.source, self.file, self.options, self.backend, self.triton_module)
        op.dot_precision = self.dot_precision
        op._spec = self._spec
        return op

    def compile_chunks(self, **torch_compile_kwargs) -> MemoryOp:
        """A new op whose torch chunk programs run through torch.compile (Inductor fuses the many small
        elementwise and contraction steps into a few kernels; measured on a 2-core CPU for Moneta, bench/README.md:
        3.5x faster forward+backward, 2.5x forward). This op is unchanged.
        The first call of each chunk shape compiles (tens of seconds on a small CPU; Inductor caches on disk)."""
        op = self._variant(_mirasc_compiled=True)
        if not getattr(self.module, "_mirasc_compiled", False):
            for name in [n for n in vars(op.module) if n.startswith(("chunk_forward", "chunk_backward"))]:
                setattr(op.module, name, torch.compile(getattr(op.module, name), **torch_compile_kwargs))
        return op

    def use_factored(self, enabled: bool = True) -> MemoryOp:
        """A new op that does (the default) or does not run the factored chunk programs for chunks with mild
        channel-wise decay (two (C, D) tiles instead of a (C, C, D) one; about 2x faster on CPU). Chunks whose
        log-decay spread exceeds the module's SPREAD_LIMIT always take the (C, C, D) programs."""
        return self._variant(USE_FACTORED=bool(enabled))

    def keep_forward_values(self, enabled: bool = True) -> MemoryOp:
        """A new op whose torch backward does (the default) or does not read values its forward kept per chunk.
        Off keeps only the chunk-start states (like the Triton kernels) and re-runs each chunk's forward in the
        backward: for Moneta at D = 64, C = 64 about 512 instead of about 4,400 floats per token and head, for
        one more forward pass of time."""
        return self._variant(KEEP_FORWARD_VALUES=bool(enabled))

    def module_for(self, x: torch.Tensor) -> ModuleType:
        """The generated module that runs a call on tensors like x (see compile's `backend`)."""
        if self.backend == "triton" or (self.backend == "auto" and x.is_cuda and self.triton_module is not None):
            return self.triton_module
        return self.module

    @property
    def spec(self):
        """The checked Spec (parsed on first use; a cached compile does not need it)."""
        if self._spec is None:
            from .loader import load_source

            self._spec = load_source(self.source, self.file, options=self.options)
        return self._spec

    # ------------------------------------------------------------------ shapes
    def gate_shapes(self, B: int, T: int, H: int, D: int) -> dict[str, tuple[int, ...]]:
        out = {}
        for g in self.meta.gates:
            lead = (B, T, H) if g.data_dependent else (H,)
            out[g.name] = lead + ((D,) if g.kind == "channel" else ())
        return out

    def param_shapes(self, H: int, D: int) -> dict[str, tuple[int, ...]]:
        return {p.name: (H, D) for p in self.meta.params}

    def state_shapes(self, B: int, H: int, D: int) -> dict[str, tuple[int, ...]]:
        mem = self.meta.memory
        depth, hid = mem.depth, mem.expansion * D
        dims = [D] + [hid] * (depth - 1) + [D]
        shapes = {f"w{j + 1}": (B, H, dims[j + 1], dims[j]) for j in range(depth)}
        if self.meta.algorithm == "momentum":
            shapes.update({f"s{j + 1}": (B, H, dims[j + 1], dims[j]) for j in range(depth)})
        return shapes

    def init_state(self, batch: int, heads: int, head_dim: int, dtype=torch.float32, device="cpu"):
        """The default initial state (what initial_state=None means).

        A linear memory with no map, or with the projection, starts at zero (as linear attention and the delta
        rule do). Every other memory starts from fixed pseudo-random matrices, the same for every batch
        element and head, drawn from a generator seeded with 0: N(0, 1/fan_in) entries, or N(0, 1) logits
        for the sigmoid map, or row-wise softmax of N(0, 1) logits for the KL map. An MLP memory at zero is a
        dead fixed point (no gradient reaches the first layer), and lq normalisation is undefined at zero.
        Momentum buffers start at zero.
        """
        shapes = self.state_shapes(batch, heads, head_dim)
        rmap = self.meta.map
        gen = torch.Generator().manual_seed(0)
        zero = self.meta.memory.kind == "linear" and (rmap is None or rmap.kind == "projection")
        out = []
        for name, shape in shapes.items():
            if name.startswith("s") or zero:
                out.append(torch.zeros(shape, dtype=dtype, device=device))
                continue
            base = torch.randn(shape[2:], generator=gen, dtype=torch.float64)
            start = "scaled" if rmap is None else rmap.initial_state
            if start == "softmax_rows":
                base = torch.softmax(base, dim=-1)
            elif start == "scaled":
                base = base / shape[3] ** 0.5
            out.append(base.to(dtype=dtype, device=device).expand(shape).clone())
        return self.State(*out)

    # ------------------------------------------------------------------ validation
    def _check(self, q, k, v, gates, params, initial_state, check: bool | None = None):
        """Shapes, dtypes and devices always (metadata only: no host sync). Gate values (finite, inside their
        declared ranges) when `values_checked(x, check)`: on CPU tensors, and on GPU tensors only under
        MIRASC_CHECK=1 or check=True, since reading a value back is a device synchronisation."""
        for name, x in (("q", q), ("k", k), ("v", v)):
            if not isinstance(x, torch.Tensor):
                raise ValueError(f"{name}: expected a torch.Tensor of shape [B, T, H, D], got {type(x).__name__}")
            if x.dim() != 4:
                raise ValueError(f"{name}: expected shape [B, T, H, D], got {list(x.shape)}")
            if not x.is_floating_point():
                raise ValueError(f"{name}: expected a floating-point tensor, got {x.dtype}")
        if k.shape != q.shape:
            raise _expected("k", q.shape, k.shape)
        if v.shape != q.shape:
            raise _expected("v", q.shape, v.shape)
        for name, x in (("k", k), ("v", v)):
            if x.dtype != q.dtype:
                raise ValueError(f"{name}: dtype {x.dtype} differs from q's {q.dtype}")
            if x.device != q.device:
                raise ValueError(f"{name}: device {x.device} differs from q's {q.device}")
        B, T, H, D = q.shape
        if T == 0:
            raise ValueError("q: the sequence is empty (T = 0)")
        gates = dict(gates or {})
        want = self.gate_shapes(B, T, H, D)
        missing = sorted(set(want) - set(gates))
        extra = sorted(set(gates) - set(want))
        if missing:
            raise ValueError(f"gates: missing {missing}; this op takes {({k: list(s) for k, s in want.items()})}")
        if extra:
            raise ValueError(f"gates: unexpected {extra}; this op takes {sorted(want) or 'no gates'}")
        for g in self.meta.gates:
            x = gates[g.name]
            name = f"gates[{g.name!r}]"
            if not isinstance(x, torch.Tensor) or tuple(x.shape) != want[g.name]:
                raise _expected(name, want[g.name], getattr(x, "shape", ()))
            if x.device != q.device:
                raise ValueError(f"{name}: device {x.device} differs from q's {q.device}")
            if values_checked(x, check):
                _check_range(name, x, g)
        params = dict(params or {})
        extra = sorted(set(params) - set(self.meta.param_names))
        if extra:
            raise ValueError(f"params: unexpected {extra}; this op takes {self.meta.param_names or 'no params'}")
        for p, x in params.items():
            if tuple(x.shape) not in ((H, D), (D,)):
                raise _expected(f"params[{p!r}]", (H, D), x.shape)
        if initial_state is not None:
            shapes = self.state_shapes(B, H, D)
            if len(initial_state) != len(shapes):
                raise ValueError(
                    f"initial_state: expected {len(shapes)} tensors {list(shapes)}, got {len(initial_state)}")
            for (name, shape), x in zip(shapes.items(), initial_state):
                if tuple(x.shape) != shape:
                    raise _expected(f"initial_state.{name}", shape, x.shape)
        return gates, params

    # ------------------------------------------------------------------ calls
    def _prepare(self, q, k, v, gates, params, initial_state, sequences: int | None = None,
                 keep_dtype: bool = False):
        """Flatten heads into rows: token inputs [N, T, ...], static gates and params [N, ...], state [S·H, ...]
        (S = B, or the number of packed sequences). keep_dtype: q, k, v stay in their dtype (the Triton kernels
        read bf16 and fp16 as such); otherwise everything is fp32 (fp64 for fp64 inputs)."""
        B, T, H, D = q.shape
        dt = torch.float64 if q.dtype == torch.float64 else torch.float32
        if initial_state is None:
            initial_state = self.init_state(sequences or B, H, D, dt, q.device)
        flat = [s.to(dt).reshape(-1, *s.shape[2:]) for s in initial_state]
        tok = [x.to(x.dtype if keep_dtype else dt).permute(0, 2, 1, 3).reshape(B * H, T, D) for x in (q, k, v)]
        gate_rows = []
        for g in self.meta.gates:
            x = gates[g.name].to(dt)
            if g.data_dependent:
                x = x.transpose(1, 2)  # [B, H, T(, D)]
            else:
                x = x.unsqueeze(0).expand(B, *x.shape)
            gate_rows.append(x.reshape(B * H, *x.shape[2:]))
        param_rows = []
        for p in self.meta.params:
            x = params.get(p.name)
            x = torch.full((H, D), p.default, dtype=dt, device=q.device) if x is None else x.to(dt).expand(H, D)
            param_rows.append(x.unsqueeze(0).expand(B, H, D).reshape(B * H, D))
        return flat, tok, gate_rows, param_rows

    def __call__(self, q, k, v, gates=None, initial_state=None, output_final_state=False, chunk_size=None,
                 params=None, cu_seqlens=None, check: bool | None = None):
        """check: validate gate values (finite, in range) even on a GPU (True), never (False), or on CPU tensors
        only unless MIRASC_CHECK=1 (None, the default); see `values_checked`."""
        if cu_seqlens is not None:
            return self._varlen(q, k, v, gates, initial_state, output_final_state, chunk_size, params, cu_seqlens,
                                check)
        gates, params = self._check(q, k, v, gates, params, initial_state, check)
        chunk = self.meta.chunk_size if chunk_size is None else int(chunk_size)
        if chunk < 1:
            raise ValueError(f"chunk_size: expected a positive integer, got {chunk_size}")
        B, T, H, D = q.shape
        if T == 0:
            raise ValueError("q: the sequence is empty (T = 0)")
        module = self.module_for(q)
        on_triton = module is self.triton_module
        flat, tok, gate_rows, param_rows = self._prepare(q, k, v, gates, params, initial_state, keep_dtype=on_triton)
        if on_triton:
            from .backends.triton import chunkwise

            res = chunkwise(module, chunk, *flat, *tok, *gate_rows, *param_rows, precision=self.dot_precision)
        else:
            res = module.ChunkwiseMemory.apply(chunk, *flat, *tok, *gate_rows, *param_rows)
        o = res[0].reshape(B, H, T, D).permute(0, 2, 1, 3).to(q.dtype)
        state = None
        if output_final_state:
            state = self.State(*(s.reshape(B, H, *s.shape[1:]) for s in res[1:]))
        return o, state

    def _varlen(self, q, k, v, gates, initial_state, output_final_state, chunk_size, params, cu_seqlens,
                check: bool | None = None):
        """Packed sequences, flash-linear-attention's convention: B = 1, sequence j is tokens
        cu_seqlens[j]:cu_seqlens[j+1]; initial and final states are [num_sequences, H, ...]; each sequence
        starts its own chunks."""
        if q.dim() != 4 or q.shape[0] != 1:
            raise ValueError(f"q: with cu_seqlens, expected shape [1, T, H, D], got {list(q.shape)}")
        bounds = [int(x) for x in torch.as_tensor(cu_seqlens).tolist()]
        if len(bounds) < 2 or bounds[0] != 0 or bounds[-1] != q.shape[1] or any(
                a >= b for a, b in zip(bounds, bounds[1:])):
            raise ValueError(f"cu_seqlens: expected increasing offsets from 0 to T={q.shape[1]}, got {bounds}")
        if self.module_for(q) is self.triton_module:  # the kernels walk every sequence in one launch
            return self._varlen_triton(q, k, v, gates, initial_state, output_final_state, chunk_size, params,
                                       bounds, check)
        gates = dict(gates or {})
        data_dependent = {g.name for g in self.meta.gates if g.data_dependent}
        outs, finals = [], []
        for j, (lo, hi) in enumerate(zip(bounds, bounds[1:])):
            seg_gates = {n: (x[:, lo:hi] if n in data_dependent else x) for n, x in gates.items()}
            state = None if initial_state is None else [s[j:j + 1] for s in initial_state]
            o, st = self(q[:, lo:hi], k[:, lo:hi], v[:, lo:hi], gates=seg_gates, initial_state=state,
                         output_final_state=output_final_state, chunk_size=chunk_size, params=params, check=check)
            outs.append(o)
            finals.append(st)
        o = torch.cat(outs, dim=1)
        if not output_final_state:
            return o, None
        return o, self.State(*(torch.cat(parts, dim=0) for parts in zip(*finals)))

    def _varlen_triton(self, q, k, v, gates, initial_state, output_final_state, chunk_size, params, bounds, check):
        from .backends.triton import chunkwise

        n_seq = len(bounds) - 1
        if initial_state is not None:
            shapes = self.state_shapes(n_seq, q.shape[2], q.shape[3])
            for (name, shape), x in zip(shapes.items(), initial_state):
                if tuple(x.shape) != shape:
                    raise ValueError(f"initial_state.{name}: with {n_seq} sequences, expected shape {list(shape)}, "
                                     f"got {list(x.shape)}")
        gates, params = self._check(q, k, v, gates, params, None, check)
        chunk = self.meta.chunk_size if chunk_size is None else int(chunk_size)
        if chunk < 1:
            raise ValueError(f"chunk_size: expected a positive integer, got {chunk_size}")
        _, T, H, D = q.shape
        flat, tok, gate_rows, param_rows = self._prepare(q, k, v, gates, params, initial_state, sequences=n_seq,
                                                         keep_dtype=True)
        cu = torch.tensor(bounds, dtype=torch.int32, device=q.device)
        res = chunkwise(self.triton_module, chunk, *flat, *tok, *gate_rows, *param_rows, cu_seqlens=cu,
                        precision=self.dot_precision)
        o = res[0].reshape(1, H, T, D).permute(0, 2, 1, 3).to(q.dtype)
        if not output_final_state:
            return o, None
        return o, self.State(*(s.reshape(n_seq, H, *s.shape[1:]) for s in res[1:]))

    def with_dot_precision(self, precision: str) -> MemoryOp:
        """A copy of this op whose Triton kernels run fp32 contractions as `precision`: "tf32" (tensor cores, the
        default) or "ieee" (exact fp32 products). bf16/fp16 inputs always use their own tensor-core path, fp64 is
        always exact."""
        from .backends.triton import PRECISIONS

        if precision not in PRECISIONS:
            raise ValueError(f"precision: expected one of {PRECISIONS}, got {precision!r}")
        op = copy.copy(self)
        op.dot_precision = precision
        return op

    def recurrent(self, q, k, v, gates=None, initial_state=None, chunk_size=None, params=None,
                  output_final_state=True):
        """The reference recurrence (mirasc.oracle): exact per token, or chunked with chunk_size=C.

        What the op computes at chunk size C: for a spec chunked exactly (METADATA["chunk_form"], see
        mirasc.chunkform) that is the exact recurrence at every C, and chunk_size is ignored."""
        from .oracle import recurrent

        if self.meta.chunk_form == "exact":
            chunk_size = None
        gates, params = self._check(q, k, v, gates, params, initial_state)
        B, T, H, D = q.shape
        dt = torch.float64 if q.dtype == torch.float64 else torch.float32
        if initial_state is None:
            initial_state = self.init_state(B, H, D, dt, q.device)
        o, state = recurrent(self.spec, self.module.loss, q, k, v, gates, params, tuple(initial_state),
                             chunk_size=chunk_size)
        return o, (self.State(*state) if output_final_state else None)

    def step(self, q_t, k_t, v_t, gates_t=None, state=None, params=None, check: bool | None = None):
        """One decoding step: q_t, k_t, v_t [B, H, D]; data-dependent gates [B, H(, D)]. Exact (chunk size 1)."""
        gates = {}
        for g in self.meta.gates:
            x = (gates_t or {}).get(g.name)
            gates[g.name] = x.unsqueeze(1) if (x is not None and g.data_dependent) else x
        gates = {n: x for n, x in gates.items() if x is not None}
        o, new_state = self(q_t.unsqueeze(1), k_t.unsqueeze(1), v_t.unsqueeze(1), gates=gates,
                            initial_state=state, output_final_state=True, chunk_size=1, params=params, check=check)
        return o[:, 0], new_state


def values_checked(x: torch.Tensor, check: bool | None = None) -> bool:
    """Whether a call validates the values of gate x: `check` when given, else always on CPU tensors and on
    other devices only under MIRASC_CHECK=1 (each value read back from a GPU is a host-device synchronisation,
    which would stall every training and decoding step)."""
    if check is not None:
        return bool(check)
    return x.device.type == "cpu" or os.environ.get(CHECK_ENV, "") not in ("", "0")


def _check_range(name: str, x: torch.Tensor, g: GateInfo) -> None:
    if x.numel() == 0:
        return
    lo_t, hi_t = torch.aminmax(x.detach())  # one pass; NaN propagates into both
    lo, hi = lo_t.item(), hi_t.item()
    if not (math.isfinite(lo) and math.isfinite(hi)):
        raise ValueError(f"{name}: contains non-finite values (min {lo:g}, max {hi:g})")
    low_ok = lo > g.low if g.low_open else lo >= g.low
    high_ok = hi < g.high if g.high_open else hi <= g.high
    if not (low_ok and high_ok):
        raise ValueError(f"{name}: values must lie in {g.interval()}, got min {lo:g}, max {hi:g}")
