"""llmc: fine-tune open causal language models with LoRA / QLoRA.

``from llmc_cli import FineTuner`` gives the engine API; importing the package itself
stays light (no torch) so the ``llmc`` command starts instantly.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"
__all__ = ["FineTuner", "__version__", "analyze_run"]

if TYPE_CHECKING:
    from llmc_cli.analyze import analyze_run
    from llmc_cli.api import FineTuner


def __getattr__(name: str) -> Any:
    if name == "FineTuner":
        from llmc_cli.api import FineTuner

        return FineTuner
    if name == "analyze_run":
        from llmc_cli.analyze import analyze_run

        return analyze_run
    raise AttributeError(f"module 'llmc_cli' has no attribute {name!r}")
