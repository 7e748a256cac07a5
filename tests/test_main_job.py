"""The main job's smoke run and MQAR's accuracy by query (mirasc.train.evaluate.recall_accuracy)."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn

from mirasc.data.mqar import MQARTask
from mirasc.train.evaluate import recall_accuracy


class _FirstQueryOnly(nn.Module):
    """Answers the first query after the key-value block with its key's value and predicts token 0, never a value,
    everywhere else (the fillers are 0, so no filler repeats a key)."""

    def __init__(self, vocab: int, kv: int):
        super().__init__()
        self.vocab, self.kv = vocab, kv

    def forward(self, input_ids: torch.Tensor):
        keys, values = input_ids[:, 0:2 * self.kv:2], input_ids[:, 1:2 * self.kv:2]
        match = (input_ids[:, :, None] == keys[:, None, :]) & (torch.arange(input_ids.shape[1]) >= 2 * self.kv)[
            None, :, None]
        is_query = match.any(-1)
        first = is_query & (is_query.cumsum(1) == 1)
        answer = torch.where(first, (match * values[:, None, :]).sum(-1), torch.zeros_like(input_ids))
        return SimpleNamespace(logits=nn.functional.one_hot(answer, self.vocab).float())


def test_accuracy_by_query_order_shows_a_memory_that_answers_only_the_first_query():
    task = MQARTask(tier="cpu", seed=0, seq_len=32, kv_pairs=4, random_non_queries=False)
    metrics = recall_accuracy(_FirstQueryOnly(task.vocab_size, 4), task.test_sets(64), torch.device("cpu"))
    assert metrics["queries_32x4"] == [1.0, 0.0, 0.0, 0.0]
    assert metrics["accuracy"] == pytest.approx(0.25)


def test_the_main_job_runs_and_reports_every_model(tmp_path):
    from mirasc.train.main_job import RUNS, main

    assert main(["--quick", "--out", str(tmp_path)]) == 0
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert [name for name, *_ in RUNS] == [k for k in summary if k != "wall_s"]
    for name, *_ in RUNS:
        run = summary[name]
        assert len(run["by_query"]) == 4
        # every example scores 4 queries, so their mean is the held-out accuracy
        assert np.mean(run["by_query"]) == pytest.approx(run["accuracy"], abs=1e-3)
        assert (tmp_path / name / "checkpoint.pt").exists()
    assert (tmp_path / "accuracy_vs_steps.png").exists()
