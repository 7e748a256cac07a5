"""The package's data files: the grammar, the templates, the standard library, the prebuilt specs and the model
configs, found the same way whether mirasc is installed from a wheel, imported from a zip, or run from a checkout.

Installed (wheel or zip), they are package data under the `mirasc` package: `mirasc/grammar/`,
`mirasc/templates/`, `mirasc/stdlib.miras`, `mirasc/specs/*.miras` and `mirasc/specs/configs/*.toml`
(pyproject.toml maps the repository's `grammar/`, `templates/` and `models/` there). In a checkout (an editable
install, or the source tree on `sys.path`) those folders sit beside the package instead.

Everything is looked up through `importlib.resources.files("mirasc")`, the regular package: its data is a
`pathlib.Path` when installed and a `zipfile.Path` when zipped. (`files("mirasc.grammar")` of the data-only
folder is a namespace package whose `MultiplexedPath` has no usable `str()`: that was the wheel-install bug.)
Callers get real filesystem paths (jinja2's loader and lark read files): data inside a zip is copied once per
process to a private temporary folder, removed at exit.
"""

from __future__ import annotations

import atexit
import re
import shutil
import tempfile
import threading
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # importlib.resources.abc is Python >= 3.11; the annotation is never evaluated
    from importlib.resources.abc import Traversable

# resource folder -> its folder in a checkout (relative to the repository root)
_CHECKOUT = {"grammar": "grammar", "templates": "templates", "specs": "models"}
# A prebuilt spec's name: what a bare word must look like to be looked up among the packaged specs.
PREBUILT_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")

_LOCK = threading.Lock()
_EXTRACTED: dict[str, Path] = {}


def _package() -> Traversable:
    return resources.files("mirasc")


def _checkout_root() -> Path | None:
    """The repository root when this package is imported from a source checkout, else None. Only a folder that
    holds this project's pyproject.toml counts, so an installed mirasc never picks up some other project's
    `site-packages/grammar` or `site-packages/models`."""
    here = Path(__file__).resolve().parent
    root = here.parent
    if (root / "pyproject.toml").is_file() and (root / "grammar" / "miras.lark").is_file():
        return root
    return None


def _extract(trav: Traversable, key: str) -> Path:
    """A real folder holding a copy of `trav` (a folder inside a zip), made once per process."""
    with _LOCK:
        if key in _EXTRACTED:
            return _EXTRACTED[key]
        dest = Path(tempfile.mkdtemp(prefix=f"mirasc-{key}-"))   # mkdtemp: mode 0700
        atexit.register(shutil.rmtree, dest, True)

        def copy(src: Traversable, dst: Path) -> None:
            for item in src.iterdir():
                if item.is_dir():
                    (dst / item.name).mkdir()
                    copy(item, dst / item.name)
                elif item.is_file():
                    (dst / item.name).write_bytes(item.read_bytes())

        copy(trav, dest)
        _EXTRACTED[key] = dest
        return dest


def resource_dir(name: str) -> Path:
    """A real folder: `grammar`, `templates` or `specs` (the prebuilt `.miras` files, with `configs/*.toml`).

    Installed package data first (a wheel or a zip); a checkout's folders when the package has none."""
    if name not in _CHECKOUT:
        raise ValueError(f"resource_dir: unknown resource folder {name!r} (expected one of {sorted(_CHECKOUT)})")
    packaged = _package() / name
    if packaged.is_dir():
        return packaged if isinstance(packaged, Path) else _extract(packaged, name)
    root = _checkout_root()
    if root is not None and (root / _CHECKOUT[name]).is_dir():
        return root / _CHECKOUT[name]
    raise FileNotFoundError(f"mirasc's {name!r} folder is missing: neither package data ({packaged}) nor a source "
                            f"checkout beside the package; reinstall mirasc")


def resource_file(name: str) -> Path:
    """A real path of a file at the package's top level (`stdlib.miras`), copied out of a zip if need be."""
    packaged = _package() / name
    if not packaged.is_file():
        raise FileNotFoundError(f"mirasc's package file {name!r} is missing ({packaged}); reinstall mirasc")
    if isinstance(packaged, Path):
        return packaged
    with _LOCK:
        if name not in _EXTRACTED:
            folder = Path(tempfile.mkdtemp(prefix="mirasc-file-"))
            atexit.register(shutil.rmtree, folder, True)
            (folder / name).write_bytes(packaged.read_bytes())
            _EXTRACTED[name] = folder / name
        return _EXTRACTED[name]


def prebuilt_names() -> list[str]:
    """The prebuilt specs' names (`moneta`, `yaad`, ...), sorted."""
    return sorted(p.stem for p in resource_dir("specs").glob("*.miras"))


def prebuilt_path(name: str) -> Path | None:
    """The file of the prebuilt spec `name`, or None when there is none (`name` is never used as a path)."""
    if not PREBUILT_NAME.fullmatch(name):
        return None
    path = resource_dir("specs") / f"{name}.miras"
    return path if path.is_file() else None


def config_names() -> list[str]:
    """The packaged model configs' names (`tiny`, `170m`, ...), sorted."""
    folder = resource_dir("specs") / "configs"
    return sorted(p.stem for p in folder.glob("*.toml")) if folder.is_dir() else []


def config_file(name: str) -> Path | None:
    """The packaged model config `name` (`configs/NAME.toml`), or None."""
    if not re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_.-]*", name):   # a bare name, never a path
        return None
    path = resource_dir("specs") / "configs" / f"{name}.toml"
    return path if path.is_file() else None
