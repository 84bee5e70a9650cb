"""The models ``llmc setup`` can offer without a download: local folders and the Hugging Face cache.

A folder counts when its ``config.json`` names a causal-LM architecture and weights lie beside it
(``*.safetensors`` or ``*.bin``). Only ``config.json`` is read here (no torch, no transformers), so
listing is instant; fitting each one to the machine is setup/assess.py's job.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from llmc_cli.config.families import family_for_model_type

WEIGHTS = ("*.safetensors", "*.bin")


@dataclass(frozen=True)
class LocalModel:
    location: Path
    label: str  # how the user knows it: the folder as found, or the hub id of a cached snapshot
    family: str
    where: str  # "current folder", "--models-dir" or "Hugging Face cache"


def find_models(folders: list[tuple[Path, str]]) -> list[LocalModel]:
    """Model folders in each of ``folders`` (the folder itself and its children), then in the Hugging
    Face cache; each location once, in that order."""
    found: dict[Path, LocalModel] = {}
    for folder, where in folders:
        if not folder.is_dir():
            continue
        for candidate in [folder, *sorted(p for p in folder.iterdir() if p.is_dir())]:
            family = causal_family(candidate)
            if family is not None:
                label = str(candidate) if candidate.is_absolute() else f"./{candidate}"
                found.setdefault(candidate.resolve(), LocalModel(candidate.resolve(), label, family, where))
    for hub_id, snapshot in cached_snapshots():
        family = causal_family(snapshot)
        if family is not None:
            found.setdefault(snapshot.resolve(), LocalModel(snapshot.resolve(), hub_id, family, "Hugging Face cache"))
    return list(found.values())


def causal_family(folder: Path) -> str | None:
    """The llmc family of a folder holding a causal LM with weights, else None."""
    try:
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(config, dict):
        return None
    architectures = config.get("architectures") or []
    if not any(str(name).endswith("ForCausalLM") for name in architectures):
        return None
    if not any(next(folder.glob(pattern), None) for pattern in WEIGHTS):
        return None
    return family_for_model_type(config.get("model_type")).name


def hub_cache() -> Path:
    """Where huggingface_hub keeps downloads (HF_HUB_CACHE, HF_HOME/hub, or ~/.cache/huggingface/hub)."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"])
    home = Path(os.environ.get("HF_HOME") or Path(os.environ.get("XDG_CACHE_HOME") or "~/.cache") / "huggingface")
    return (home / "hub").expanduser()


def cached_snapshots() -> list[tuple[str, Path]]:
    """(hub id, newest snapshot folder) for each model in the Hugging Face cache."""
    root = hub_cache()
    if not root.is_dir():
        return []
    found = []
    for repo in sorted(root.glob("models--*")):
        snapshots = [p for p in (repo / "snapshots").glob("*") if p.is_dir()]
        if snapshots:
            newest = max(snapshots, key=lambda p: p.stat().st_mtime)
            found.append((repo.name.removeprefix("models--").replace("--", "/"), newest))
    return found
