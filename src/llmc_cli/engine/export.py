"""The run's products: the adapter in standard PEFT format, and optionally merged full weights."""

from __future__ import annotations

from pathlib import Path

from llmc_cli.engine.session import Session
from llmc_cli.models.loading import load_base_model


def save_adapter(session: Session, directory: Path) -> Path:
    """Write the adapter (``PeftModel.from_pretrained`` loads it) plus the tokenizer; the main process writes."""
    session.accelerator.wait_for_everyone()
    if session.accelerator.is_main_process:
        session.unwrapped().save_pretrained(directory, safe_serialization=True)
        session.tokenizer.save_pretrained(directory)
    return directory


def merge(session: Session, adapter_dir: Path, directory: Path) -> Path:
    """Merge the adapter into a fresh, unquantised copy of the base weights and save it."""
    from peft import PeftModel

    if session.accelerator.is_main_process:
        base = load_base_model(session.plan.source, session.precision, "none")
        merged = PeftModel.from_pretrained(base, adapter_dir).merge_and_unload()
        merged.save_pretrained(directory, safe_serialization=True)
        session.tokenizer.save_pretrained(directory)
    return directory
