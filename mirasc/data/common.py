"""Shared pieces of the data package: the ignore index, the error type, seeded generators."""

from __future__ import annotations

import numpy as np

IGNORE_INDEX = -100

# Distinct stream tags so that train and test data of different tasks never share a numpy seed sequence.
STREAM_TRAIN = 0x7EA1
STREAM_TEST = 0x7E57


class DataError(ValueError):
    """Bad data input (missing path, empty corpus, impossible task geometry); the message is one line."""


def step_rng(seed: int, step: int, stream: int = STREAM_TRAIN) -> np.random.Generator:
    """The generator of one global training batch: a pure function of (seed, step, stream)."""
    return np.random.default_rng([int(seed) & 0xFFFFFFFF, int(step), int(stream)])


def test_rng(seed: int, index: int, stream: int = STREAM_TEST) -> np.random.Generator:
    """The generator of one test set; its seed sequence differs from every training batch's."""
    return np.random.default_rng([int(seed) & 0xFFFFFFFF, 2**31 + int(index), int(stream), 1])


def sample_distinct(rng: np.random.Generator, rows: int, n: int, k: int) -> np.ndarray:
    """`rows` independent draws of `k` distinct integers from range(n), in random order: int64 [rows, k]."""
    if k > n:
        raise DataError(f"cannot draw {k} distinct items from {n}")
    return np.argsort(rng.random((rows, n)), axis=1)[:, :k].astype(np.int64)


def weighted_distinct(rng: np.random.Generator, rows: int, logp: np.ndarray, k: int) -> np.ndarray:
    """Sampling without replacement proportional to exp(logp), `rows` times (Gumbel top-k): int64 [rows, k].

    The Gumbel top-k order has the law of sequential draws without replacement (np.random.choice with p)."""
    g = rng.gumbel(size=(rows, logp.shape[0]))
    return np.argsort(-(logp[None, :] + g), axis=1)[:, :k].astype(np.int64)
