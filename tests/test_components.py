"""A boundary map added from this test module alone (docs/compiler.md, "Adding a component"): registered, checked
with located errors, explained, compiled by both backends' generators, and equal to its own reference step.

No file of the package knows the map: everything below goes through the registry.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import pytest
import sympy as sp
import torch
from helpers import assert_results_close, chunked_fn, make_inputs, oracle_fn, outputs_and_grads

import mirasc
from mirasc.codegen import generate_triton
from mirasc.components import boundary_maps, register, unregister
from mirasc.components.base import Argument, BoundaryMap
from mirasc.derive import derive, explain
from mirasc.errors import SpecError
from mirasc.loader import load
from mirasc.spec import NO_SPAN, Span


@dataclass(frozen=True)
class TanhBoxMap(BoundaryMap):
    """W = s tanh(P / s): a mirror map onto the box (-s, s) (Bregman, like Variant 5's sigmoid, but odd)."""

    keyword: ClassVar[str] = "tanh_box"
    arguments: ClassVar[tuple[Argument, ...]] = (Argument("scale", "number", default=1.0),)

    scale: float = 1.0
    span: Span = NO_SPAN

    def explain(self, update: str, decay: str, lr: str) -> str:
        return update + f";  W_t = {self.scale:g} tanh(P_t / {self.scale:g})"

    def lower_map(self, lw, P, layer):
        s = sp.Float(self.scale)
        return lw.g.ew(lambda a: s * sp.tanh(a / s), P)

    def reference_map(self, p: torch.Tensor, operand) -> torch.Tensor:
        return self.scale * torch.tanh(p / self.scale)


SPEC = """model tanh_box_memory
memory linear
gate alpha : scalar, range (0, 1], activation sigmoid
gate eta : scalar, range [0, inf), activation softplus
bias l2()
retention decay(alpha) + tanh_box(scale = {scale})
algorithm gd(lr = eta)
chunk 16
"""

B, H, D = 2, 2, 8


@pytest.fixture
def tanh_box():
    register(TanhBoxMap)
    yield TanhBoxMap
    unregister(TanhBoxMap.keyword)


def test_an_unregistered_map_is_an_unknown_term():
    assert "tanh_box" not in boundary_maps()
    with pytest.raises(SpecError, match=r"6:26: error: unknown retention term `tanh_box`"):
        load(SPEC.format(scale=2))


def test_the_registry_checks_its_arguments(tanh_box):
    spec = load(SPEC.format(scale=2))
    assert spec.retention.map == TanhBoxMap(scale=2.0, span=spec.retention.map.span)
    assert spec.retention.map.kind == "mirror"
    with pytest.raises(SpecError, match=r"6:43: error: scale must be > 0, got 0"):
        load(SPEC.format(scale=0))
    with pytest.raises(SpecError, match=r"6:35: error: `tanh_box` has no argument `width` \(it takes `scale`\)"):
        load(SPEC.format(scale=2).replace("scale = 2", "width = 2"))
    assert "W_t = 2 tanh(P_t / 2)" in explain(derive(spec))


def test_chunk_1_equals_its_reference_step(tanh_box):
    op = mirasc.compile(SPEC.format(scale=2), backend="torch")
    assert op.meta.map.name == "tanh_box" and op.meta.map.kind == "mirror"
    ins = make_inputs(op, B, 9, H, D, seed=3)
    a = outputs_and_grads(chunked_fn(op, 1), *ins)
    b = outputs_and_grads(oracle_fn(op, None), *ins)
    assert_results_close(a, b, 1e-10, "tanh_box C=1 vs its reference recurrence")


def test_chunks_equal_the_chunked_reference(tanh_box):
    op = mirasc.compile(SPEC.format(scale=2), backend="torch")
    ins = make_inputs(op, B, 37, H, D, seed=4)
    a = outputs_and_grads(chunked_fn(op, 16), *ins)
    b = outputs_and_grads(oracle_fn(op, 16), *ins)
    assert_results_close(a, b, 1e-10, "tanh_box C=16 vs the chunked reference")
    # the map matters: with another scale the outputs move
    other = mirasc.compile(SPEC.format(scale=0.5), backend="torch")
    assert not torch.allclose(outputs_and_grads(chunked_fn(other, 16), *ins)[0], a[0])


def test_the_triton_generator_takes_it(tanh_box):
    source = generate_triton(load(SPEC.format(scale=2)))
    assert "tl.math.tanh" in source or "tanh" in source
    assert "tanh_box" in source  # METADATA names the map


def test_the_docs_table_is_the_registrys():
    """docs/language.md lists every boundary map of the package as its signature writes it (a new map's row is
    its signature(); a changed argument fails here until the table says so)."""
    from pathlib import Path

    text = (Path(__file__).resolve().parents[1] / "docs" / "language.md").read_text(encoding="utf-8")
    for cls in boundary_maps().values():
        row = f"| `{cls.signature().replace('|', chr(92) + '|')}` | `{cls.__module__.replace('.', '/')}.py` |"
        assert row in text, row


def test_a_registered_map_is_part_of_the_cache_key():
    """A module compiled with a map registered from outside the package is not reused once that map changes or
    goes: the cache key covers the sources of such maps."""
    from mirasc.cachekey import cache_key

    without = cache_key(SPEC, None, "torch")
    register(TanhBoxMap)
    try:
        assert cache_key(SPEC, None, "torch") != without
    finally:
        unregister(TanhBoxMap.keyword)
    assert cache_key(SPEC, None, "torch") == without


def test_a_keyword_is_registered_once():
    @dataclass(frozen=True)
    class Other(BoundaryMap):
        keyword: ClassVar[str] = "lq"

    with pytest.raises(ValueError, match="already registered"):
        register(Other)
    with pytest.raises(ValueError, match="reserved"):
        register(type("Decay", (BoundaryMap,), {"keyword": "decay"}))
