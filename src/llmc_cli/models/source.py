"""Turn ``--model`` into something loadable: a local folder or a reachable hub id.

Never hangs: a hub id that is neither in the local Hugging Face cache nor reachable
within a few seconds is refused with a message that says how to pass a local path.
No torch import here, so this runs before anything heavy is loaded.
"""

from __future__ import annotations

import json
import os
import re
import socket
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

from llmc_cli.config.families import FAMILIES, Family, family_for_hub_id, family_for_model_type
from llmc_cli.errors import ModelError

HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
REACH_TIMEOUT_S = 3.0


@dataclass(frozen=True)
class ModelSource:
    """Where the weights come from.

    Attributes:
        spec: What the user asked for.
        location: A local folder or hub id, as passed to ``from_pretrained``.
        local: True when ``location`` is a folder on this machine.
        family: The family whose presets and default template apply.
        reason: How ``spec`` became ``location`` (shown to the user).
    """

    spec: str
    location: str
    local: bool
    family: Family
    reason: str


def resolve_model(spec: str, auto_family: str | None = None) -> ModelSource:
    """Resolve ``--model`` (folder, hub id, family alias or 'auto').

    Args:
        spec: The user's value.
        auto_family: The family 'auto' maps to (from hardware detection); required for 'auto'.
    """
    if spec == "auto":
        assert auto_family is not None, "hardware detection picks the family for 'auto'"
        return _from_hub(FAMILIES[auto_family].hub_id, spec, f"auto: {auto_family} for this hardware")
    if spec in FAMILIES and spec != "generic":
        return _from_hub(FAMILIES[spec].hub_id, spec, f"alias {spec}")
    path = Path(spec).expanduser()
    if path.exists():
        return _from_folder(path, spec)
    if _looks_like_path(spec) or not HUB_ID.match(spec):
        raise ModelError(
            f"Model '{spec}' is not a folder on this machine, a family alias or a Hugging Face hub id.",
            hint="Pass a folder saved with save_pretrained (--model ./my-model), a hub id "
            "(--model TinyLlama/TinyLlama-1.1B-Chat-v1.0) or an alias: " + ", ".join(_aliases()) + ".",
        )
    return _from_hub(spec, spec, "hub id")


def _aliases() -> list[str]:
    return [name for name in FAMILIES if name != "generic"]


def _looks_like_path(spec: str) -> bool:
    return spec.startswith(("/", "./", "../", "~")) or spec.endswith("/") or spec.count("/") > 1


def _from_folder(path: Path, spec: str) -> ModelSource:
    config_file = path / "config.json"
    if not path.is_dir() or not config_file.is_file():
        raise ModelError(
            f"{path} is not a Hugging Face model folder (no config.json).",
            hint="Point --model at the folder written by save_pretrained, which holds config.json and the weights.",
        )
    try:
        model_type = json.loads(config_file.read_text()).get("model_type")
    except (OSError, ValueError) as exc:
        raise ModelError(f"{config_file} cannot be read: {exc}.", hint="Re-save the model.") from None
    family = family_for_model_type(model_type)
    return ModelSource(spec, str(path.resolve()), True, family, f"local folder ({model_type})")


def _from_hub(hub_id: str, spec: str, reason: str) -> ModelSource:
    family = family_for_hub_id(hub_id)
    cached = _cached_snapshot(hub_id)
    if cached is not None:
        return ModelSource(spec, cached, True, family, f"{reason}, from the local Hugging Face cache")
    problem = _hub_unreachable()
    if problem:
        raise ModelError(
            f"Model '{hub_id}' is not on this machine and the Hugging Face Hub cannot be reached ({problem}).",
            hint=f"On a machine with internet run: hf download {hub_id} --local-dir ./model, copy the "
            "folder here, then pass --model ./model (any folder saved with save_pretrained works).",
        )
    return ModelSource(spec, hub_id, False, family, f"{reason}, downloaded from the hub")


def _cached_snapshot(hub_id: str) -> str | None:
    from huggingface_hub import snapshot_download

    try:
        return snapshot_download(hub_id, local_files_only=True)
    except Exception:  # any miss (not cached, partial cache) means "not available offline"
        return None


def _hub_unreachable() -> str | None:
    """None when the hub answers a TCP connection quickly, else the reason it does not."""
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes"):
        return "HF_HUB_OFFLINE is set"
    from huggingface_hub import constants

    parsed = urlparse(constants.ENDPOINT)
    host, port = parsed.hostname or "huggingface.co", parsed.port or (443 if parsed.scheme == "https" else 80)
    try:
        with socket.create_connection((host, port), timeout=REACH_TIMEOUT_S):
            return None
    except OSError as exc:
        return f"{host}:{port}: {exc.strerror or exc}"
