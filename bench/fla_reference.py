"""mirasc's delta-rule specs beside flash-linear-attention's reference recurrences (fla installed, e.g. in
.venv-bench: `bash bench/setup.sh`).

    python -m bench.fla_reference [--T 150] [--D 16] [--chunk 64]

Rows: `deltanet.miras` against fla's `delta_rule_recurrence`, and `gated_deltanet.miras` (both gradient
placements) against fla's `naive_recurrent_gated_delta_rule`, each chunked (mirasc's exact form) and, for
scale, the paper's chunk approximation of Eq. 28 (the oracle's chunked mode). fla's references compute in
fp32, so agreement is to fp32 precision. Inputs: l2-normalised q and k, β ∈ (0, 1), α ∈ (0.9, 1).
The same comparison runs as tests/test_fla_reference.py wherever fla is importable.
"""

from __future__ import annotations

import argparse
import os

os.environ.setdefault("TRITON_INTERPRET", "1")  # fla imports triton; on a CPU-only machine it needs the interpreter

import torch  # noqa: E402

import mirasc  # noqa: E402
from mirasc.oracle import recurrent  # noqa: E402

MODELS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "models")


def _rel_rms(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double(), b.double()
    return float((a - b).pow(2).mean().sqrt() / b.pow(2).mean().sqrt())


def _inputs(B: int, T: int, H: int, D: int, seed: int = 0) -> dict:
    gen = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(B, T, H, D, generator=gen, dtype=torch.float64) for _ in range(3))
    q, k = (torch.nn.functional.normalize(x, dim=-1) for x in (q, k))
    beta = torch.rand(B, T, H, generator=gen, dtype=torch.float64)
    alpha = 0.9 + 0.1 * torch.rand(B, T, H, generator=gen, dtype=torch.float64)
    s0 = 0.1 * torch.randn(B, H, D, D, generator=gen, dtype=torch.float64)  # mirasc's layout: [B, H, D_v, D_k]
    return {"q": q, "k": k, "v": v, "beta": beta, "alpha": alpha, "s0": s0}


def compare(T: int = 150, D: int = 16, chunk: int = 64, B: int = 2, H: int = 2) -> list[dict]:
    """One row per comparison: errors of mirasc's output and final state against fla's recurrence."""
    from fla.ops.delta_rule.naive import delta_rule_recurrence
    from fla.ops.gated_delta_rule.naive import naive_recurrent_gated_delta_rule

    x = _inputs(B, T, H, D)
    q_scaled = x["q"] * D ** -0.5  # fla scales q by 1/sqrt(D_k) inside its references
    heads_first = {n: x[n].transpose(1, 2) for n in ("q", "k", "v")}  # delta_rule_recurrence takes [B, H, T, D]
    o_dn, s_dn = delta_rule_recurrence(heads_first["q"], heads_first["k"], heads_first["v"],
                                       x["beta"].transpose(1, 2), initial_state=x["s0"].transpose(-1, -2))
    o_dn, s_dn = o_dn.transpose(1, 2), s_dn.transpose(-1, -2)
    o_gdn, s_gdn = naive_recurrent_gated_delta_rule(x["q"], x["k"], x["v"], x["beta"], torch.log(x["alpha"]),
                                                    initial_state=x["s0"].transpose(-1, -2), output_final_state=True)
    s_gdn = s_gdn.transpose(-1, -2)

    rows = []
    cases = [("deltanet", None, {"eta": x["beta"]}, o_dn, s_dn, "delta_rule_recurrence"),
             ("gated_deltanet", None, {"alpha": x["alpha"], "eta": x["beta"]}, o_gdn, s_gdn,
              "naive_recurrent_gated_delta_rule"),
             ("gated_deltanet", {"gradient_at": "previous"}, {"alpha": x["alpha"], "eta": x["beta"]}, o_gdn, s_gdn,
              "naive_recurrent_gated_delta_rule")]
    for stem, options, gates, o_ref, s_ref, ref_name in cases:
        op = mirasc.compile(os.path.join(MODELS, f"{stem}.miras"), backend="torch", options=options)
        o, s = op(q_scaled, x["k"], x["v"], gates=gates, initial_state=[x["s0"]], output_final_state=True,
                  chunk_size=chunk)
        label = stem + "".join(f" [{k}={v}]" for k, v in (options or {}).items())
        rows.append({"spec": label, "form": f"mirasc chunk {chunk}", "reference": f"fla {ref_name}",
                     "out": _rel_rms(o, o_ref), "state": _rel_rms(s.w1, s_ref)})
        if op.spec.algorithm.gradient_at == "previous":  # the chunk approximation exists for this placement
            o_a, s_a = recurrent(op.spec, op.module.loss, q_scaled, x["k"], x["v"], gates, {}, (x["s0"],),
                                 chunk_size=chunk)
            rows.append({"spec": label, "form": f"Eq. 28 approximation, chunk {chunk}",
                         "reference": f"fla {ref_name}", "out": _rel_rms(o_a, o_ref), "state": _rel_rms(s_a[0], s_ref)})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--T", type=int, default=150)
    ap.add_argument("--D", type=int, default=16)
    ap.add_argument("--chunk", type=int, default=64)
    args = ap.parse_args()
    import fla

    print(f"flash-linear-attention {fla.__version__}, torch {torch.__version__}; B=2, T={args.T}, H=2, D={args.D}, "
          "mirasc in float64, fla's references in float32; relative RMS error")
    print("| spec | form | reference | output | final state |\n|---|---|---|---|---|")
    for r in compare(args.T, args.D, args.chunk):
        print(f"| {r['spec']} | {r['form']} | {r['reference']} | {r['out']:.2e} | {r['state']:.2e} |")


if __name__ == "__main__":
    main()
