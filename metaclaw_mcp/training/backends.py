"""Training backends behind one interface: a batch of datums in, a step result out."""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import tinker

from .datums import datum_to_json


class TrainingHalted(RuntimeError):
    """Training cannot go on until a person acts (bad credentials, billing); the message says what to do."""


class TransientTrainingError(RuntimeError):
    """The service or network failed, not the batch: wait and replay it, without counting an attempt."""


@dataclass
class StepResult:
    """One step's outcome: the loss summed over tokens and datums (None when nothing was trained, as
    for an export), the backend's metrics, and the (kind, path) checkpoints it saved, kind "sampler"
    or "state"."""
    loss: float | None
    metrics: dict[str, Any] = field(default_factory=dict)
    checkpoints: list[tuple[str, str]] = field(default_factory=list)  # (kind, path)


class TrainingBackend(Protocol):
    """What the trainer drives: one step per batch, and a restart point. `name` is what `checkpoints.backend`
    records. A backend raises TrainingHalted or TransientTrainingError for failures that are not the batch's."""
    name: str

    async def train(self, batch_id: int, step: int, datums: list[tinker.Datum], loss_fn: str,
                    loss_fn_config: dict[str, float] | None) -> StepResult:
        """Run one optimisation step on `datums`. Safe to call again for the same batch after a crash."""
        ...

    async def restore(self, state_path: str | None) -> None:
        """Continue from the newest training state the store has committed (None: from scratch)."""
        ...


class ExportBackend:
    """Writes each batch to `<dir>/batch-<id>.jsonl`, one datum a line, ready to replay to Tinker later,
    and the text-only turns of a distillation batch to `<dir>/conversations/batch-<id>.jsonl`, one
    conversation a line (`{"messages": [..., {"role": "assistant", "content": reply}], "reward",
    "turn_id"}`, the chat format the Tinker cookbook's conversation datasets read), tokenizer or not.

    Each file appears whole or not at all (written aside, fsynced, renamed), and a replayed
    batch rewrites the same file, so a crash can never leave a batch exported twice.
    """

    name = "export"

    def __init__(self, directory: Path):
        self.directory = Path(directory)

    async def restore(self, state_path: str | None) -> None:
        """A no-op: an export keeps no training state."""
        return None  # files carry no state: a replayed batch rewrites its own file

    def path_for(self, batch_id: int) -> Path:
        """The file of batch `batch_id`: `<dir>/batch-<id, 6 digits>.jsonl`."""
        return self.directory / f"batch-{batch_id:06d}.jsonl"

    async def train(self, batch_id: int, step: int, datums: list[tinker.Datum], loss_fn: str,
                    loss_fn_config: dict[str, float] | None) -> StepResult:
        """Write the batch's file (`datum_to_json` per line, plus `loss_fn_config` when given); no loss,
        no checkpoints, `metrics["exported"]` the file's path. OSError when it cannot be written."""
        rows = []
        for d in datums:
            row = datum_to_json(d, loss_fn)
            if loss_fn_config:
                row["loss_fn_config"] = loss_fn_config
            rows.append(row)
        final = self.path_for(batch_id)
        write_jsonl(final, rows)
        return StepResult(loss=None, metrics={"exported": str(final)}, checkpoints=[])

    async def write_conversations(self, batch_id: int, rows: list[dict[str, Any]]) -> Path:
        """Write a distillation batch's conversations (the class docstring's chat format) to
        `<dir>/conversations/batch-<id, 6 digits>.jsonl`; returns the path. OSError when it cannot be written."""
        final = self.directory / "conversations" / f"batch-{batch_id:06d}.jsonl"
        write_jsonl(final, rows)
        return final


def write_jsonl(final: Path, rows: list[dict[str, Any]]) -> None:
    """`rows` as JSON lines at `final`, whole or not at all: written aside, fsynced, renamed, the folder
    (created if missing) fsynced. OSError when it cannot be written."""
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.with_suffix(".jsonl.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False, separators=(",", ":")) + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, final)
    dir_fd = os.open(final.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
