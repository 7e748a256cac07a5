"""Multi-query associative recall (MQAR), Zoology's recipe, generated on the fly.

Per example (Arora et al. 2023, `zoology/data/multiquery_ar.py`):
keys come from 1 .. V/2-1 and values from V/2 .. V-1 (disjoint halves; token 0 is the blank filler), `kv` distinct
keys and values paired in order, the key-value block `k1 v1 k2 v2 ...` first, then the query region where key j
sits at offset C + 2 g_j with the gaps g_j drawn without replacement from the power law p(i) ∝ a i^(a-1). The
label of key j's query position is value j; every other label is -100, so exactly `kv` positions are scored.
With `random_non_queries` every blank in the input becomes a random token (never scored).

Two tiers, selectable by name (eval-tasks.md §1.6):
  "cpu":   V = 512, train mix (64,4) (128,8) (256,16) equally weighted; test (64,4) (64,8) (64,16) (128,32) (256,64)
  "paper": V = 8192, the Based-recipe mix (64,4)x100k (128,8) (256,16) (256,32) (256,64) x20k each, weighted by
           count; test (64,4) (64,8) (64,16) (128,32) (256,64) (512,128) (1024,256) — comparable to the papers.
Explicit `seq_len` and `kv_pairs` replace the mix (and the test slices) by that single setting.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .common import IGNORE_INDEX, DataError, sample_distinct, step_rng, test_rng, weighted_distinct

TIERS: dict[str, dict] = {
    "cpu": {
        "vocab_size": 512,
        "train_mix": [(64, 4, 1.0), (128, 8, 1.0), (256, 16, 1.0)],
        "test": [(64, 4), (64, 8), (64, 16), (128, 32), (256, 64)],
        "test_examples": 256,
    },
    "paper": {
        "vocab_size": 8192,
        "train_mix": [(64, 4, 100_000), (128, 8, 20_000), (256, 16, 20_000), (256, 32, 20_000), (256, 64, 20_000)],
        "test": [(64, 4), (64, 8), (64, 16), (128, 32), (256, 64), (512, 128), (1024, 256)],
        "test_examples": 1000,
    },
}


def check_geometry(vocab_size: int, seq_len: int, kv_pairs: int, num_passes: int = 1) -> None:
    """Zoology's assertions, as one-line DataErrors."""
    if seq_len % 2:
        raise DataError(f"MQAR sequence length must be even, got {seq_len}")
    if vocab_size <= seq_len:
        raise DataError(f"MQAR needs vocab_size > seq_len, got vocab {vocab_size} and length {seq_len}")
    if kv_pairs < 1:
        raise DataError(f"MQAR needs at least one key-value pair, got {kv_pairs}")
    if 2 * kv_pairs * num_passes + 2 * kv_pairs > seq_len:
        raise DataError(
            f"MQAR with {kv_pairs} pairs and {num_passes} pass(es) needs seq_len >= {2 * kv_pairs * (num_passes + 1)}, "
            f"got {seq_len}"
        )
    if kv_pairs > vocab_size // 2 - 1:
        raise DataError(f"MQAR vocab {vocab_size} has only {vocab_size // 2 - 1} keys for {kv_pairs} pairs")


def power_law_logp(space: int, power_a: float) -> np.ndarray:
    i = np.arange(1, space + 1, dtype=np.float64)
    p = power_a * i ** (power_a - 1)
    return np.log(p / p.sum())


