"""``manifest.json``: the size and sha256 of every file of a checkpoint, written last.

A checkpoint directory counts only if its manifest exists and every file it lists has the
recorded size and digest; files the manifest does not list are ignored. safetensors alone
catches truncation but not a flipped bit, hence content digests.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llmc_cli.durable import fsync_file, write_json

MANIFEST = "manifest.json"
FORMAT_VERSION = 1


@dataclass
class Verification:
    """The outcome of checking one checkpoint against its manifest."""

    path: Path
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def reason(self) -> str:
        return "; ".join(self.problems) if self.problems else "verified"


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while block := handle.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def payload_files(directory: Path) -> list[Path]:
    """Every regular file under ``directory`` except the manifest, in a stable order."""
    return sorted(p for p in directory.rglob("*") if p.is_file() and p.name != MANIFEST)


def write_manifest(directory: Path, meta: dict[str, Any]) -> dict[str, Any]:
    """Fsync every file, then write and fsync the manifest describing them."""
    files = {}
    for path in payload_files(directory):
        fsync_file(path)
        files[path.relative_to(directory).as_posix()] = {"size": path.stat().st_size, "sha256": sha256(path)}
    manifest = {"format": FORMAT_VERSION, **meta, "files": files}
    write_json(directory / MANIFEST, manifest)
    return manifest


def read_manifest(directory: Path) -> dict[str, Any] | None:
    """The manifest's content, or None when it is missing or unreadable."""
    try:
        manifest = json.loads((directory / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return manifest if isinstance(manifest, dict) and isinstance(manifest.get("files"), dict) else None


def verify(directory: Path, digests: bool = True) -> Verification:
    """Check every listed file's presence and size, and (by default) its sha256."""
    result = Verification(directory)
    if not directory.is_dir():
        result.problems.append("not a directory")
        return result
    manifest = read_manifest(directory)
    if manifest is None:
        state = "unreadable" if (directory / MANIFEST).exists() else "missing"
        result.problems.append(f"{MANIFEST} is {state} (an unfinished or damaged checkpoint)")
        return result
    for name, expected in manifest["files"].items():
        path = directory / name
        if not path.is_file():
            result.problems.append(f"{name} is missing")
            continue
        size = path.stat().st_size
        if size != expected.get("size"):
            result.problems.append(f"{name} has {size} bytes, the manifest says {expected.get('size')}")
        elif digests and sha256(path) != expected.get("sha256"):
            result.problems.append(f"{name} does not match its sha256 (its content changed)")
    return result
