"""The best adapter so far: what ``final/`` holds when the last one is clearly worse.

At every evaluation that beats all before it, the adapter's weights are copied to host memory
(only the adapter: megabytes, not the model). Every checkpoint carries that copy, so a resumed
run ends exactly as an uninterrupted one would. At the end of a run the loop puts it back when
early stopping ended the run, or when the last adapter's eval loss is worse than the best by
more than ``TOLERANCE``: a run never exports an adapter clearly worse than one it already had.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch

BEST_WEIGHTS = "best_adapter.safetensors"
TOLERANCE = 0.01  # relative: a final eval loss within 1% of the best is noise, not a worse adapter


class BestAdapter:
    """The adapter with the lowest eval loss seen so far, its step and its loss."""

    def __init__(self) -> None:
        self.step: int | None = None
        self.loss = math.inf
        self.weights: dict[str, torch.Tensor] | None = None

    def note(self, step: int, loss: float, model) -> None:
        """Keep the adapter of ``model`` when ``loss`` beats the best so far."""
        if not (math.isfinite(loss) and loss < self.loss):
            return
        from peft import get_peft_model_state_dict

        self.weights = {k: v.detach().to("cpu", copy=True) for k, v in get_peft_model_state_dict(model).items()}
        self.step, self.loss = step, loss

    def beats(self, loss: float | None) -> bool:
        """True when the best is clearly better than an adapter whose eval loss is ``loss``."""
        if self.weights is None or loss is None:
            return False
        return not math.isfinite(loss) or loss > self.loss + TOLERANCE * abs(self.loss)

    def put_back(self, model) -> None:
        from peft import set_peft_model_state_dict

        set_peft_model_state_dict(model, self.weights)

    def save(self, directory: Path) -> None:
        """Write the best adapter into a checkpoint directory (nothing before the first evaluation)."""
        if self.weights is None:
            return
        from safetensors.torch import save_file

        save_file(self.weights, directory / BEST_WEIGHTS, metadata={"step": str(self.step), "loss": repr(self.loss)})

    def load(self, directory: Path | None) -> None:
        """Take the best adapter a checkpoint carries (a checkpoint without one leaves this empty)."""
        path = None if directory is None else directory / BEST_WEIGHTS
        if path is None or not path.is_file():
            return
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as handle:
            meta = handle.metadata() or {}
            self.weights = {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118 - not a dict
        self.step, self.loss = int(meta["step"]), float(meta["loss"])

    def take_checkpoint(self, directory: Path, step: int, loss: float) -> bool:
        """Make the adapter of a checkpoint the best one (early stopping's own choice, judged with its
        ``min_delta``); False when that checkpoint is missing or does not verify."""
        from safetensors.torch import load_file

        from llmc_cli.checkpoints.manifest import verify
        from llmc_cli.checkpoints.state import ADAPTER_WEIGHTS

        if not directory.is_dir() or not verify(directory).ok:
            return False
        self.weights, self.step, self.loss = load_file(directory / ADAPTER_WEIGHTS), step, loss
        return True
