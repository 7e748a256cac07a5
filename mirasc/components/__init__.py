"""The registry of Miras components that a spec names by keyword: the boundary maps of the retention.

Every module of mirasc.components.maps is a component: it defines one record class (mirasc.components.base) and
registers it with `@register`. The checker, the lowering, the oracle, the metadata, `explain` and the layer's
initialisation all look the map up here by keyword or call its methods, so a new map is one new file in that
folder. A map defined outside the package (a user's module, a test) is registered the same way, by importing it
before the spec is checked.
"""

from __future__ import annotations

import importlib
import pkgutil

from .base import BoundaryMap

# Retention terms that are not boundary maps (mirasc.check.components reads them itself).
RESERVED = ("decay", "none")

_MAPS: dict[str, type[BoundaryMap]] = {}
_loaded = False


def register(cls: type[BoundaryMap]) -> type[BoundaryMap]:
    """Make a boundary map known to every stage under cls.keyword (a class decorator)."""
    key = cls.keyword
    if key in RESERVED or not key.isidentifier():
        raise ValueError(f"boundary map keyword {key!r} is reserved or not a name")
    if key in _MAPS and _MAPS[key] is not cls:
        raise ValueError(f"boundary map `{key}` is already registered by {_MAPS[key].__module__}")
    _MAPS[key] = cls
    return cls


def unregister(keyword: str) -> None:
    """Forget a map registered from outside the package (tests)."""
    _MAPS.pop(keyword, None)


def _load_builtin() -> None:
    global _loaded
    if _loaded:
        return
    from . import maps

    for info in sorted(pkgutil.iter_modules(maps.__path__), key=lambda m: m.name):
        importlib.import_module(f"{maps.__name__}.{info.name}")
    _loaded = True


def boundary_maps() -> dict[str, type[BoundaryMap]]:
    """keyword -> record class of every registered boundary map, the package's own in file-name order."""
    _load_builtin()
    return dict(_MAPS)


def registered_outside() -> dict[str, type[BoundaryMap]]:
    """The maps registered from outside the package, without loading the package's own (which import sympy: a
    cached compile reads this for its key and must stay light)."""
    return {k: c for k, c in _MAPS.items() if not c.__module__.startswith(f"{__name__}.")}


__all__ = ["RESERVED", "BoundaryMap", "boundary_maps", "register", "registered_outside", "unregister"]
