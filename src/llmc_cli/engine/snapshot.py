"""The bridge between a training session and a checkpoint directory: save one, load one.

A checkpoint is the adapter in PEFT format (so ``PeftModel.from_pretrained`` loads it as
is), plus everything that makes continuing bit-identical on CPU: optimizer and scheduler
state, RNG states, the position in the data, and the run's resolved config. The manifest
also records a fingerprint of the training rows, so a resume on changed data is refused.
:class:`MemorySnapshot` keeps the same state in host memory: the rollback target at the start
of a session, before any checkpoint of it exists.
"""

from __future__ import annotations

import copy
import platform
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

from llmc_cli import __version__
from llmc_cli.checkpoints import state as files
from llmc_cli.checkpoints.manager import CheckpointManager, Policy
from llmc_cli.checkpoints.manifest import read_manifest
from llmc_cli.checkpoints.state import TrainerState
from llmc_cli.durable import write_json
from llmc_cli.engine.best import BestAdapter
from llmc_cli.engine.session import Session
from llmc_cli.errors import CheckpointError
from llmc_cli.events import EventBus, TrainingWarning
from llmc_cli.faults import Faults


@dataclass
class Resume:
    """A checkpoint loaded into the model, optimizer and scheduler; RNG is restored by the loop."""

    checkpoint: Path | None  # None: the session's start, kept in memory
    state: TrainerState
    rng: dict[str, Any]


def library_versions() -> dict[str, str]:
    import accelerate
    import peft
    import transformers

    return {
        "llmc": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "peft": peft.__version__,
        "accelerate": accelerate.__version__,
    }


def write_snapshot(
    directory: Path, *, model, optimizer, scheduler, state: TrainerState, config_json: dict, facts: dict
) -> dict[str, Any]:
    """Fill ``directory`` with a checkpoint; returns the manifest metadata."""
    model.save_pretrained(directory, safe_serialization=True)
    files.save_optimizer(optimizer, directory)
    files.save_scheduler(scheduler, directory)
    files.save_rng(directory)
    # Plain writes: the commit protocol fsyncs every file of the directory before its manifest.
    write_json(directory / files.TRAINER_STATE, state.to_json(), atomic=False)
    write_json(directory / "config.json", config_json, atomic=False)
    return {
        "step": state.position.step,
        "epoch": state.position.epoch + facts["epoch_fraction"],
        "created": time.time(),
        "metrics": state.metrics(),
        "versions": library_versions(),
        **{key: value for key, value in facts.items() if key != "epoch_fraction"},
    }


class Checkpointer:
    """Saves the session's state through the run's checkpoint manager; counts the time it takes."""

    def __init__(self, session: Session, bus: EventBus, faults: Faults, best: BestAdapter) -> None:
        self.session = session
        self.bus = bus
        self.best = best
        self.manager = CheckpointManager(session.run_dir, Policy.from_settings(session.config.run), bus, faults)
        self.time_s = 0.0

    def due(self, step: int) -> bool:
        return self.manager.due(step)

    def saved_already(self, step: int) -> None:
        """``step`` is on disk (a resume or rollback started from it): do not write it again."""
        self.manager.last_saved_step = step

    def save(self, state: TrainerState, reason: str) -> Path | None:
        """Save ``state`` and the session's adapter, optimizer and scheduler (the main process writes,
        every process waits). None when nothing was saved: a weight is NaN/Inf, or the save failed
        and training may go on (the manager said why)."""
        started = time.perf_counter()
        try:
            return self._save(state, reason)
        finally:
            self.time_s += time.perf_counter() - started

    def _save(self, state: TrainerState, reason: str) -> Path | None:
        session, pos = self.session, state.position
        if pos.batches_in_epoch >= len(session.train_loader):  # an epoch's last step: next is a new epoch
            pos.epoch += 1
            pos.batches_in_epoch = 0
        if not all_finite(session.params):  # never write weights that are NaN or Inf
            self.bus.emit(TrainingWarning("checkpoint", f"Not saving step {pos.step}: the adapter holds NaN/Inf."))
            return None
        accelerator = session.accelerator
        accelerator.wait_for_everyone()
        path = None
        if accelerator.is_main_process:

            def write(directory: Path) -> dict[str, Any]:
                meta = write_snapshot(
                    directory,
                    model=session.unwrapped(),
                    optimizer=session.optimizer,
                    scheduler=session.scheduler,
                    state=state,
                    config_json=session.plan.resolved.to_json(),
                    facts=session.checkpoint_facts(pos.batches_in_epoch),
                )
                self.best.save(directory)
                return meta

            path = self.manager.save(pos.step, write, reason)
        accelerator.wait_for_everyone()
        return path


