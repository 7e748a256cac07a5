"""`algorithm gd(lr, gradient_at = previous | decayed)`: P_t = α_t ⊙ P_(t−1) − η_t ⊙ G_t (Eq. 9 with retention).

gradient_at = previous takes G_t at W_(t−1) (Eq. 9); decayed at α_t ⊙ W_(t−1) (the Gated DeltaNet paper's delta
rule, S_t = α_t S_(t−1) (I − β_t k_t k_tᵀ) + β_t v_t k_tᵀ), defined only where chunks are exact (mirasc.chunkform).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar, Literal

from mirasc.components import register
from mirasc.components.base import Argument, LearningAlgorithm
from mirasc.spec import NO_SPAN, Operand, Span


@register
@dataclass(frozen=True)
class GradientDescent(LearningAlgorithm):
    keyword: ClassVar[str] = "gd"
    arguments: ClassVar[tuple[Argument, ...]] = (
        Argument("lr", "operand", low=0.0, high=math.inf, on_weights=True),
        Argument("gradient_at", "word", default="previous", choices=("previous", "decayed")),
    )

    lr: Operand
    gradient_at: Literal["previous", "decayed"] = "previous"  # type: ignore[assignment]
    span: Span = NO_SPAN

    def explain(self, decay, operand) -> str:
        return f"  P_t = {decay} ⊙ P_(t−1) − {operand(self.lr)} ⊙ G_t"

    def lower_coefficients(self, decay, alpha, lr, operand):
        return decay.coefficients(alpha, lr)

    def reference_write(self, kept, step, buffers, scale):
        return [a - s for a, s in zip(kept, step)], buffers
