"""Data for training and evaluating Miras models: MQAR, S-NIAH, robust recall, and language-model text.

Every generator is seeded and deterministic per (seed, step): `task.train_batch(step)` returns the same global
batch whenever it is asked, so a resumed run sees exactly the data order of an uninterrupted one, and every
process of a multi-process run can take its own slice of the same global batch.

    from mirasc.data import make_task
    task = make_task("mqar", tier="cpu", seed=0, batch_size=64)
    batch = task.train_batch(step=0)     # {"input_ids": int64 [B, T], "labels": int64 [B, T] (-100 = unscored)}
"""

from __future__ import annotations

from .common import IGNORE_INDEX, DataError


def make_task(name: str, **kw):
    """Build a task by name: "mqar", "niah", "robust" or "lm" (keyword arguments go to its class)."""
    if name == "mqar":
        from .mqar import MQARTask

        return MQARTask(**kw)
    if name == "niah":
        from .niah import NIAHTask

        return NIAHTask(**kw)
    if name == "robust":
        from .robust import RobustRecallTask

        return RobustRecallTask(**kw)
    if name == "lm":
        from .lm import LMTask

        return LMTask(**kw)
    raise DataError(f"unknown task {name!r} (expected mqar, niah, robust or lm)")


__all__ = ["IGNORE_INDEX", "DataError", "make_task"]
