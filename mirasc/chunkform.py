"""chunkform: which chunkwise form a spec gets, decided from its derivation (never from its name).

Two forms (docs/semantics.md, "Chunks of C tokens"):

- **exact**: the per-token update is affine in the state, so a chunk of C tokens can be computed exactly.
  That holds when the memory's prediction is linear in its weights (depth 1, no LayerNorm: M(x) = W x or
  x + W x), ∂ℓ/∂y is affine in y (∂²ℓ/∂y² does not depend on y), the retention is linear in the state (no
  boundary map; decay, static or data-dependent, scalar or channel-wise) and the algorithm is plain `gd`.
  Then W_t = W_{t-1} (diag(a_t) − η_t k_t k_tᵀ h_t) + (terms free of W): the delta-rule family.
  If ∂ℓ/∂y does not depend on y at all (the Hebbian `dot` bias) every gradient is known up front and the
  chunk needs nothing more; otherwise the chunk's gradient signals solve a unit lower-triangular C × C system
  (the UT / WY transform of flash-linear-attention's `chunk_delta_rule`), which needs ∂²ℓ/∂y² to be one value
  per token (a multiple of the identity across channels).
- **approximate**: every token of a chunk takes its gradient at the chunk-start weights (Eq. 28; the TTT
  dual form for MLP memories).
"""

from __future__ import annotations

from dataclasses import dataclass

import sympy as sp

from . import spec as S
from .derive import LossDerivation, R, V, derive_loss
from .symbolic import diff

EXACT = "exact"
APPROXIMATE = "approximate"


@dataclass(frozen=True)
class ChunkForm:
    kind: str  # EXACT | APPROXIMATE
    reason: str  # one line: why this form
    hessian: sp.Expr | None = None  # ∂²ℓ/∂y², a per-token scalar, when the exact form solves for the signals

    @property
    def exact(self) -> bool:
        return self.kind == EXACT

    @property
    def solves(self) -> bool:
        """Whether the exact form needs the triangular solve (the gradient depends on the state)."""
        return self.hessian is not None

    def describe(self) -> str:
        if self.exact:
            return f"exact: update affine in the state ({self.reason})"
        return f"chunk approximation: gradient at the chunk-start weights, Eq. 28 ({self.reason})"


def _nonlinear_part(spec: S.Spec) -> str | None:
    """Why the update is not affine in the state apart from the loss, or None."""
    why = spec.memory.nonlinear_reason()
    if why is not None:
        return why
    rmap = spec.retention.map
    if rmap is not None:
        return f"the boundary map `{rmap.keyword}` is nonlinear in the state"
    return spec.algorithm.exact_refusal()


def chunk_form(spec: S.Spec, loss: LossDerivation | None = None) -> ChunkForm:
    """The chunk form of `spec` (its loss derivation may be passed to avoid deriving it again)."""
    why = _nonlinear_part(spec)
    if why is not None:
        return ChunkForm(APPROXIMATE, why)
    ld = loss if loss is not None else derive_loss(spec)
    if not ld.elementwise:
        return ChunkForm(APPROXIMATE, "∂ℓ/∂y couples the channels through a reduction (∂²ℓ/∂y∂y is dense)")
    hess = sp.simplify(diff(ld.grad, R))
    if hess == 0:
        return ChunkForm(EXACT, "∂ℓ/∂y does not depend on y: every gradient is known before the chunk runs")
    if R in hess.free_symbols:
        return ChunkForm(APPROXIMATE, f"∂ℓ/∂y is not affine in y (∂²ℓ/∂y² = {hess} depends on y)")
    per_channel = {V} | {ld.gate_symbols[n] for n in ld.channel_gates}
    if hess.free_symbols & per_channel:
        return ChunkForm(APPROXIMATE, f"∂²ℓ/∂y² = {hess} varies across channels (the chunk solve needs one "
                                      "value per token)")
    return ChunkForm(EXACT, f"∂ℓ/∂y is affine in y with ∂²ℓ/∂y² = {hess}: a C×C triangular solve per chunk",
                     hessian=hess)


__all__ = ["APPROXIMATE", "EXACT", "ChunkForm", "chunk_form"]
