"""Opening a checkpoint or run folder someone shares runs no code: crafted checkpoints whose unpickling would
create a file are refused with one line by load_checkpoint, `mirasc eval` and `mirasc train --resume`, and the
file is never created; mirasc's own checkpoints (and those written before the plain-data rule) still load."""

from __future__ import annotations

import io
import os
import pickle
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from mirasc.cli import main as cli_main
from mirasc.train import TrainError, train
from mirasc.train.checkpoint import FORMAT, load_checkpoint, set_rng_state

TESTS = Path(__file__).resolve().parent


class _Opens:
    """Unpickling this calls open(path, "w"): it creates the file."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


class _System:
    """Unpickling this runs a shell command that creates the file."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (os.system, (f"touch {self.path}",))


class _Exec:
    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (exec, (f"open({self.path!r}, 'w').write('ran')",))


def _crafted(kind: str, canary: Path, dest: Path) -> Path:
    """A file that looks like a mirasc checkpoint and runs code (creating `canary`) if it is unpickled."""
    payload = {"format": FORMAT, "step": 1, "config": {"task": "mqar"}, "model": {}, "optimizer": {},
               "scheduler": {}, "rng": [], "world_size": 1}
    if kind == "open in config":
        payload["config"] = {"task": _Opens(canary)}
    elif kind == "os.system in model":
        payload["model"] = {"w": _System(canary)}
    elif kind == "exec in rng":
        payload["rng"] = [_Exec(canary)]
    elif kind == "raw pickle":   # not torch's zip format: a plain protocol-2 pickle stream
        dest.write_bytes(pickle.dumps({**payload, "x": _Opens(canary)}, protocol=2))
        return dest
    elif kind == "raw pickle, protocol 5":
        dest.write_bytes(pickle.dumps({**payload, "x": _System(canary)}, protocol=5))
        return dest
    torch.save(payload, dest)
    return dest


KINDS = ["open in config", "os.system in model", "exec in rng", "raw pickle", "raw pickle, protocol 5"]


def test_the_crafted_files_do_run_code_when_unpickled(tmp_path):
    """The test's own control: each crafted file really creates the canary under plain unpickling."""
    for kind in KINDS:
        canary = tmp_path / f"canary-{kind.replace(' ', '_').replace(',', '')}"
        path = _crafted(kind, canary, tmp_path / "ck.pt")
        if kind.startswith("raw"):
            pickle.loads(path.read_bytes())
        else:
            torch.load(path, weights_only=False)
        assert canary.exists(), kind


@pytest.mark.parametrize("kind", KINDS)
def test_crafted_checkpoint_is_refused_and_runs_nothing(tmp_path, kind):
    canary = tmp_path / "CANARY"
    path = _crafted(kind, canary, tmp_path / "checkpoint.pt")
    with pytest.raises(TrainError) as exc:
        load_checkpoint(path)
    msg = str(exc.value)
    assert len(msg.splitlines()) == 1 and str(path) in msg
    assert "refused checkpoint" in msg or "cannot be read" in msg
    assert not canary.exists(), "unpickling the crafted checkpoint ran code"


def test_refusal_names_the_object(tmp_path):
    path = _crafted("os.system in model", tmp_path / "CANARY", tmp_path / "checkpoint.pt")
    with pytest.raises(TrainError, match=r"refused checkpoint .*(posix|os)\.system.*could run code"):
        load_checkpoint(path)


def _run_dir_with(tmp_path, kind) -> tuple[Path, Path]:
    run = tmp_path / "run"
    run.mkdir()
    canary = tmp_path / "CANARY"
    _crafted(kind, canary, run / "checkpoint.pt")
    return run, canary


@pytest.mark.parametrize("kind", ["open in config", "os.system in model"])
def test_mirasc_eval_refuses(tmp_path, capsys, kind):
    run, canary = _run_dir_with(tmp_path, kind)
    rc = cli_main(["eval", str(run), "--task", "mqar"])
    err = capsys.readouterr().err
    assert rc == 2 and len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert not canary.exists()


@pytest.mark.parametrize("kind", ["exec in rng", "raw pickle"])
def test_resume_refuses_and_writes_nothing(tmp_path, kind):
    run, canary = _run_dir_with(tmp_path, kind)
    before = {p.name: p.read_bytes() for p in run.iterdir()}
    with pytest.raises(TrainError):
        train({"spec": "transformer", "task": "mqar", "seq_len": 32, "kv_pairs": 2, "hidden_size": 16,
               "num_heads": 2, "num_layers": 1, "batch_size": 4, "steps": 2, "out": str(run), "resume": True,
               "quiet": True})
    assert not canary.exists()
    assert {p.name: p.read_bytes() for p in run.iterdir()} == before, "the run folder was changed"


def test_eval_in_a_fresh_process_runs_nothing(tmp_path):
    """The same through the console entry point, as a user would run it."""
    run, canary = _run_dir_with(tmp_path, "os.system in model")
    res = subprocess.run([sys.executable, "-m", "mirasc", "eval", str(run)], capture_output=True, text=True,
                         timeout=120, cwd=tmp_path)
    assert res.returncode == 2 and "refused checkpoint" in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1, res.stderr
    assert not canary.exists()


def test_own_checkpoints_hold_only_tensors_and_plain_data(tmp_path):
    res = train({"spec": "transformer", "task": "mqar", "seq_len": 32, "kv_pairs": 2, "hidden_size": 16,
                 "num_heads": 2, "num_layers": 1, "batch_size": 4, "steps": 2, "ckpt_every": 1,
                 "out": str(tmp_path / "run"), "quiet": True, "eval_at_end": False})
    assert torch.serialization.get_unsafe_globals_in_checkpoint(res.checkpoint) == []
    ck = load_checkpoint(res.checkpoint)
    assert ck["step"] == 2 and isinstance(ck["torch"], str) and type(ck["torch"]) is str


def test_checkpoint_from_before_the_rule_still_loads(tmp_path):
    """Checkpoints written before kept numpy's RNG state as an array and torch's version as a TorchVersion."""
    torch.manual_seed(3)
    np.random.seed(3)
    random.seed(3)
    legacy = {"format": FORMAT, "step": 4, "config": {}, "model": {"w": torch.ones(2)}, "optimizer": {},
              "scheduler": {}, "world_size": 1, "torch": torch.__version__,
              "rng": [{"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}]}
    buf = io.BytesIO()
    torch.save(legacy, buf)
    path = tmp_path / "checkpoint.pt"
    path.write_bytes(buf.getvalue())
    ck = load_checkpoint(path)
    expect = (np.random.rand(), random.random(), float(torch.rand(())))
    np.random.seed(0)
    random.seed(0)
    torch.manual_seed(0)
    set_rng_state(ck["rng"][0])
    assert (np.random.rand(), random.random(), float(torch.rand(()))) == expect
