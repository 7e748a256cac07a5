"""Checkpoints: atomic to write, safe to read.

Atomic: write a temporary file in the same folder, fsync, then os.replace onto the final name. A process killed
(or failing) during the write leaves the last good checkpoint untouched; the stray temporary file is removed on
failure and ignored otherwise.

Safe: a checkpoint holds only tensors and plain data (dicts, lists, tuples, str, int, float, bool, None): model
and optimizer state as tensors, the config as JSON-like values, the RNG states as tensors and integers. It is
read with `torch.load(weights_only=True)`, whose unpickler builds nothing else, so a checkpoint or run folder
someone shares cannot run code when `mirasc eval` or `--resume` opens it: a file that names any other Python
object (a function, a class) is refused with a one-line TrainError, and nothing in it is executed. Checkpoints
written before this rule kept numpy's RNG state as an array and the torch version as a TorchVersion; those four
harmless globals are allowed when reading, nothing else.
"""

from __future__ import annotations

import json
import os
import pickle
import random
import re
import shutil
import warnings
from pathlib import Path

import numpy as np
import torch

from .config import TrainError

CHECKPOINT = "checkpoint.pt"
FORMAT = "mirasc-train-1"


def rng_state() -> dict:
    """The torch / numpy / python (/ cuda) RNG states as tensors and plain data (see the module docstring)."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    st = {"torch": torch.get_rng_state(),
          "numpy": (str(name), [int(x) for x in keys], int(pos), int(has_gauss), float(cached)),
          "python": random.getstate()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        st["cuda"] = torch.cuda.get_rng_state_all()
    return st


def set_rng_state(st: dict) -> None:
    torch.set_rng_state(st["torch"])
    name, keys, pos, has_gauss, cached = st["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    random.setstate(st["python"])
    if "cuda" in st and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(st["cuda"])


def _first_line(e: Exception) -> str:
    lines = str(e).strip().splitlines()
    return (lines[0] if lines else type(e).__name__)[:120]


def atomic_save(obj, path: str | Path) -> None:
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_save_dir(write, path: str | Path) -> None:
    """`write(tmpdir)` then swap the folder in (old copy moved aside first, removed after)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    old = path.with_name(f".{path.name}.old{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        write(tmp)
        if path.exists():
            os.replace(path, old)
        os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if old.exists() and not path.exists():
            os.replace(old, path)
        raise
    shutil.rmtree(old, ignore_errors=True)


# What atomic_save / atomic_write_text / atomic_save_dir / plot_metrics leave behind when killed mid-write.
_STALE = re.compile(r"^\.(checkpoint\.pt|metrics\.jsonl|config\.json|eval\.json|loss_curve\.png|hf)"
                    r"\.(tmp|old)\d+(\.png)?$")


def remove_stale_temporaries(folder: str | Path) -> list[str]:
    """Remove the temporary files and folders a killed run left in its run folder (a process killed during an
    atomic write leaves its `.NAME.tmpPID`); returns their names. Only names of that exact form are touched."""
    folder = Path(folder)
    removed = []
    if not folder.is_dir():
        return removed
    for p in folder.iterdir():
        if _STALE.match(p.name):
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p, ignore_errors=True)
            else:
                p.unlink(missing_ok=True)
            removed.append(p.name)
    return sorted(removed)


def find_checkpoint(path: str | Path) -> Path:
    p = Path(path)
    if p.is_dir():
        p = p / CHECKPOINT
    if not p.is_file():
        raise TrainError(f"checkpoint not found: {path}")
    return p


def plain(obj):
    """`obj` (a config dict) as JSON values: what a checkpoint may hold besides tensors (Paths become str)."""
    return json.loads(json.dumps(obj, default=str))


def _legacy_globals() -> list:
    """The globals of checkpoints written before the plain-data rule: numpy's RNG state array and the torch
    version string. None of them runs code of the file's choosing."""
    from torch.torch_version import TorchVersion

    try:
        from numpy._core.multiarray import _reconstruct
    except ImportError:  # numpy < 2
        from numpy.core.multiarray import _reconstruct
    return [_reconstruct, np.ndarray, np.dtype, type(np.dtype(np.uint32)), TorchVersion]


def _unsafe_names(p: Path, error: Exception) -> str:
    """The globals a refused checkpoint names, read without unpickling it."""
    try:
        names = torch.serialization.get_unsafe_globals_in_checkpoint(p)
    except Exception:
        names = re.findall(r"GLOBAL ([\w.]+)", str(error))
    legacy = {f"{g.__module__}.{g.__qualname__}" for g in _legacy_globals()}
    names = [n for n in dict.fromkeys(names) if n not in legacy]
    return ", ".join(names[:3]) + (" ..." if len(names) > 3 else "") if names else "a Python object"


def load_checkpoint(path: str | Path) -> dict:
    """Read a training checkpoint with torch.load(weights_only=True); a TrainError (one line) for anything else."""
    p = find_checkpoint(path)
    try:
        with warnings.catch_warnings(), torch.serialization.safe_globals(_legacy_globals()):
            warnings.simplefilter("ignore")  # e.g. "Detected pickle protocol 4": noise for a file refused anyway
            ck = torch.load(p, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        msg = str(e)
        if re.search(r"Unsupported global|not an allowed global|GLOBAL [\w.]", msg):
            raise TrainError(f"refused checkpoint {p}: it holds {_unsafe_names(p, e)}, not only tensors and plain "
                             f"data, and unpickling that could run code (nothing in it was run; mirasc's own "
                             f"checkpoints hold only tensors and plain data)") from None
        cause = re.search(r"WeightsUnpickler error:\s*(\S[^\n]*)", msg)
        raise TrainError(f"incompatible checkpoint {p}: cannot be read "
                         f"({cause.group(1)[:120] if cause else _first_line(e)})") from None
    except Exception as e:
        raise TrainError(f"incompatible checkpoint {p}: cannot be read ({_first_line(e)})") from None
    if not isinstance(ck, dict) or ck.get("format") != FORMAT:
        raise TrainError(f"incompatible checkpoint {p}: not a mirasc training checkpoint")
    return ck
