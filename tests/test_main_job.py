"""The main job's smoke run and MQAR's accuracy by pair (mirasc.train.evaluate.recall_accuracy)."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn

from mirasc.data.mqar import MQARTask
from mirasc.train.evaluate import recall_accuracy


class _LastPairOnly(nn.Module):
    """Answers a query with the right value only when it asks for the last pair written; every other position
    predicts token 0, which is never a value."""

    def __init__(self, vocab: int, kv: int):
        super().__init__()
        self.vocab, self.kv = vocab, kv

    def forward(self, input_ids: torch.Tensor):
        n, length = input_ids.shape
        last_key, last_value = input_ids[:, 2 * self.kv - 2], input_ids[:, 2 * self.kv - 1]
        asks = (input_ids == last_key[:, None]) & (torch.arange(length) >= 2 * self.kv)[None, :]
        answer = torch.where(asks, last_value[:, None], torch.zeros_like(input_ids))
        return SimpleNamespace(logits=nn.functional.one_hot(answer, self.vocab).float())


def test_accuracy_by_pair_shows_a_memory_that_keeps_only_the_last_pair():
    task = MQARTask(tier="cpu", seed=0, seq_len=32, kv_pairs=4)
    metrics = recall_accuracy(_LastPairOnly(task.vocab_size, 4), task.test_sets(64), torch.device("cpu"))
    # a random filler token can equal the last key before its query and be answered there, but it is never scored
    assert metrics["pairs_32x4"] == [0.0, 0.0, 0.0, 1.0]
    assert metrics["accuracy"] == pytest.approx(0.25)


def test_the_main_job_runs_and_reports_every_model(tmp_path):
    from mirasc.train.main_job import RUNS, main

    assert main(["--quick", "--out", str(tmp_path)]) == 0
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert [name for name, *_ in RUNS] == [k for k in summary if k != "wall_s"]
    for name, *_ in RUNS:
        run = summary[name]
        assert len(run["by_pair"]) == 4
        # every example scores each of its 4 pairs once, so the pairs' mean is the held-out accuracy
        assert np.mean(run["by_pair"]) == pytest.approx(run["accuracy"], abs=1e-3)
        assert (tmp_path / name / "checkpoint.pt").exists()
    assert (tmp_path / "accuracy_vs_steps.png").exists()
