"""Recall with corrupted values: tasks where a robust inner loss (Huber / lp: Yaad, Moneta) should help
(eval-tasks.md §3.3). Each has a contamination knob rho; rho = 0 is the clean control.

1. `corrupted_repeat_mqar` (discrete, trainable through `RobustRecallTask`): the MQAR key-value block is repeated
   `num_passes` times; in each pass (mode "random") or only in the last pass (mode "last") a pair's value is
   replaced, with probability rho, by a random other value. The target at query time is the clean value (the
   majority in "random" mode; an l2 last-write-wins memory is maximally hurt in "last" mode).
2. `continuous_noisy_recall` (memory-level, float tensors): unit-norm keys and values; the written values get
   heavy-tailed noise (Student-t with nu degrees of freedom) or, with probability rho, an outlier v + scale·u.
   Queries are the clean keys; score with `nearest_value_accuracy` (and cosine).
3. `icl_regression` (memory-level): y_i = W x_i + noise, a fraction rho of the y_i get large outliers; the query
   target is the clean W x_q. Score with MSE against it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .common import DataError, sample_distinct, step_rng, test_rng
from .mqar import TIERS, check_geometry, place_queries


def _check_rho(rho: float) -> None:
    if not 0.0 <= rho <= 1.0:
        raise DataError(f"contamination must lie in [0, 1], got {rho}")


def corrupted_repeat_mqar(vocab_size: int, num_examples: int, input_seq_len: int, num_kv_pairs: int,
                          num_passes: int, contamination: float, rng: np.random.Generator, mode: str = "random",
                          power_a: float = 0.01, random_non_queries: bool = True) -> dict[str, np.ndarray]:
    """MQAR with `num_passes` copies of the KV block, values corrupted with probability `contamination`.

    Returns input_ids, labels (clean values at the query positions), values (clean), corrupted (bool [N, P, kv]) and
    query_pos ([N, kv], where pair j is queried)."""
    _check_rho(contamination)
    if mode not in ("random", "last"):
        raise DataError(f"robust mode must be random or last, got {mode!r}")
    V, L, kv, N, P = vocab_size, input_seq_len, num_kv_pairs, num_examples, num_passes
    check_geometry(V, L, kv, P)
    C = 2 * kv * P
    keys = sample_distinct(rng, N, V // 2 - 1, kv) + 1
    values = sample_distinct(rng, N, V - V // 2, kv) + V // 2
    corrupted = rng.random((N, P, kv)) < contamination
    if mode == "last":
        corrupted[:, :-1] = False
    # A random *other* value: shift by 1 .. V/2-1 inside the value half.
    shift = rng.integers(1, V - V // 2, size=(N, P, kv))
    written = np.where(corrupted, (values[:, None, :] - V // 2 + shift) % (V - V // 2) + V // 2, values[:, None, :])
    kvs = np.zeros((N, P, 2 * kv), dtype=np.int64)
    kvs[:, :, 0::2] = keys[:, None, :]
    kvs[:, :, 1::2] = written
    kvs = kvs.reshape(N, C)
    inputs, labels, query_pos = place_queries(rng, kvs, keys, values, L, V, power_a, random_non_queries)
    return {"input_ids": inputs, "labels": labels, "values": values, "corrupted": corrupted, "query_pos": query_pos}


@dataclass
class RobustRecallTask:
    """Corrupted-repeat MQAR for training and evaluation; test slices sweep the contamination rate."""

    tier: str = "cpu"
    seed: int = 0
    batch_size: int = 64
    vocab_size: int | None = None
    seq_len: int | None = None
    kv_pairs: int | None = None
    num_passes: int = 3
    contamination: float = 0.1
    mode: str = "random"
    test_contaminations: tuple = (0.0, 0.1, 0.2, 0.3)
    test_examples: int = 256

    name = "robust"

    def __post_init__(self):
        if self.tier not in TIERS:
            raise DataError(f"unknown MQAR tier {self.tier!r} (expected {', '.join(TIERS)})")
        _check_rho(self.contamination)
        self.vocab_size = int(self.vocab_size or TIERS[self.tier]["vocab_size"])
        self.seq_len = int(self.seq_len or 128)
        self.kv_pairs = int(self.kv_pairs or 8)
        check_geometry(self.vocab_size, self.seq_len, self.kv_pairs, self.num_passes)
        if self.mode not in ("random", "last"):
            raise DataError(f"robust mode must be random or last, got {self.mode!r}")

    @property
    def max_seq_len(self) -> int:
        return self.seq_len

    def _gen(self, rng, n, rho):
        return corrupted_repeat_mqar(self.vocab_size, n, self.seq_len, self.kv_pairs, self.num_passes, rho, rng,
                                     self.mode)

    def train_batch(self, step: int) -> dict[str, np.ndarray]:
        return self._gen(step_rng(self.seed, step), self.batch_size, self.contamination)

    def test_sets(self, num_examples: int | None = None):
        n = int(num_examples or self.test_examples)
        return [(f"rho={r:g}", self._gen(test_rng(self.seed, i), n, float(r)))
                for i, r in enumerate(self.test_contaminations)]


def continuous_noisy_recall(num_examples: int, num_kv_pairs: int, dim: int, contamination: float,
                            generator: torch.Generator | None = None, noise: str = "outlier", nu: float = 2.0,
                            sigma: float = 0.1, outlier_scale: float = 10.0, dtype=torch.float32) -> dict:
    """Keys/values [N, kv, d] (unit norm), values_written (noisy), queries [N, kv, d] (clean keys, shuffled),
    target [N, kv] (index of the queried pair), outlier [N, kv] bool."""
    _check_rho(contamination)
    if noise not in ("outlier", "student_t"):
        raise DataError(f"noise must be outlier or student_t, got {noise!r}")
    g = generator or torch.Generator().manual_seed(0)
    N, kv, d = num_examples, num_kv_pairs, dim

    def unit(*shape):
        x = torch.randn(*shape, generator=g, dtype=torch.float64)
        return x / x.norm(dim=-1, keepdim=True)

    keys, values = unit(N, kv, d), unit(N, kv, d)
    outlier = torch.rand(N, kv, generator=g, dtype=torch.float64) < contamination
    if noise == "outlier":
        written = values + outlier[..., None] * outlier_scale * unit(N, kv, d)
    else:  # Student-t noise on every value, scaled by sigma; contamination scales the tail mass via mixing
        z = torch.randn(N, kv, d, generator=g, dtype=torch.float64)
        chi2 = torch.distributions.Chi2(torch.tensor(float(nu))).sample((N, kv, 1)).to(torch.float64)
        t = z / torch.sqrt(chi2 / nu)
        written = values + sigma * t * outlier[..., None]
    perm = torch.argsort(torch.rand(N, kv, generator=g), dim=1)
    queries = torch.gather(keys, 1, perm[..., None].expand(N, kv, d))
    cast = {"keys": keys, "values": values, "values_written": written, "queries": queries}
    out = {k: v.to(dtype) for k, v in cast.items()}
    out.update(target=perm, outlier=outlier)
    return out


def nearest_value_accuracy(pred: torch.Tensor, values: torch.Tensor, target: torch.Tensor) -> float:
    """pred [N, Q, d] read from a memory; values [N, kv, d] clean; target [N, Q]: fraction whose nearest value
    (by dot product) is the target pair's."""
    scores = torch.einsum("nqd,nkd->nqk", pred.double(), values.double())
    return float((scores.argmax(-1) == target).double().mean())


