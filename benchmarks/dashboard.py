"""What the live dashboard costs the training loop.

    python benchmarks/dashboard.py

The dashboard handles each event on the event thread and renders on Rich's refresh thread
(REFRESH_PER_S = 2 frames per second); the loop never waits for it. What it takes is CPU time that
training could have used. This script measures, on a terminal-sized console writing into
memory: the CPU time of one full frame (render and write), of handling one step event,
and from those the share of one core the dashboard keeps busy at a given step rate, next to
the step time of the speed benchmark on this machine (passed as --step-s; default: the
llmc median in results-cpu-2core.json, 1.39 s per step).
"""

from __future__ import annotations

import argparse
import io
import statistics
import time

from rich.console import Console

from llmc_cli.events import CheckpointSaved, EvalEnded, RunStarted, StepEnded, SystemSampled
from llmc_cli.monitor.dashboard import REFRESH_PER_S, Dashboard


def _cpu_seconds(fn, repeat: int) -> list[float]:
    times = []
    for _ in range(repeat):
        started = time.thread_time()
        fn()
        times.append(time.thread_time() - started)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=200)
    parser.add_argument("--step-s", type=float, default=1.39, help="seconds per optimizer step to compare with")
    args = parser.parse_args()

    console = Console(file=io.StringIO(), force_terminal=True, width=140, height=50)
    board = Dashboard(console)
    board.live.start = lambda *a, **k: None  # measure frames ourselves, not on Rich's thread
    board(RunStarted("runs/run-1", "model", "llama", "fp32", "cpu", 1000, 100, 900, 100, 500, 600_000, 90_000_000))
    for i in range(1, 121):
        board(StepEnded(i, 1000, i / 100, 3.0 - i / 100, 2e-4, 0.8, 2048, 1200, 8, 1000.0, 4.0, float(i), 100.0, 1e-3))
    board(EvalEnded(100, 2.5, 12.2, 5000, 1.0))
    board(SystemSampled(180.0, 1400.0, 40.0, []))
    board(CheckpointSaved(100, "runs/run-1/checkpoints/step-000100", "interval", 7_000_000, 0.06, []))

    def frame():
        console.file.seek(0)
        console.file.truncate()
        console.print(board.render())

    step = StepEnded(121, 1000, 1.21, 1.8, 2e-4, 0.8, 2048, 1200, 8, 1000.0, 4.0, 121.0, 100.0, 1e-3)
    frames = _cpu_seconds(frame, args.repeat)
    events = _cpu_seconds(lambda: board(step), args.repeat * 10)
    frame_s, event_s = statistics.median(frames), statistics.median(events)
    busy = frame_s * REFRESH_PER_S + event_s / args.step_s
    print(f"one frame (render + write, 140x50): {frame_s * 1000:.2f} ms CPU (median of {args.repeat})")
    print(f"one step event handled: {event_s * 1e6:.1f} us CPU")
    print(f"dashboard CPU at {REFRESH_PER_S} frames/s: {busy * 100:.2f} % of one core")
    print(f"per optimizer step of {args.step_s:.1f} s: {busy * args.step_s * 1000:.0f} ms CPU, "
          f"{busy / 2 * 100:.2f} % of a 2-core machine's compute")  # fmt: skip


if __name__ == "__main__":
    main()
