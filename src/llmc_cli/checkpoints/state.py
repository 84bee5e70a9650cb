"""What a checkpoint holds besides the adapter, and how it is put back.

Files (next to PEFT's ``adapter_model.safetensors`` / ``adapter_config.json``):
``optimizer.safetensors`` + ``optimizer.json`` (tensors by parameter index, and the param
groups), ``scheduler.json``, ``rng.json`` (python, numpy, torch CPU and CUDA generators) and
``trainer_state.json`` (position in the data, counters, metrics, config, versions). Nothing
is pickled: a checkpoint can be inspected and loaded without executing code.
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from llmc_cli.durable import read_json, write_json

ADAPTER_WEIGHTS = "adapter_model.safetensors"
OPTIMIZER_TENSORS = "optimizer.safetensors"
OPTIMIZER_GROUPS = "optimizer.json"
SCHEDULER = "scheduler.json"
RNG = "rng.json"
TRAINER_STATE = "trainer_state.json"


@dataclass
class Position:
    """Where training stands: optimizer steps done, and micro-batches read of the current epoch."""

    step: int = 0
    epoch: int = 0
    batches_in_epoch: int = 0
    tokens: int = 0
    train_time_s: float = 0.0


@dataclass
class TrainerState:
    """The loop's own state, saved as ``trainer_state.json``."""

    position: Position = field(default_factory=Position)
    eval_history: list[tuple[int, float]] = field(default_factory=list)  # (step, eval loss)
    initial_eval_loss: float | None = None
    last_train_loss: float | None = None
    controls: dict[str, Any] = field(default_factory=dict)  # clipping, divergence, plateau, early stopping ...
    lr: dict[str, Any] = field(default_factory=dict)  # the learning-rate multiplier on top of the schedule
    recovery: dict[str, Any] = field(default_factory=dict)  # what automatic recovery changed
    journal: list[dict[str, Any]] = field(default_factory=list)  # every adjustment the engine made

    def metrics(self) -> dict[str, float]:
        out = {}
        if self.eval_history and self.eval_history[-1][0] == self.position.step:
            out["eval_loss"] = self.eval_history[-1][1]
        if self.last_train_loss is not None:
            out["train_loss"] = self.last_train_loss
        return out

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> TrainerState:
        return cls(
            position=Position(**data["position"]),
            eval_history=[(int(s), float(v)) for s, v in data.get("eval_history", [])],
            initial_eval_loss=data.get("initial_eval_loss"),
            last_train_loss=data.get("last_train_loss"),
            controls=dict(data.get("controls", {})),
            lr=dict(data.get("lr", {})),
            recovery=dict(data.get("recovery", {})),
            journal=list(data.get("journal", [])),
        )


# ----------------------------------------------------------------------- optimizer
def save_optimizer(optimizer: torch.optim.Optimizer, directory: Path) -> None:
    state = optimizer.state_dict()
    tensors, scalars = {}, {}
    for index, values in state["state"].items():
        for key, value in values.items():
            if torch.is_tensor(value):
                tensors[f"{index}.{key}"] = value.detach().contiguous().cpu()
            else:
                scalars[f"{index}.{key}"] = value
    save_file(tensors, directory / OPTIMIZER_TENSORS)
    write_json(directory / OPTIMIZER_GROUPS, {"param_groups": state["param_groups"], "scalars": scalars}, atomic=False)


def load_optimizer(optimizer: torch.optim.Optimizer, directory: Path) -> None:
    groups = read_json(directory / OPTIMIZER_GROUPS)
    state: dict[int, dict[str, Any]] = {}
    for name, tensor in load_file(directory / OPTIMIZER_TENSORS).items():
        index, key = name.split(".", 1)
        state.setdefault(int(index), {})[key] = tensor
    for name, value in groups["scalars"].items():
        index, key = name.split(".", 1)
        state.setdefault(int(index), {})[key] = value
    param_groups = [{k: tuple(v) if k == "betas" else v for k, v in g.items()} for g in groups["param_groups"]]
    optimizer.load_state_dict({"state": state, "param_groups": param_groups})


# ----------------------------------------------------------------------- scheduler
def save_scheduler(scheduler: Any, directory: Path) -> None:
    write_json(directory / SCHEDULER, scheduler.state_dict(), atomic=False)


def load_scheduler(scheduler: Any, directory: Path) -> None:
    scheduler.load_state_dict(read_json(directory / SCHEDULER))


# ----------------------------------------------------------------------------- RNG
def capture_rng() -> dict[str, Any]:
    version, internal, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {
        "python": [version, list(internal), gauss],
        "numpy": [kind, keys.tolist(), pos, has_gauss, cached],
        "torch": torch.get_rng_state().tolist(),
    }
    if torch.cuda.is_available():
        state["cuda"] = [s.tolist() for s in torch.cuda.get_rng_state_all()]
    return state


def restore_rng(state: dict[str, Any]) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, np.array(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(torch.tensor(state["torch"], dtype=torch.uint8))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([torch.tensor(s, dtype=torch.uint8) for s in state["cuda"]])


def save_rng(directory: Path) -> None:
    write_json(directory / RNG, capture_rng(), atomic=False)


def load_rng(directory: Path) -> dict[str, Any]:
    return read_json(directory / RNG)
