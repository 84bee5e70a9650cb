"""Write ``completions/llmc.{bash,zsh,fish}`` from the live command (Typer's own scripts).

The scripts ask ``llmc`` itself for candidates, so new commands and flags complete without
regenerating; a test still fails when the files differ from what this writes (a Typer upgrade
that changes the protocol). Regenerate with ``python -m llmc_cli.cli.completions completions/``.
"""

from __future__ import annotations

import sys
from pathlib import Path

SHELLS = ("bash", "zsh", "fish")


def script(shell: str) -> str:
    from typer._completion_shared import get_completion_script

    return get_completion_script(prog_name="llmc", complete_var="_LLMC_COMPLETE", shell=shell).rstrip("\n") + "\n"


def write(folder: Path) -> None:
    for shell in SHELLS:
        (folder / f"llmc.{shell}").write_text(script(shell))


if __name__ == "__main__":
    write(Path(sys.argv[1] if len(sys.argv) > 1 else "completions"))
