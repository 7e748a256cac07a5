"""Training, evaluation and the main job for mirasc models.

    from mirasc.train import train, TrainConfig
    result = train("models/configs/tiny.toml", spec="moneta", task="mqar", steps=300, out="runs/moneta")
    result.eval["accuracy"], result.checkpoint, result.metrics_path, result.plot_path

`train(config, **overrides) -> TrainResult`: config is a TrainConfig, a dict, a TOML path or None; keyword
overrides replace fields. Under `torchrun` it trains with DDP (gloo on CPU, nccl on GPU), or FSDP2 with
`fsdp=True`. `evaluate_checkpoint` reloads a run directory or checkpoint file and evaluates it on a task. Bad
input raises TrainError (one line).
"""

from __future__ import annotations

from .config import TrainConfig, TrainError, make_config
from .loop import TrainResult, train
from .run_eval import evaluate_checkpoint, load_model

__all__ = ["TrainConfig", "TrainError", "TrainResult", "evaluate_checkpoint", "load_model", "make_config", "train"]
