"""The main job on its embedded default: compile every prebuilt spec, print Moneta's derivation, and run
Moneta's chunkwise op on random data against the exact per-token recurrence, printing error and time."""

from __future__ import annotations

import argparse
import time

import torch

import mirasc
from mirasc.derive import derive, explain
from mirasc.resources import prebuilt_names
from mirasc.sample import random_inputs

DEMO_RANGES = {"alpha": (0.9, 1.0), "eta": (0.0, 0.1), "theta": (0.0, 0.5), "delta": (0.5, 1.5)}


def _rel_rms(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).pow(2).mean().sqrt() / b.pow(2).mean().sqrt())


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--spec", default="moneta", help="a prebuilt name, a path or spec text")
    p.add_argument("--B", type=int, default=2)
    p.add_argument("--T", type=int, default=256)
    p.add_argument("--H", type=int, default=4)
    p.add_argument("--D", type=int, default=32)
    p.add_argument("--chunk", type=int, default=64)
    args = p.parse_args(argv)
    torch.manual_seed(0)

    print("== compiling the prebuilt specs")
    for name in prebuilt_names():
        t0 = time.perf_counter()
        op = mirasc.compile(name, backend="torch")
        print(f"  {name:<24} {op.name:<18} gates {sorted(op.gate_shapes(1, 1, 1, 1)) or '-'}"
              f"  ({1e3 * (time.perf_counter() - t0):.0f} ms)")

    spec = mirasc.load(args.spec)
    print(f"\n== {spec.name}: derivation\n")
    print(explain(derive(spec)))

    op = mirasc.compile(args.spec, backend="torch")
    B, T, H, D = args.B, args.T, args.H, args.D
    q, k, v, gates, _ = random_inputs(op, B, T, H, D, torch.float32, gate_ranges=DEMO_RANGES)
    s0 = op.init_state(B, H, D)
    print(f"\n== {spec.name}: chunkwise op vs exact recurrence, B={B} T={T} H={H} D={D}, chunk {args.chunk}, fp32")
    t0 = time.perf_counter()
    o, state = op(q, k, v, gates=gates, initial_state=s0, output_final_state=True, chunk_size=args.chunk)
    t1 = time.perf_counter()
    o_exact, state_exact = op.recurrent(q, k, v, gates=gates, initial_state=s0)
    t2 = time.perf_counter()
    o_chunked, _ = op.recurrent(q, k, v, gates=gates, initial_state=s0, chunk_size=args.chunk)
    print(f"  chunkwise op       {1e3 * (t1 - t0):8.1f} ms")
    print(f"  exact recurrence   {1e3 * (t2 - t1):8.1f} ms")
    print(f"  rel. RMS error vs the chunked oracle (same algorithm):  {_rel_rms(o, o_chunked):.2e}")
    print(f"  rel. RMS difference vs the exact recurrence (chunking's approximation): {_rel_rms(o, o_exact):.2e}")
    for name, a, b in zip(state._fields, state, state_exact):
        print(f"  final state {name}: rel. RMS difference vs exact {_rel_rms(a, b):.2e}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
