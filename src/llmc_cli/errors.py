"""Errors a user can act on.

Every error raised on purpose by llmc is an :class:`LlmcError`: it carries what went
wrong, where, and how to fix it. The CLI prints it as one paragraph and exits with the
error's ``exit_code``; the engine never exits the process itself (Optuna runs it
in-process). This module imports nothing heavy so the CLI can use it at start-up.
"""

from __future__ import annotations


class LlmcError(Exception):
    """Base class: a problem the user can fix.

    Args:
        message: What is wrong and where (file, line, key).
        hint: The concrete fix, ideally a command or flag to use.
    """

    exit_code = 1
    title = "Error"
    report = None  # the failure report written for it, if any

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message if not self.hint else f"{self.message}\nFix: {self.hint}"


class ConfigError(LlmcError):
    """Invalid configuration: a flag, a key in llmc.toml, an environment variable or a preset."""

    exit_code = 2
    title = "Configuration error"


class DataError(LlmcError):
    """The training or validation data cannot be used as given."""

    exit_code = 3
    title = "Data error"


class UnreadableBatch(DataError):
    """A batch that cannot be used during training; automatic recovery skips it (bounded)."""


class ModelError(LlmcError):
    """The model cannot be found, reached or loaded."""

    exit_code = 4
    title = "Model error"


class TrainingError(LlmcError):
    """Training failed in a way the user must look at (for example a non-finite loss)."""

    exit_code = 5
    title = "Training error"


class DivergenceError(TrainingError):
    """The loss kept diverging (NaN/Inf or spikes) after the allowed rollbacks."""

    exit_code = 7
    title = "Training diverged"


class OutOfMemory(TrainingError):
    """Out of memory even at the smallest micro-batch with gradient checkpointing."""

    exit_code = 8
    title = "Out of memory"


class UnexpectedFailure(TrainingError):
    """An error llmc has no recovery for; state was saved and a failure report written."""

    exit_code = 9
    title = "Training failed"


class DiskFull(LlmcError):
    """A write failed because the disk is full, over quota, failing or read-only; what was being
    written was removed and the last complete state kept."""

    exit_code = 10
    title = "Disk full"
    detail = ""  # the OS's reason with the free and needed space, for messages that name the file themselves


class CheckpointError(LlmcError):
    """A run or checkpoint cannot be found, verified or loaded."""

    exit_code = 6
    title = "Checkpoint error"


class RunInterrupted(LlmcError):
    """Training was stopped by SIGINT or SIGTERM after the current state was saved."""

    exit_code = 130
    title = "Interrupted"
