"""The registry of Miras components that a spec names by keyword: memory architectures, learning algorithms and
the boundary maps of the retention.

Every module of mirasc.components.memories, .algorithms and .maps is a component: it defines one record class
(on a contract of mirasc.components.base) and registers it with `@register`. The checker, the lowering, the oracle,
the metadata, `explain` and the layer's initialisation look a component up here by keyword or call its methods, so
a new component is one new file in its folder. A component defined outside the package (a user's module, a test)
is registered the same way, by importing it before the spec is checked.
"""

from __future__ import annotations

import importlib
import pkgutil

from .base import BoundaryMap, Component, LearningAlgorithm, MemoryArchitecture

# Retention terms that are not boundary maps (mirasc.check.components reads them itself).
RESERVED = ("decay", "none")

# contract -> (the package folder of its built-in components, what the spec statement calls one)
KINDS: dict[type[Component], tuple[str, str]] = {
    MemoryArchitecture: ("memories", "memory"),
    LearningAlgorithm: ("algorithms", "algorithm"),
    BoundaryMap: ("maps", "boundary map"),
}

_REGISTRY: dict[type[Component], dict[str, type[Component]]] = {kind: {} for kind in KINDS}
_loaded = False


def _contract(cls: type[Component]) -> type[Component]:
    for kind in KINDS:
        if issubclass(cls, kind):
            return kind
    raise TypeError(f"{cls.__name__} derives from none of {', '.join(k.__name__ for k in KINDS)}")


def register(cls):
    """Make a component known to every stage under cls.keyword (a class decorator)."""
    kind = _contract(cls)
    what = KINDS[kind][1]
    key = cls.keyword
    if (kind is BoundaryMap and key in RESERVED) or not key.isidentifier():
        raise ValueError(f"{what} keyword {key!r} is reserved or not a name")
    table = _REGISTRY[kind]
    if key in table and table[key] is not cls:
        raise ValueError(f"{what} `{key}` is already registered by {table[key].__module__}")
    table[key] = cls
    return cls


def unregister(keyword: str, kind: type[Component] = BoundaryMap) -> None:
    """Forget a component registered from outside the package (tests)."""
    _REGISTRY[kind].pop(keyword, None)


def _load_builtin() -> None:
    global _loaded
    if _loaded:
        return
    for folder, _ in KINDS.values():
        package = importlib.import_module(f"{__name__}.{folder}")
        for info in sorted(pkgutil.iter_modules(package.__path__), key=lambda m: m.name):
            importlib.import_module(f"{package.__name__}.{info.name}")
    _loaded = True


def components(kind: type[Component]) -> dict[str, type[Component]]:
    """keyword -> record class of every registered component of a kind: the package's own in file-name order, then
    those registered from outside by module name."""
    _load_builtin()
    own = f"{__name__}."
    return dict(sorted(_REGISTRY[kind].items(),
                       key=lambda kc: (not kc[1].__module__.startswith(own), kc[1].__module__)))


def boundary_maps() -> dict[str, type[BoundaryMap]]:
    return components(BoundaryMap)  # type: ignore[return-value]


def memory_architectures() -> dict[str, type[MemoryArchitecture]]:
    return components(MemoryArchitecture)  # type: ignore[return-value]


def learning_algorithms() -> dict[str, type[LearningAlgorithm]]:
    return components(LearningAlgorithm)  # type: ignore[return-value]


def registered_outside() -> dict[str, type[Component]]:
    """The components registered from outside the package (`kind:keyword` -> class), without loading the package's
    own (which import sympy: a cached compile reads this for its key and must stay light)."""
    return {f"{KINDS[kind][0]}:{k}": c for kind, table in _REGISTRY.items() for k, c in table.items()
            if not c.__module__.startswith(f"{__name__}.")}


__all__ = ["KINDS", "RESERVED", "BoundaryMap", "LearningAlgorithm", "MemoryArchitecture", "boundary_maps",
           "components", "learning_algorithms", "memory_architectures", "register", "registered_outside",
           "unregister"]
