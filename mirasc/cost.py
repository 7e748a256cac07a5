"""Operation counts of a compiled spec's chunk programs, for the benchmarks' achieved TFLOP/s.

Counts the multiply-adds of every contraction (2 FLOPs each) in the forward and backward chunk programs at
given sizes; elementwise work is not counted, so the figure is a lower bound on the work done.
"""

from __future__ import annotations

import math

from . import ir


def contraction_flops(graph: ir.Graph, C: int, D: int, hidden: int, rows: int) -> int:
    size = {"t": C, "s": C, "u": C, "o": D, "i": D, "h": hidden, "g": hidden}
    total = 0
    for v in graph.values:
        if isinstance(v.op, ir.Einsum) and len(v.args) > 1:
            axes = set().union(*(a.axes for a in v.args))
            total += 2 * math.prod(size[a] for a in axes)
    return total * rows


def op_flops(spec_path, B: int, T: int, H: int, D: int, C: int, options=None) -> tuple[int, int]:
    """(forward, backward) contraction FLOPs of one call of the op at these sizes."""
    from .derive import derive
    from .grad import differentiate
    from .loader import load
    from .lower import input_names, lower

    spec = load(spec_path, options=options)
    fwd = lower(derive(spec))
    bwd = differentiate(fwd, input_names(spec))
    hidden = spec.memory.expansion * D
    chunks = [C] * (T // C) + ([T % C] if T % C else [])
    f = sum(contraction_flops(fwd, c, D, hidden, B * H) for c in chunks)
    b = sum(contraction_flops(bwd, c, D, hidden, B * H) for c in chunks)
    return f, b
