"""mirasc's delta rules equal flash-linear-attention's reference recurrences (fp32 precision: fla computes in
fp32). fla lives only in the benchmark venv (`bash bench/setup.sh`; run this file with .venv-bench/bin/python);
elsewhere the module is skipped. `python -m bench.fla_reference` prints the same comparison as a table."""

from __future__ import annotations

import pytest

pytest.importorskip("fla", reason="flash-linear-attention is installed only in .venv-bench (bash bench/setup.sh)")

from bench.fla_reference import compare  # noqa: E402


@pytest.mark.parametrize("chunk", [16, 64])
def test_delta_rules_equal_fla(chunk):
    rows = compare(T=150, D=16, chunk=chunk)
    exact = {r["spec"]: r for r in rows if r["form"].startswith("mirasc")}
    for spec in ("deltanet", "gated_deltanet"):
        assert exact[spec]["out"] < 1e-5 and exact[spec]["state"] < 1e-5, exact[spec]
    # Eq. 9's placement is a different model from the published Gated DeltaNet
    assert exact["gated_deltanet [gradient_at=previous]"]["out"] > 1e-3