def icl_regression(num_examples: int, seq_len: int, dim: int, contamination: float, dim_out: int | None = None,
                   generator: torch.Generator | None = None, noise_std: float = 0.1, outlier_scale: float = 10.0,
                   dtype=torch.float32) -> dict:
    """x [N, T, d], y [N, T, d_out] (contaminated), W [N, d_out, d], x_query [N, d], y_query [N, d_out] (clean),
    outlier [N, T] bool."""
    _check_rho(contamination)
    g = generator or torch.Generator().manual_seed(0)
    N, T, d = num_examples, seq_len, dim
    do = dim_out or dim
    W = torch.randn(N, do, d, generator=g, dtype=torch.float64) / d**0.5
    x = torch.randn(N, T, d, generator=g, dtype=torch.float64)
    y = torch.einsum("nod,ntd->nto", W, x) + noise_std * torch.randn(N, T, do, generator=g, dtype=torch.float64)
    outlier = torch.rand(N, T, generator=g, dtype=torch.float64) < contamination
    y = y + outlier[..., None] * outlier_scale * torch.randn(N, T, do, generator=g, dtype=torch.float64)
    xq = torch.randn(N, d, generator=g, dtype=torch.float64)
    yq = torch.einsum("nod,nd->no", W, xq)
    return {"x": x.to(dtype), "y": y.to(dtype), "W": W.to(dtype), "x_query": xq.to(dtype), "y_query": yq.to(dtype),
            "outlier": outlier}
