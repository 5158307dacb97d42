"""Background training: the durable batcher, datum builders and backends."""
from __future__ import annotations

import logging

from ..config import MetaClawConfig
from .backends import ExportBackend, StepResult, TrainingBackend, TrainingHalted, TransientTrainingError
from .trainer import BatchFailed, Trainer

__all__ = ["BatchFailed", "ExportBackend", "StepResult", "Trainer", "TrainingBackend", "TrainingHalted",
           "TransientTrainingError", "make_backend"]

log = logging.getLogger("metaclaw_mcp.training")


def make_backend(config: MetaClawConfig) -> TrainingBackend | None:
    """The configured backend; `auto` is tinker when a key is set, else export (nothing is ever dropped)."""
    name = config.effective_backend
    if name == "export":
        return ExportBackend(config.exports_dir)
    if name == "tinker":
        from .tinker_backend import TinkerBackend
        return TinkerBackend(config)
    if name == "local":
        try:
            from .local_backend import LocalBackend
        except ImportError as exc:
            log.error("the local backend needs the [local] extra (torch, transformers, peft): %s", exc)
            return None
        return LocalBackend(config)
    return None
