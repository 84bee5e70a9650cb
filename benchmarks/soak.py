"""Long runs stay flat, and real memory pressure takes the OOM recovery path on CPU.

    python benchmarks/soak.py                         # 10,000 steps, checkpoints every 100
    python benchmarks/soak.py --steps 2000 --json out.json
    python benchmarks/soak.py --pressure-only         # only the memory-limit run

Soak: one `llmc train` process on a tiny Llama (hidden 64, 2 layers, the shared Llama-2
tokenizer where ../shared has it), batch 4, max length 64, a checkpoint every 100 steps with
rotation (keep 3 + best 1), an evaluation every 1,000. The process's RSS is sampled from
outside (psutil, every 0.5 s) and placed on the step axis with metrics.jsonl's timestamps.
Reported: RSS at start (after the first 5% of steps: warm-up), middle and end, and the growth
from start to end; median step time of the first and last 10% of steps (drift); the size of
metrics.jsonl and events.jsonl and whether every line parses; the checkpoints kept.

Pressure: the same model with long rows (max length 512) and a batch of 64 under a hard
address-space limit (RLIMIT_AS; MALLOC_ARENA_MAX=2 so glibc's per-thread arenas do not eat the
budget) chosen between what batch 1 needs and what batch 64 needs: the CPU allocator really
fails, and llmc must halve the micro-batch (the effective batch stays) until it fits, then end
with a completed adapter. Reported: the limit, the recovery actions, the exit code.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from reliability import prepare  # noqa: E402 - the same tiny model and data as the reliability benchmark

LLMC = [sys.executable, "-c", "from llmc_cli.cli.app import main; main()"]


def sample_rss(proc: subprocess.Popen, samples: list[tuple[float, float]], stop: threading.Event) -> None:
    try:
        handle = psutil.Process(proc.pid)
        while not stop.is_set() and proc.poll() is None:
            samples.append((time.time(), handle.memory_info().rss / 2**20))
            time.sleep(0.5)
    except psutil.NoSuchProcess:
        return


def soak(work: Path, model: Path, data: Path, steps: int) -> dict:
    out = work / "soak"
    args = [
        "train", "--data", str(data), "--model", str(model), "--preset", "highspeed", "--max-length", "64",
        "--batch-size", "4", "--grad-accum", "1", "--limit", "256", "--max-steps", str(steps), "--lr", "1e-3",
        "--eval-every", "1000", "--checkpoint-interval", "100", "--max-checkpoints", "3", "--keep-best", "1",
        "--output", str(out), "--run-name", "run", "--no-dashboard", "--report-to", "none",
    ]  # fmt: skip
    samples: list[tuple[float, float]] = []
    stop = threading.Event()
    started = time.perf_counter()
    proc = subprocess.Popen(LLMC + args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, cwd=work)
    sampler = threading.Thread(target=sample_rss, args=(proc, samples, stop), daemon=True)
    sampler.start()
    _, stderr = proc.communicate()
    stop.set()
    wall = time.perf_counter() - started
    run = out / "run"
    files, parsed, broken = {}, {}, {}
    for name in ("metrics.jsonl", "events.jsonl"):
        lines = (run / name).read_text().splitlines()
        files[name] = (run / name).stat().st_size
        good = 0
        for line in lines:
            try:
                json.loads(line)
                good += 1
            except ValueError:
                pass
        parsed[name], broken[name] = good, len(lines) - good
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    steps_at = [(r["time"], r["step"]) for r in records if r.get("type") == "train"]
    times = [t for t, _ in steps_at]

    def rss_at(fraction: float) -> float:
        moment = times[min(len(times) - 1, int(fraction * len(times)))]
        return min(samples, key=lambda s: abs(s[0] - moment))[1]

    # Step time: wall-clock between consecutive logged steps (log_every of the preset), per step.
    durations = [(b[0] - a[0]) / max(b[1] - a[1], 1) for a, b in zip(steps_at, steps_at[1:], strict=False)]
    tenth = max(1, len(durations) // 10)
    first, last = statistics.median(durations[:tenth]), statistics.median(durations[-tenth:])
    start, middle, end = rss_at(0.05), rss_at(0.5), rss_at(0.995)
    summary = json.loads((run / "summary.json").read_text())
    return {
        "steps": summary.get("steps"),
        "exit_code": proc.returncode,
        "wall_s": round(wall, 1),
        "rss_mb": {"start": round(start, 1), "middle": round(middle, 1), "end": round(end, 1)},
        "rss_growth_percent": round(100 * (end - start) / start, 2),
        "step_ms_first_10pct": round(1000 * first, 2),
        "step_ms_last_10pct": round(1000 * last, 2),
        "step_time_drift_percent": round(100 * (last - first) / first, 1),
        "file_bytes": files,
        "lines_parsed": parsed,
        "lines_broken": broken,
        "checkpoints_kept": sorted(p.name for p in (run / "checkpoints").iterdir()),
        "stderr_tail": stderr.strip().splitlines()[-3:] if proc.returncode else [],
    }


def peak_vm_mb(args: list[str], work: Path, env: dict, limit: int | None = None) -> tuple[int, float, str]:
    """Run llmc; return (exit code, peak virtual memory in MB from /proc (VmPeak), stderr)."""
    peak = [0.0]

    def limit_as() -> None:
        if limit is not None:
            resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

    proc = subprocess.Popen(LLMC + args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, cwd=work,
                            env=env, preexec_fn=limit_as)  # fmt: skip

    def watch() -> None:
        status = Path(f"/proc/{proc.pid}/status")
        while proc.poll() is None:
            try:
                for line in status.read_text().splitlines():
                    if line.startswith("VmPeak:"):
                        peak[0] = max(peak[0], int(line.split()[1]) / 1024)
            except OSError:
                return
            time.sleep(0.2)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    _, stderr = proc.communicate()
    watcher.join(timeout=1)
    return proc.returncode, peak[0], stderr


def pressure(work: Path, model: Path, data: Path, fraction: float) -> dict:
    env = {**os.environ, "MALLOC_ARENA_MAX": "2", "OMP_NUM_THREADS": "2"}

    def args(batch: int, name: str) -> list[str]:
        return [
            "train", "--data", str(data), "--model", str(model), "--preset", "highspeed", "--max-length", "512",
            "--batch-size", str(batch), "--grad-accum", "1", "--limit", "256", "--max-steps", "3",
            "--no-packing", "--eval-every", "100", "--output", str(work / "pressure"), "--run-name", name,
            "--no-dashboard", "--report-to", "none",
        ]  # fmt: skip

    small_rc, small_peak, _ = peak_vm_mb(args(1, "batch1"), work, env)
    big_rc, big_peak, _ = peak_vm_mb(args(64, "batch64-free"), work, env)
    limit_mb = small_peak + fraction * (big_peak - small_peak)
    rc, _, stderr = peak_vm_mb(args(64, "batch64-limited"), work, env, limit=int(limit_mb * 2**20))
    run = work / "pressure" / "batch64-limited"
    summary = json.loads((run / "summary.json").read_text()) if (run / "summary.json").is_file() else {}
    actions = summary.get("adjustments") or []
    if not actions and (run / "failure.json").is_file():
        actions = json.loads((run / "failure.json").read_text()).get("actions", [])
    return {
        "peak_vm_mb_batch1": round(small_peak),
        "peak_vm_mb_batch64": round(big_peak),
        "free_runs_exit": [small_rc, big_rc],
        "limit_mb": round(limit_mb),
        "exit_code": rc,
        "status": summary.get("status"),
        "actions": [(a.get("step"), a.get("cause"), a.get("action")) for a in actions],
        "micro_batch_at_end": (actions[-1].get("settings") or {}).get("micro_batch") if actions else None,
        "adapter": (run / "final" / "adapter_model.safetensors").is_file(),
        "stderr_tail": stderr.strip().splitlines()[-3:] if rc else [],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=10_000)
    parser.add_argument("--work", type=Path, default=Path("/tmp/llmc-soak"))
    parser.add_argument("--pressure-only", action="store_true")
    parser.add_argument("--soak-only", action="store_true")
    parser.add_argument("--pressure-fraction", type=float, default=0.2,
                        help="where the memory limit sits between batch 1's and batch 64's peak")  # fmt: skip
    parser.add_argument("--json", type=Path)
    opts = parser.parse_args()
    opts.work.mkdir(parents=True, exist_ok=True)
    model, data = prepare(opts.work)
    report = {"cpu": psutil.cpu_count(), "ram_gb": round(psutil.virtual_memory().total / 2**30, 1)}
    if not opts.pressure_only:
        shutil.rmtree(opts.work / "soak", ignore_errors=True)
        report["soak"] = soak(opts.work, model, data, opts.steps)
        print(json.dumps(report["soak"], indent=2), flush=True)
    if not opts.soak_only:
        shutil.rmtree(opts.work / "pressure", ignore_errors=True)
        report["pressure"] = pressure(opts.work, model, data, opts.pressure_fraction)
        print(json.dumps(report["pressure"], indent=2), flush=True)
    if opts.json:
        opts.json.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
