"""What a MemoryOp does with its arguments before any chunk is computed: the checks (shapes, dtypes, devices, gate
values), the default initial state, and the layout the chunk programs take (one row per head and sequence).
Every function reads the op's typed description (mirasc.opmeta.OpMeta), nothing else of it.
"""

from __future__ import annotations

import math
import os

import torch

from .opmeta import GateInfo, OpMeta

CHECK_ENV = "MIRASC_CHECK"


def default_state(meta: OpMeta, batch: int, heads: int, head_dim: int, dtype=torch.float32, device="cpu") -> list:
    """The default initial state (what initial_state=None means), one tensor per state field.

    A memory whose component starts at zero (the linear memory, as linear attention and the delta rule do), with
    no map or with the projection, starts at zero. Every other memory starts from fixed pseudo-random matrices,
    the same for every batch element and head, drawn from a generator seeded with 0: N(0, 1/fan_in) entries, or
    N(0, 1) logits for the sigmoid map, or row-wise softmax of N(0, 1) logits for the KL map. An MLP memory at zero
    is a dead fixed point (no gradient reaches the first layer), and lq normalisation is undefined at zero.
    The algorithm's buffers (momentum) start at zero.
    """
    shapes = meta.state_shapes(batch, heads, head_dim)
    rmap = meta.map
    gen = torch.Generator().manual_seed(0)
    zero = meta.memory.initial_state == "zero" and (rmap is None or rmap.kind == "projection")
    out = []
    for j, shape in enumerate(shapes.values()):
        if j >= meta.memory.depth or zero:  # the fields after the weight matrices are the algorithm's buffer
            out.append(torch.zeros(shape, dtype=dtype, device=device))
            continue
        base = torch.randn(shape[2:], generator=gen, dtype=torch.float64)
        start = "scaled" if rmap is None else rmap.initial_state
        if start == "softmax_rows":
            base = torch.softmax(base, dim=-1)
        elif start == "scaled":
            base = base / shape[3] ** 0.5
        out.append(base.to(dtype=dtype, device=device).expand(shape).clone())
    return out


def check_inputs(meta: OpMeta, q, k, v, gates, params, initial_state, check: bool | None = None):
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
        raise expected("k", q.shape, k.shape)
    if v.shape != q.shape:
        raise expected("v", q.shape, v.shape)
    for name, x in (("k", k), ("v", v)):
        if x.dtype != q.dtype:
            raise ValueError(f"{name}: dtype {x.dtype} differs from q's {q.dtype}")
        if x.device != q.device:
            raise ValueError(f"{name}: device {x.device} differs from q's {q.device}")
    B, T, H, D = q.shape
    if T == 0:
        raise ValueError("q: the sequence is empty (T = 0)")
    gates = dict(gates or {})
    want = meta.gate_shapes(B, T, H, D)
    missing = sorted(set(want) - set(gates))
    extra = sorted(set(gates) - set(want))
    if missing:
        raise ValueError(f"gates: missing {missing}; this op takes {({k: list(s) for k, s in want.items()})}")
    if extra:
        raise ValueError(f"gates: unexpected {extra}; this op takes {sorted(want) or 'no gates'}")
    for g in meta.gates:
        x = gates[g.name]
        name = f"gates[{g.name!r}]"
        if not isinstance(x, torch.Tensor) or tuple(x.shape) != want[g.name]:
            raise expected(name, want[g.name], getattr(x, "shape", ()))
        if x.device != q.device:
            raise ValueError(f"{name}: device {x.device} differs from q's {q.device}")
        if values_checked(x, check):
            check_range(name, x, g)
    params = dict(params or {})
    extra = sorted(set(params) - set(meta.param_names))
    if extra:
        raise ValueError(f"params: unexpected {extra}; this op takes {meta.param_names or 'no params'}")
    for p, x in params.items():
        if tuple(x.shape) not in ((H, D), (D,)):
            raise expected(f"params[{p!r}]", (H, D), x.shape)
    if initial_state is not None:
        shapes = meta.state_shapes(B, H, D)
        if len(initial_state) != len(shapes):
            raise ValueError(
                f"initial_state: expected {len(shapes)} tensors {list(shapes)}, got {len(initial_state)}")
        for (name, shape), x in zip(shapes.items(), initial_state):
            if tuple(x.shape) != shape:
                raise expected(f"initial_state.{name}", shape, x.shape)
    return gates, params


def as_rows(meta: OpMeta, q, k, v, gates, params, initial_state, keep_dtype: bool = False):
    """Flatten heads into rows: token inputs [N, T, ...], static gates and params [N, ...], state [S·H, ...]
    (S = B, or the number of packed sequences). keep_dtype: q, k, v stay in their dtype (the Triton kernels
    read bf16 and fp16 as such); otherwise everything is fp32 (fp64 for fp64 inputs)."""
    B, T, H, D = q.shape
    dt = torch.float64 if q.dtype == torch.float64 else torch.float32
    flat = [s.to(dt).reshape(-1, *s.shape[2:]) for s in initial_state]
    tok = [x.to(x.dtype if keep_dtype else dt).permute(0, 2, 1, 3).reshape(B * H, T, D) for x in (q, k, v)]
    gate_rows = []
    for g in meta.gates:
        x = gates[g.name].to(dt)
        if g.data_dependent:
            x = x.transpose(1, 2)  # [B, H, T(, D)]
        else:
            x = x.unsqueeze(0).expand(B, *x.shape)
        gate_rows.append(x.reshape(B * H, *x.shape[2:]))
    param_rows = []
    for p in meta.params:
        x = params.get(p.name)
        x = torch.full((H, D), p.default, dtype=dt, device=q.device) if x is None else x.to(dt).expand(H, D)
        param_rows.append(x.unsqueeze(0).expand(B, H, D).reshape(B * H, D))
    return flat, tok, gate_rows, param_rows


def values_checked(x: torch.Tensor, check: bool | None = None) -> bool:
    """Whether a call validates the values of gate x: `check` when given, else always on CPU tensors and on
    other devices only under MIRASC_CHECK=1 (each value read back from a GPU is a host-device synchronisation,
    which would stall every training and decoding step)."""
    if check is not None:
        return bool(check)
    return x.device.type == "cpu" or os.environ.get(CHECK_ENV, "") not in ("", "0")


def check_range(name: str, x: torch.Tensor, g: GateInfo) -> None:
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


def expected(name: str, shape, got) -> ValueError:
    return ValueError(f"{name}: expected shape {list(shape)}, got {list(got)}")
