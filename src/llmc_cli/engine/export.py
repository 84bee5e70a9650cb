"""The run's products: the adapter in standard PEFT format, and optionally merged full weights.

Each is written into a staged directory that appears complete under its name or not at all
(:func:`~llmc_cli.durable.staged_dir`); a full disk ends in :class:`~llmc_cli.errors.DiskFull`
saying how much space was needed, never in a half-written ``final/``.
"""

from __future__ import annotations

from pathlib import Path

from llmc_cli.durable import disk_errors, staged_dir
from llmc_cli.engine.session import Session
from llmc_cli.models.loading import load_base_model


def save_adapter(session: Session, directory: Path) -> Path:
    """Write the adapter (``PeftModel.from_pretrained`` loads it) plus the tokenizer; the main process writes."""
    session.accelerator.wait_for_everyone()
    if session.accelerator.is_main_process:
        needed = sum(p.numel() * p.element_size() for p in session.params)
        with disk_errors("the final adapter", directory, needed), staged_dir(directory) as partial:
            session.unwrapped().save_pretrained(partial, safe_serialization=True)
            session.tokenizer.save_pretrained(partial)
    return directory


def merge(session: Session, adapter_dir: Path, directory: Path) -> Path:
    """Merge the adapter into a fresh, unquantised copy of the base weights and save it."""
    from peft import PeftModel

    if session.accelerator.is_main_process:
        base = load_base_model(session.plan.source, session.precision, "none")
        merged = PeftModel.from_pretrained(base, adapter_dir).merge_and_unload()
        needed = sum(p.numel() * p.element_size() for p in merged.parameters())
        with disk_errors(f"the merged model (the adapter is complete in {adapter_dir})", directory, needed):
            with staged_dir(directory) as partial:
                merged.save_pretrained(partial, safe_serialization=True)
                session.tokenizer.save_pretrained(partial)
    return directory
