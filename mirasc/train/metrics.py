"""Logging and metrics of a training run: progress lines, metrics.jsonl (one JSON record per logged step) and the
loss-curve plot drawn from it."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import torch

from .checkpoint import atomic_write_text
from .config import TrainConfig


def say(cfg: TrainConfig, rank: int, msg: str) -> None:
    """Print a progress line from rank 0 only (every rank runs the same loop), unless the run is quiet."""
    if rank == 0 and not cfg.quiet:
        print(msg, flush=True)


def read_metrics(path: Path) -> list[dict]:
    """The records of a metrics.jsonl, up to a torn last line; [] when there is no file."""
    if not path.is_file():
        return []
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if line:
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                break  # a torn last line after a kill
    return out


def plot_metrics(metrics_path: Path, png: Path, title: str = "") -> Path | None:
    """Loss curve (and lr) from metrics.jsonl into a PNG (matplotlib, Agg); None when matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    rows = read_metrics(metrics_path)
    if not rows:
        return None
    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    ax.plot([r["step"] for r in rows], [r["loss"] for r in rows], lw=1.2, label="train loss")
    evals = [r for r in rows if "eval_loss" in r]
    if evals:
        ax.plot([r["step"] for r in evals], [r["eval_loss"] for r in evals], "o-", label="eval loss")
    ax.set_xlabel("step")
    ax.set_ylabel("loss (nats)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    tmp = png.with_name(f".{png.name}.tmp{os.getpid()}.png")
    fig.savefig(tmp)
    plt.close(fig)
    os.replace(tmp, png)
    return png


def start_metrics(path: Path, resumed_at: int | None) -> None:
    """Begin metrics.jsonl: empty for a new run; for a resumed one, the records up to the checkpoint's step (the
    steps after it are trained again and logged anew)."""
    kept = [r for r in read_metrics(path) if r.get("step", 0) <= resumed_at] if resumed_at is not None else []
    atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in kept))


class StepLog:
    """Throughput and loss bookkeeping of the steps run here, and the records of the logged ones: every
    `log_every` steps, the first step run and the last step, appended to metrics.jsonl by rank 0."""

    def __init__(self, cfg: TrainConfig, rank: int, metrics_path: Path, start: int) -> None:
        self.cfg, self.rank, self.start = cfg, rank, start
        self.losses: list = []   # [(step, loss)] of the logged steps
        self.t0 = time.perf_counter()
        self.t_log, self.tok_log, self.tok_total = self.t0, 0, 0
        self.last_loss = float("nan")
        self.file = open(metrics_path, "a", encoding="utf-8") if rank == 0 else None

    def record(self, done: int, loss: float, lr: float, correct: torch.Tensor, n_scored: int, tokens: int) -> None:
        """Count step `done` (1-based); log it when it is due. `correct` stays a tensor until then: reading it
        waits for the device, which only a logged step should."""
        cfg = self.cfg
        self.tok_log += tokens
        self.tok_total += tokens
        self.last_loss = loss
        if done % cfg.log_every == 0 or done == cfg.steps or done == self.start + 1:
            now = time.perf_counter()
            tps = self.tok_log / max(now - self.t_log, 1e-9)
            self.t_log, self.tok_log = now, 0
            rec = {"step": done, "loss": loss, "lr": lr, "train_acc": float(correct) / max(1, n_scored),
                   "tokens": self.tok_total, "tokens_per_s": tps, "elapsed_s": now - self.t0}
            self.losses.append((done, loss))
            if self.file is not None:
                self.file.write(json.dumps(rec) + "\n")
                self.file.flush()
            say(cfg, self.rank, f"step {done:>6}/{cfg.steps} | loss {loss:.4f} | lr {lr:.3e} | "
                                f"{tps:,.0f} tok/s | {now - self.t0:.1f}s")

    def close(self) -> None:
        if self.file is not None:
            self.file.close()