def load_checkpoint(session: Session, directory: Path) -> Resume:
    """Load a checkpoint of this run into the session's model, optimizer and scheduler."""
    return restore_snapshot(
        directory,
        model=session.unwrapped(),
        optimizer=session.optimizer,
        scheduler=session.scheduler,
        data_fingerprint=session.data_fingerprint,
    )


def all_finite(params: list[torch.Tensor]) -> bool:
    return bool(torch.stack([torch.isfinite(p).all() for p in params]).all())


def restore_snapshot(directory: Path, *, model, optimizer, scheduler, data_fingerprint: str) -> Resume:
    """Load a verified checkpoint into the given objects."""
    from peft import set_peft_model_state_dict

    manifest = read_manifest(directory) or {}
    if manifest.get("data_fingerprint") not in (None, data_fingerprint):
        raise CheckpointError(
            f"The training rows differ from those {directory} was trained on (data file, tokenizer or "
            "data settings changed).",
            hint="Restore the original data, or start a new run with `llmc train`.",
        )
    weights = load_file(directory / files.ADAPTER_WEIGHTS)
    result = set_peft_model_state_dict(model, weights)
    unexpected = list(getattr(result, "unexpected_keys", []) or [])
    if unexpected:
        raise CheckpointError(
            f"{directory} holds adapter weights this model does not have ({', '.join(unexpected[:3])} ...).",
            hint="Resume with the run's own model and config (llmc resume reads them from the run).",
        )
    files.load_optimizer(optimizer, directory)
    files.load_scheduler(scheduler, directory)
    state = TrainerState.from_json(files.read_json(directory / files.TRAINER_STATE))
    return Resume(directory, state, files.load_rng(directory))


@dataclass
class MemorySnapshot:
    """The trainable state at the start of a session, kept in host memory for rollbacks.

    Only the adapter is trainable, so this is small: the LoRA weights, the optimizer's
    moments, the scheduler, the loop's state and the RNG the next epoch iterator starts from.
    """

    params: list[torch.Tensor]
    optimizer: dict[str, Any]
    scheduler: dict[str, Any]
    state: dict[str, Any]
    rng: dict[str, Any]

    @classmethod
    def capture(cls, params, optimizer, scheduler, state: TrainerState, rng: dict[str, Any]) -> MemorySnapshot:
        return cls(
            params=[p.detach().to("cpu", copy=True) for p in params],
            optimizer=copy.deepcopy(_cpu(optimizer.state_dict())),
            scheduler=copy.deepcopy(scheduler.state_dict()),
            state=state.to_json(),
            rng=copy.deepcopy(rng),
        )

    @property
    def step(self) -> int:
        return int(self.state["position"]["step"])

    def restore(self, params, optimizer, scheduler) -> Resume:
        with torch.no_grad():
            for param, saved in zip(params, self.params, strict=True):
                param.copy_(saved)
        optimizer.load_state_dict(copy.deepcopy(self.optimizer))
        scheduler.load_state_dict(copy.deepcopy(self.scheduler))
        return Resume(None, TrainerState.from_json(copy.deepcopy(self.state)), self.rng)


def _cpu(value: Any) -> Any:
    if torch.is_tensor(value):
        return value.detach().to("cpu", copy=True)
    if isinstance(value, dict):
        return {k: _cpu(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(_cpu(v) for v in value)
    return value
