"""Predicted against measured peak memory, and the micro-batch OPTIMIZE_MEMORY picks under a real cap.

    python benchmarks/memory.py                                  # mini model + SmolLM2 if --smollm2 given
    python benchmarks/memory.py --smollm2 /work/smollm2 --json benchmarks/results-memory-cpu-2core-avx2.json
    python benchmarks/memory.py --only estimate                  # or: --only auto

Estimate: for each configuration, `llmc train --dry-run --json` gives `memory.total_bytes`; then
`llmc train` runs `--steps` optimizer steps (10 by default: the peak RSS still grows over the first
steps, as freed memory fragments; step-0 and final evaluation included) and `summary.json` gives the
process's peak RSS. Measured = that peak minus the peak RSS of an idle `python -c "import torch"`
(measured in the same invocation). The micro-batch and checkpointing are set explicitly, so the
fit keeps them. The data is prepared (`llmc prepare`) before the dry run, so its predicted seconds
a step (`time.per_step_s`) count the data's own tokens; measured = `train_time_s / steps` of the
same run (the first step's kernel selection included).

Auto batch: a cgroup (v1 or v2) memory limit is put on each run (needs root and a writable
cgroup filesystem; skipped with the reason otherwise). `llmc train --batch-size 16 --grad-accum 1`
(16 rows a step, asked for in one forward) with OPTIMIZE_MEMORY chooses its micro-batch; the same
cap then runs fixed micro-batches (`--micro-batch m`, OPTIMIZE_MEMORY off, no OOM recovery),
searched in halves, to find the largest that completes in every one of `--repeats` tries (near the
cap the same micro-batch completes in one run and is killed in the next: one that fails half the time
does not "run" for a user; the fitted run is repeated as often); and the un-optimised plan (16 at once,
OPTIMIZE_MEMORY=false) runs without a cap: its per-step token counts must equal the fitted run's
(the same rows each step) and its losses agree up to dropout masks and float rounding.

The speed benchmark's mini model (hidden 512, 4 layers, Llama-2 vocabulary, random init) and
GSM8K from ../shared (or --shared); SmolLM2-135M-Instruct from `../shared/models/get-smollm2.sh DIR`.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from speed import prepare  # noqa: E402 - the speed benchmark's mini model and data slices

LLMC = [sys.executable, "-m", "llmc_cli.cli.app"]  # the llmc command of this interpreter
MiB = 2**20
STEP = ["--preset", "quality", "--batch-size", "16", "--grad-accum", "1"]  # 16 rows a step, asked for at once
# (model, micro-batch, rows per step, max length, gradient checkpointing[, precision other than llmc's choice])
ESTIMATE_CASES = [
    ("mini", 1, 1, 512, False),
    ("mini", 4, 4, 512, False),
    ("mini", 8, 8, 512, False),
    ("mini", 4, 4, 1024, False),
    ("mini", 8, 8, 512, True),
    ("mini", 8, 8, 1024, True),
    ("mini", 7, 16, 512, False),  # as OPTIMIZE_MEMORY fits: 16 rows a step in micro-batches of 7, 7, 2
    ("mini", 4, 16, 1024, False),
    ("smollm2", 2, 2, 512, False),
    ("smollm2", 4, 4, 512, False),
    ("smollm2", 4, 4, 512, True),
    ("smollm2", 3, 12, 512, False),
    ("mini", 4, 4, 512, False, "fp32"),  # on a CPU with bf16 instructions: the fp32 calibration, and its speed
    ("smollm2", 2, 2, 512, False, "fp32"),
]


def baseline_mb() -> float:
    """Peak RSS of an idle Python process that imported torch."""
    # VmHWM, not ru_maxrss: the latter starts at this (large) parent's RSS when the child is forked.
    code = "import torch; from llmc_cli.engine.summary import peak_rss_mb; print(peak_rss_mb())"
    return float(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout)


def train_args(model: str, data: Path, cache: Path, out: Path, name: str, steps: int, length: int) -> list[str]:
    shutil.rmtree(out / name, ignore_errors=True)  # a run of an earlier invocation
    return [
        "train", "--data", str(data), "--model", model, "--max-length", str(length), "--max-steps", str(steps),
        "--eval-every", "1000", "--no-dashboard", "--report-to", "none", "--data-cache", str(cache),
        "--output", str(out), "--run-name", name,
    ]  # fmt: skip


def run(args: list[str], env: dict[str, str] | None = None, cgroup: Path | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, **(env or {})}
    preexec = (lambda: (cgroup / "cgroup.procs").write_text(str(os.getpid()))) if cgroup else None
    return subprocess.run(LLMC + args, capture_output=True, text=True, env=env, preexec_fn=preexec)


def estimate_cases(
    models: dict[str, str], data: Path, work: Path, base: float, steps: int, only: list[str] | None = None
) -> list[dict]:
    rows = []
    for model, micro, step_rows, length, gc, *precision in ESTIMATE_CASES:
        name = f"{model}-m{micro}-r{step_rows}-l{length}-gc{int(gc)}" + "".join(f"-{p}" for p in precision)
        if model not in models or (only and not name.startswith(tuple(only))):
            continue
        env = {"ENABLE_GRADIENT_CHECKPOINTING": str(gc).lower()}
        env.update({"LLMC_PRECISION": precision[0]} if precision else {})
        fixed = ["--batch-size", str(step_rows), "--grad-accum", "1", "--micro-batch", str(micro)]
        common = train_args(models[model], data, work / "cache", work / "runs", name, steps, length) + fixed
        # Prepared first, so the dry run's step time counts the data's own tokens, not an upper bound.
        run(["prepare", "--data", str(data), "--model", models[model], "--max-length", str(length),
             "--data-cache", str(work / "cache")])  # fmt: skip
        started = time.perf_counter()
        dry = run([*common, "--dry-run", "--json"], env)
        dry_s = time.perf_counter() - started
        plan = json.loads(dry.stdout)
        predicted = plan["memory"]["total_bytes"] / MiB
        done = run(common, env)
        summary = json.loads((work / "runs" / name / "summary.json").read_text())
        measured = summary["peak_rss_mb"] - base
        row = dict(
            case=name, predicted_mb=round(predicted), measured_mb=round(measured),
            error=round(predicted / measured - 1, 3), exit=done.returncode, dry_run_s=round(dry_s, 1),
            parts_mb={k: round(v / MiB) for k, v in plan["memory"]["parts"].items()},
        )  # fmt: skip
        if plan["time"].get("per_step_s") and summary.get("steps"):  # seconds a step: predicted and measured
            measured_s = summary["train_time_s"] / summary["steps"]
            row.update(
                predicted_step_s=round(plan["time"]["per_step_s"], 3), measured_step_s=round(measured_s, 3),
                step_error=round(plan["time"]["per_step_s"] / measured_s - 1, 3),
                probe_gflops=round(plan["time"]["probe_flops_per_s"] / 1e9, 1),
                step_tflop=round(plan["time"]["step_flops"] / 1e12, 4), precision=plan["hardware"]["precision"],
            )  # fmt: skip
        print(json.dumps(row), flush=True)
        rows.append(row)
    return rows


def make_cgroup(limit_bytes: int) -> tuple[Path | None, str]:
    """A fresh memory cgroup with ``limit_bytes``, or None and why not."""
    for root, limit_file in (
        (Path("/sys/fs/cgroup/memory"), "memory.limit_in_bytes"),
        (Path("/sys/fs/cgroup"), "memory.max"),
    ):
        if not (root / limit_file).exists() and not (root / "cgroup.controllers").exists():
            continue
        folder = root / f"llmc-bench-{os.getpid()}-{limit_bytes}"
        try:
            folder.mkdir(exist_ok=True)
            (folder / limit_file).write_text(str(limit_bytes))
            if (folder / "memory.memsw.limit_in_bytes").exists():
                try:
                    (folder / "memory.memsw.limit_in_bytes").write_text(str(limit_bytes))
                except OSError:
                    pass
            return folder, ""
        except OSError as exc:
            return None, f"cannot create a memory cgroup under {root}: {exc}"
    return None, "no cgroup memory controller mounted"


def losses(run_dir: Path) -> list[float]:
    if not (run_dir / "metrics.jsonl").exists():  # the run failed before its first step
        return []
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [r["loss"] for r in map(json.loads, lines) if r.get("type") == "train"]


def auto_batch(model: str, data: Path, work: Path, cap_mb: int, length: int, steps: int, repeats: int = 1) -> dict:
    """Under a cgroup limit of ``cap_mb``: the micro-batch llmc picks, the largest that runs, and losses."""
    cgroup, why = make_cgroup(cap_mb * MiB)
    if cgroup is None:
        print(f"auto batch skipped: {why}")
        return {"skipped": why}
    common = lambda name: train_args(model, data, work / "cache", work / "runs", name, steps, length)  # noqa: E731
    result: dict = {"cap_mb": cap_mb, "max_length": length}
    auto_name = f"auto-{cap_mb}"
    auto_exits = []
    for _ in range(repeats):  # the last try's records are the ones read below
        auto = run([*common(auto_name), *STEP], cgroup=cgroup)
        auto_exits.append(auto.returncode)
    config = json.loads((work / "runs" / auto_name / "config.json").read_text())
    chosen = config["config"]["training"]["micro_batch"]
    result.update(
        chosen_micro_batch=chosen,
        chosen_batch_size=config["config"]["training"]["batch_size"],
        chosen_grad_accum=config["config"]["training"]["grad_accum"],
        auto_exit=auto.returncode,
        auto_exits=auto_exits,
        auto_predicted_mb=round(config["memory"]["total_bytes"] / MiB),
        auto_budget_mb=round(config["memory"]["budget_bytes"] / MiB),
    )
    summary_file = work / "runs" / auto_name / "summary.json"  # absent when the cgroup killed the run
    if summary_file.exists():
        summary = json.loads(summary_file.read_text())
        result.update(auto_peak_rss_mb=summary.get("peak_rss_mb"), auto_adjustments=summary.get("adjustments"))
    else:
        events = (work / "runs" / auto_name / "events.jsonl").read_text().splitlines()
        rss = [json.loads(line)["rss_mb"] for line in events if '"SystemSampled"' in line]
        steps = [json.loads(line)["step"] for line in events if '"StepEnded"' in line]
        result.update(auto_killed_after_step=max(steps, default=0), auto_last_sampled_rss_mb=max(rss, default=None))
    tried: dict[int, list[int]] = {}

    def runs(micro: int) -> bool:  # the same 16 rows per step, cut into micro-batches of `micro`, every try
        name = f"fixed-{cap_mb}-{micro}"
        for _ in range(repeats):
            done = run(
                [*common(name), *STEP, "--micro-batch", str(micro)],
                env={"OPTIMIZE_MEMORY": "false", "LLMC_AUTO_RECOVERY": "false"},
                cgroup=cgroup,
            )  # fmt: skip
            tried.setdefault(micro, []).append(done.returncode)
            print(f"fixed micro-batch {micro} under {cap_mb} MB: exit {done.returncode}", flush=True)
            if done.returncode not in (0, -9, 137):  # not the cgroup's kill: say what it was
                print(done.stderr[-2000:], flush=True)
            if done.returncode != 0:
                return False
        return True

    low, high = 0, 16  # binary search for the largest micro-batch that completes under the cap
    while low < high:
        middle = (low + high + 1) // 2
        low, high = (middle, high) if runs(middle) else (low, middle - 1)
    largest = low or None
    result["fixed_exits"] = tried
    result["largest_that_runs"] = largest  # in every one of `repeats` tries
    result["repeats"] = repeats
    result["chosen_share_of_largest"] = round(chosen / largest, 2) if largest else None
    plain_name = f"unoptimised-{cap_mb}"
    plain = run([*common(plain_name), *STEP], env={"OPTIMIZE_MEMORY": "false"})
    if plain.returncode != 0:
        print(f"unoptimised run: exit {plain.returncode}\n{plain.stderr[-2000:]}", flush=True)
    a, b = losses(work / "runs" / auto_name), losses(work / "runs" / plain_name)

    def counts(name: str) -> list[tuple]:  # tokens, target tokens and examples of each step
        if not (work / "runs" / name / "metrics.jsonl").exists():
            return []
        rows = map(json.loads, (work / "runs" / name / "metrics.jsonl").read_text().splitlines())
        return [(r["tokens"], r["target_tokens"], r["examples"]) for r in rows if r.get("type") == "train"]

    result.update(
        unoptimised_exit=plain.returncode,
        same_rows_per_step=counts(auto_name) == counts(plain_name),
        losses_auto=a,
        losses_unoptimised=b,
        max_loss_difference=max((abs(x - y) for x, y in zip(a, b, strict=True)), default=None)
        if len(a) == len(b)
        else None,
    )
    cgroup.rmdir()
    print(json.dumps(result), flush=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shared", type=Path, default=ROOT.parent / "shared")
    parser.add_argument("--smollm2", type=Path, help="SmolLM2-135M-Instruct folder (get-smollm2.sh)")
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "llmc-memory-bench")
    parser.add_argument("--only", choices=("estimate", "auto"))
    parser.add_argument("--cases", nargs="+", help="only estimate cases whose name starts with one of these")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument(
        "--cap-mb", type=int, nargs="+", default=[3000, 4000], help="cgroup limits for the auto-batch runs"
    )
    parser.add_argument("--length", type=int, default=512, help="max length of the auto-batch runs")
    parser.add_argument("--repeats", type=int, default=2, help="auto batch: tries of each run under a cap")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    facts = prepare(args.work, args.shared, 600, 10)
    models = {"mini": facts["model_dir"]}
    if args.smollm2:
        models["smollm2"] = str(args.smollm2)
    base = baseline_mb()
    print(f"baseline (python -c 'import torch') peak RSS: {base:.0f} MB", flush=True)
    results: dict = {"baseline_mb": base}
    if args.only in (None, "estimate"):
        results["estimates"] = estimate_cases(models, Path(facts["train"]), args.work, base, args.steps, args.cases)
        print("\n| case | predicted MB | measured MB | error | predicted s/step | measured s/step | error |")
        print("|---|---:|---:|---:|---:|---:|---:|")
        for row in results["estimates"]:
            timing = (
                f"{row['predicted_step_s']:.2f} | {row['measured_step_s']:.2f} | {row['step_error']:+.1%}"
                if "step_error" in row
                else "n/a | n/a | n/a"
            )
            memory = f"{row['predicted_mb']:,} | {row['measured_mb']:,} | {row['error']:+.1%}"
            print(f"| {row['case']} | {memory} | {timing} |")
    if args.only in (None, "auto"):
        results["auto_batch"] = [
            auto_batch(models["mini"], Path(facts["train"]), args.work, cap, args.length, args.steps, args.repeats)
            for cap in args.cap_mb
        ]
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
