"""`memory linear`: M(x) = W x, one D×D matrix per head (linear attention, the delta rule, Mamba2, ...)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from mirasc.components import register
from mirasc.components.base import MemoryArchitecture, MemoryStart
from mirasc.spec import NO_SPAN, Span


@register
@dataclass(frozen=True)
class LinearMemory(MemoryArchitecture):
    keyword: ClassVar[str] = "linear"
    depth: ClassVar[int] = 1
    expansion: ClassVar[int] = 1
    activation: ClassVar[str] = "identity"
    # linear attention and the delta rule start from an empty memory (a boundary map may ask for more)
    initial_state: ClassVar[MemoryStart] = "zero"

    span: Span = NO_SPAN

    def explain(self, fmt, act) -> list[str]:
        return ["memory: M(x) = W x (a D×D matrix per head)"]
