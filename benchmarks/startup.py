"""How long `llmc --help` takes, and whether it loads any heavy library.

Runs the installed `llmc` entry point (as a user's shell does) for each command's help,
``--rounds`` times, and prints the median and worst wall time of the whole process, plus
the in-process import time of the CLI and the heavy modules it loaded (should be none).
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import time

COMMANDS = ["--help", "train --help", "resume --help", "checkpoints --help", "presets --help"]
HEAVY = ("torch", "transformers", "peft", "accelerate", "optuna")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    llmc = shutil.which("llmc") or sys.exit("llmc is not on PATH: activate the venv (source .venv/bin/activate)")
    probe = (
        "import sys, time; t = time.perf_counter(); import llmc_cli.cli.app; "
        f"print(time.perf_counter() - t, [m for m in {HEAVY!r} if m in sys.modules])"
    )
    print("| command | median s | worst s |\n|---|---:|---:|")
    for command in COMMANDS:
        times = []
        for _ in range(args.rounds):
            started = time.perf_counter()
            subprocess.run([llmc, *command.split()], capture_output=True, check=True)
            times.append(time.perf_counter() - started)
        print(f"| llmc {command} | {statistics.median(times):.3f} | {max(times):.3f} |")
    seconds, heavy = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True
    ).stdout.split(maxsplit=1)
    print(f"\nimport llmc_cli.cli.app: {float(seconds):.3f} s in-process; heavy modules loaded: {heavy.strip()}")


if __name__ == "__main__":
    main()