def multiquery_ar(
    vocab_size: int,
    num_examples: int,
    input_seq_len: int,
    num_kv_pairs: int,
    rng: np.random.Generator,
    power_a: float = 0.01,
    random_non_queries: bool = True,
    num_passes: int = 1,
) -> dict[str, np.ndarray]:
    """One MQAR batch: {"input_ids", "labels"} int64 [N, L], plus "keys", "values" [N, kv] and "query_pos" [N, kv]."""
    V, L, kv, N = vocab_size, input_seq_len, num_kv_pairs, num_examples
    check_geometry(V, L, kv, num_passes)
    keys = sample_distinct(rng, N, V // 2 - 1, kv) + 1
    values = sample_distinct(rng, N, V - V // 2, kv) + V // 2
    block = np.zeros((N, 2 * kv), dtype=np.int64)
    block[:, 0::2] = keys
    block[:, 1::2] = values
    kvs = np.tile(block, (1, num_passes))
    inputs, labels, query_pos = place_queries(rng, kvs, keys, values, L, V, power_a, random_non_queries)
    return {"input_ids": inputs, "labels": labels, "keys": keys, "values": values, "query_pos": query_pos}


def place_queries(rng, kvs, keys, values, L: int, V: int, power_a: float, random_non_queries: bool):
    """After the key-value block kvs [N, C]: each key queried once at a power-law gap, only the answers scored.
    Returns (inputs [N, L], labels [N, L] with -100 off the answers, query positions [N, kv])."""
    N, C = kvs.shape
    kv = keys.shape[1]
    space = (L - C) // 2
    gaps = weighted_distinct(rng, N, power_law_logp(space, power_a), kv)
    rows = np.arange(N)[:, None]
    queries = np.zeros((N, L - C + 1), dtype=np.int64)
    queries[rows, gaps * 2] = keys
    examples = np.concatenate([kvs, queries], axis=1)
    labels = np.full((N, L + 1), IGNORE_INDEX, dtype=np.int64)
    labels[rows, C + gaps * 2 + 1] = values
    inputs, labels = examples[:, :-1].copy(), labels[:, 1:].copy()
    if random_non_queries:
        blank = inputs == 0
        inputs[blank] = rng.integers(0, V, size=int(blank.sum()))
    return inputs, labels, C + gaps * 2


@dataclass
class MQARTask:
    """MQAR on the fly. `train_batch(step)` is a pure function of (seed, step); `test_sets()` are fixed."""

    tier: str = "cpu"
    seed: int = 0
    batch_size: int = 64
    vocab_size: int | None = None
    seq_len: int | None = None
    kv_pairs: int | None = None
    power_a: float = 0.01
    random_non_queries: bool = True
    test_examples: int | None = None

    name = "mqar"

    def __post_init__(self):
        if self.tier not in TIERS:
            raise DataError(f"unknown MQAR tier {self.tier!r} (expected {', '.join(TIERS)})")
        t = TIERS[self.tier]
        self.vocab_size = int(self.vocab_size or t["vocab_size"])
        if (self.seq_len is None) != (self.kv_pairs is None):
            # One of the two given: complete it the Zoology way (kv = L/16, at least 4; L = 16 kv).
            if self.seq_len is None:
                self.seq_len = max(64, 16 * self.kv_pairs)
            else:
                self.kv_pairs = max(1, self.seq_len // 16)
        if self.seq_len is not None:
            self.mix = [(int(self.seq_len), int(self.kv_pairs), 1.0)]
            self.test = [(int(self.seq_len), int(self.kv_pairs))]
        else:
            self.mix = list(t["train_mix"])
            self.test = [s for s in t["test"]]
        for L, kv, *_ in self.mix + [(L, kv) for L, kv in self.test]:
            check_geometry(self.vocab_size, L, kv)
        w = np.array([m[2] for m in self.mix], dtype=np.float64)
        self.weights = w / w.sum()
        self.test_examples = int(self.test_examples or t["test_examples"])

    @property
    def max_seq_len(self) -> int:
        return max(L for L, *_ in self.mix + self.test)

    def train_batch(self, step: int) -> dict[str, np.ndarray]:
        rng = step_rng(self.seed, step)
        i = int(rng.choice(len(self.mix), p=self.weights)) if len(self.mix) > 1 else 0
        L, kv, _ = self.mix[i]
        return multiquery_ar(self.vocab_size, self.batch_size, L, kv, rng, self.power_a, self.random_non_queries)

    def test_sets(self, num_examples: int | None = None) -> list[tuple[str, dict[str, np.ndarray]]]:
        """[(name "LxKV", batch)] with seeds disjoint from training (Zoology draws test seeds from [2^31, 2^32))."""
        n = int(num_examples or self.test_examples)
        out = []
        for i, (L, kv) in enumerate(self.test):
            out.append((f"{L}x{kv}", multiquery_ar(self.vocab_size, n, L, kv, test_rng(self.seed, i), self.power_a,
                                                   self.random_non_queries)))
        return out
