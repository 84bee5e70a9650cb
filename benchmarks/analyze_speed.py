"""How long `llmc analyze` takes on a long run: a 100,000-step metrics.jsonl, analysed and rendered.

    python benchmarks/analyze_speed.py                  # 100,000 steps, an evaluation every 500
    python benchmarks/analyze_speed.py --steps 300000 --repeat 3

The run is written here in the format a run writes (a decaying, noisy train loss with every field a
step logs, evaluations, system samples every 2 s of a 30-hour run, a resume in the middle that
re-logs 2,000 steps). Timed: the whole `llmc analyze RUN` process (startup, reading, analysis,
rendering with plots at 120 columns, output to a pipe), and the same with --json; the target is
under 2 s. Each figure is the median of --repeat runs.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from divergence import LLMC  # noqa: E402 - benchmarks are scripts


def write_long_run(folder: Path, steps: int, eval_every: int) -> int:
    folder.mkdir(parents=True, exist_ok=True)
    rng = random.Random(0)
    config = {"training": {"lr": 2e-4, "max_steps": steps, "epochs": 3.0, "eval_every": eval_every}}
    (folder / "config.json").write_text(json.dumps({"config": config, "sources": {}}))
    started = 1.79e9

    def step(n: int) -> str:
        loss = 0.9 + 1.1 * math.exp(-n / (steps / 8)) + 0.04 * rng.gauss(0, 1)
        return json.dumps({"type": "train", "event": "StepEnded", "time": started + n, "step": n,
                           "total_steps": steps, "epoch": 3 * n / steps, "loss": loss, "lr": 2e-4 * (1 - n / steps),
                           "grad_norm": 0.4 + 0.05 * rng.random(), "tokens": 4096, "target_tokens": 1500,
                           "examples": 16, "tokens_per_s": 3000 + 100 * rng.random(), "examples_per_s": 11.0,
                           "elapsed_s": float(n), "eta_s": float(steps - n), "update_ratio": 5e-3,
                           "clip_threshold": 1.0})  # fmt: skip

    def evaluation(n: int) -> str:
        loss = 1.0 + 1.0 * math.exp(-n / (steps / 8))
        return json.dumps({"type": "eval", "event": "EvalEnded", "time": started + n, "step": n, "eval_loss": loss,
                           "perplexity": math.exp(loss), "tokens": 50000, "duration_s": 12.0})  # fmt: skip

    resume_at = steps // 2
    with (folder / "metrics.jsonl").open("w") as metrics, (folder / "events.jsonl").open("w") as events:
        for n in range(0, steps + 1):
            if n:
                metrics.write(step(n) + "\n")
            if n % eval_every == 0:
                metrics.write(evaluation(n) + "\n")
            if n == resume_at + 2000:  # killed here; resumed from the checkpoint at resume_at
                metrics.write(json.dumps({"type": "resume", "event": "RunResumed", "step": resume_at}) + "\n")
                for again in range(resume_at + 1, n + 1):
                    metrics.write(step(again) + "\n")
            if n % 2 == 0:
                events.write(json.dumps({"event": "SystemSampled", "time": started + n, "cpu_percent": 99.0,
                                         "rss_mb": 2000.0, "ram_percent": 20.0, "gpus": []}) + "\n")  # fmt: skip
    return (folder / "metrics.jsonl").stat().st_size


def timed(args: list[str], cwd: Path) -> float:
    started = time.perf_counter()
    done = subprocess.run([*LLMC, *args], cwd=cwd, capture_output=True, text=True,
                          env={**os.environ, "COLUMNS": "120"})  # fmt: skip
    wall = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"llmc {' '.join(args)} failed: {done.stderr[-2000:]}")
    return wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=100_000)
    parser.add_argument("--eval-every", type=int, default=500)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--work", type=Path, default=Path("/tmp/llmc-analyze-speed"))
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    run = args.work / "runs" / "long"
    size = write_long_run(run, args.steps, args.eval_every)
    result = {"steps": args.steps, "metrics_mb": round(size / 2**20, 1)}
    for name, extra in (("report_s", []), ("no_plots_s", ["--no-plots"]), ("json_s", ["--json"]),
                        ("help_s", None)):  # fmt: skip
        command = ["--help"] if extra is None else ["analyze", str(run), *extra]
        result[name] = round(statistics.median(timed(command, args.work) for _ in range(args.repeat)), 3)
    print(json.dumps(result))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
