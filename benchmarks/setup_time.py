"""From `llmc setup` to the first training step, with recorded answers, on a tiny model.

Builds a fresh project folder (a 2-layer Llama with the Llama-2 tokenizer from ../shared when
present, and 160 GSM8K examples), runs ``llmc setup --answers FILE`` whose answers start the run,
and prints the wall time from launch to the config written and to the first ``step 1/`` line, the
questions a session with every default accepted asks (counted in the wizard's code), and the bytes
of llmc.toml without its comments (what a user would write by hand for the same run).

    python benchmarks/setup_time.py [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"


def build(folder: Path) -> None:
    from transformers import AutoTokenizer

    from llmc_cli.demo.build import TinyShape, build_tiny_llama

    tokenizer_dir = SHARED / "tokenizers" / "llama2"
    if not tokenizer_dir.is_dir():
        sys.exit("needs ../shared/tokenizers/llama2")
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    tokenizer.save_pretrained(folder / "model")
    build_tiny_llama(folder / "model", len(tokenizer), TinyShape(), seed=0)
    lines = (ROOT / "tests" / "fixtures" / "gsm8k" / "train_sample.jsonl").read_text().splitlines(keepends=True)
    (folder / "data.jsonl").write_text("".join(lines))


def one_round(folder: Path, answers: dict) -> tuple[float, float]:
    for stale in ("llmc.toml", "runs"):
        shutil.rmtree(folder / stale, ignore_errors=True) if stale == "runs" else (folder / stale).unlink(True)
    (folder / "answers.json").write_text(json.dumps(answers))
    env = {
        **os.environ,
        "LLMC_MAX_STEPS": "2",
        "HF_HUB_CACHE": str(folder / "no-hub"),
        "LLMC_CACHE": str(folder / "cache"),
    }
    started = time.perf_counter()
    child = subprocess.Popen(
        [str(Path(sys.executable).with_name("llmc")), "setup", "--answers", "answers.json"], cwd=folder, env=env,
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    written = first_step = None
    for line in child.stdout:
        if written is None and line.startswith("Wrote llmc.toml"):
            written = time.perf_counter() - started
        if first_step is None and line.lstrip().startswith("step") and "1/" in line:
            first_step = time.perf_counter() - started
    child.wait()
    if child.returncode != 0 or written is None or first_step is None:
        sys.exit(f"llmc setup failed (exit {child.returncode})")
    return written, first_step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    from llmc_cli.setup.wizard import QUESTIONS_WITH_DEFAULTS

    answers = {"data": "data.jsonl", "model": "./model", "preset": "highspeed", "checkpoint_interval": 1,
               "max_checkpoints": 3, "report_to": ["tensorboard"], "output": "runs", "start": True}  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        build(folder)
        rounds = [one_round(folder, answers) for _ in range(args.rounds)]
        config = (folder / "llmc.toml").read_text()
    body = "".join(line + "\n" for line in config.splitlines() if line and not line.startswith("#"))
    print(
        f"questions with every default accepted: {len(QUESTIONS_WITH_DEFAULTS)} ({', '.join(QUESTIONS_WITH_DEFAULTS)})"
    )
    print(f"config written: median {statistics.median(r[0] for r in rounds):.1f} s of {args.rounds} rounds")
    print(f"first training step: median {statistics.median(r[1] for r in rounds):.1f} s "
          f"(each: {', '.join(f'{r[1]:.1f}' for r in rounds)})")  # fmt: skip
    print(f"llmc.toml without comments: {len(body.encode())} bytes, {len(body.splitlines())} lines")


if __name__ == "__main__":
    main()
