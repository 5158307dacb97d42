"""Background training: the durable batcher, datum builders and backends."""
from .backends import ExportBackend, StepResult, TrainingBackend
from .trainer import Trainer

__all__ = ["ExportBackend", "StepResult", "Trainer", "TrainingBackend"]
