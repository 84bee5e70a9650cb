"""One Weights & Biases run per llmc run; ``llmc resume`` continues it (the same run id).

The run is named after the run directory, in the project WANDB_PROJECT (else ``llmc``), with
the resolved config and ``llmc.*`` tags; its id is kept in the run directory's
``trackers.json`` and passed back with ``resume="allow"`` on a resume. WANDB_MODE=offline
writes the run under the run directory's ``wandb/`` for a later ``wandb sync``.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path
from typing import Any

from llmc_cli.errors import ConfigError


class WandbTracker:
    def __init__(self, run_dir: Path, config: dict[str, Any], tags: dict[str, str], remembered: dict[str, Any]):
        import wandb

        run_id = remembered.get("id") or secrets.token_hex(4)  # W&B ids: 8 lowercase letters or digits will do
        try:
            self.run = wandb.init(
                project=os.environ.get("WANDB_PROJECT", "llmc"),
                name=run_dir.name,
                id=run_id,
                resume="allow",
                dir=str(run_dir),
                config=config,
                tags=[f"{key}={value}"[:64] for key, value in tags.items()],
            )
        except Exception as exc:  # noqa: BLE001 - a missing login, a bad mode or entity: the user's setting
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
            raise ConfigError(
                f"The wandb tracker cannot start a run ({first}).",
                hint="Log in with `wandb login` (or set WANDB_API_KEY), or set WANDB_MODE=offline to log "
                "locally, or drop wandb from --report-to.",
            ) from None
        self.ids = {"id": run_id}
        self.continued = bool(remembered.get("id"))

    def write(self, values: dict[str, float], step: int) -> None:
        self.run.log({key: value for key, value in values.items() if value is not None}, step=step)

    def finish(self, status: str, adapter_dir: str | None, summary: dict[str, Any]) -> None:
        self.run.finish(exit_code=0 if status == "completed" else 1)
