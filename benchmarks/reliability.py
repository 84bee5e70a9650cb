"""Reliability: randomized faults against real `llmc train` processes, and how each run ends.

    python benchmarks/reliability.py                  # 56 trials, seed 0
    python benchmarks/reliability.py --trials 100 --seed 3 --json out.json

Every trial is a fresh `llmc train` subprocess on a tiny Llama (hidden 64, 2 layers, the
shared Llama-2 tokenizer where ../shared has it) with one fault at a random step:

  injected through LLMC_FAULTS (documented in src/llmc_cli/faults.py):
    oom, cpu-oom, eval-oom, nan, nan-burst (3 in a row), spike, spike-repeat (the same
    batch spikes again after the rollback), data (unreadable batch), error (no recovery
    exists: must save state, report and exit 9), enospc (disk full during a save)
  from outside the process:
    sigkill (kill -9 at a random step), corrupt (kill -9 after the second checkpoint, then
    flip a byte, truncate or delete a file of the newest checkpoint), lr10 (--lr 10)

A run that exits non-zero is continued with `llmc resume` (without the fault) when it left
a checkpoint, as a user would. A trial *recovers* when it ends with a completed, finite
adapter, automatically for the faults llmc handles in-process, after one resume for the
ones that end a process (sigkill, corrupt, error). Every trial must also end with either
a completed adapter or a valid checkpoint plus a failure report: never neither.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("LLMC_SHARED", ROOT.parent / "shared"))
LLMC = [sys.executable, "-c", "from llmc_cli.cli.app import main; main()"]
STEPS = 14
KINDS = (
    "oom", "cpu-oom", "eval-oom", "nan", "nan-burst", "spike", "spike-repeat", "data", "error", "enospc",
    "sigkill", "corrupt", "lr10",
)  # fmt: skip
ENDS_PROCESS = {"sigkill", "corrupt", "error"}


def prepare(workdir: Path) -> tuple[Path, Path]:
    """A tiny model folder (with tokenizer) and a training file."""
    from transformers import AutoTokenizer

    from llmc_cli.demo.build import TinyShape, build_tiny_llama, train_tokenizer

    data = SHARED / "data/gsm8k/train.jsonl"
    if not data.is_file():
        data = ROOT / "tests/fixtures/gsm8k/train_sample.jsonl"
    model = workdir / "model"
    shared_tokenizer = SHARED / "tokenizers/llama2"
    if (shared_tokenizer / "tokenizer.json").is_file():
        tokenizer = AutoTokenizer.from_pretrained(shared_tokenizer)
    else:
        rows = [json.loads(line) for line in data.read_text().splitlines()[:500]]
        train_tokenizer([r["question"] + "\n" + r["answer"] for r in rows], workdir / "tok", vocab_size=1024)
        tokenizer = AutoTokenizer.from_pretrained(workdir / "tok")
    tokenizer.save_pretrained(model)
    shape = TinyShape(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                      intermediate_size=128)  # fmt: skip
    build_tiny_llama(model, len(tokenizer), shape, seed=0)
    return model, data


def train_args(data: Path, model: Path, name: str, seed: int, lr: str = "2e-3") -> list[str]:
    return [
        "train", "--data", str(data), "--model", str(model), "--preset", "highspeed", "--max-length", "128",
        "--batch-size", "4", "--grad-accum", "2", "--limit", "64", "--max-steps", str(STEPS), "--lr", lr,
        "--eval-every", "5", "--checkpoint-interval", "3", "--seed", str(seed), "--run-name", name,
        "--no-dashboard", "--report-to", "none",
    ]  # fmt: skip


def fault_spec(kind: str, rng: random.Random) -> tuple[str, int]:
    step = rng.randint(2, STEPS - 1)
    if kind in ("spike", "spike-repeat"):
        step = rng.randint(11, STEPS - 1)  # the divergence guard needs 10 steps of history
    if kind == "eval-oom":
        step = rng.choice([0, 5, 10])
    if kind == "nan-burst":
        step = rng.randint(2, STEPS - 3)
        return f"nan@step={step}-{step + 2}", step
    if kind == "enospc":
        step = rng.choice([3, 6, 9, 12])
        return f"checkpoint.write@{step}:enospc", step
    names = {"spike-repeat": "spike", "error": "error"}
    suffix = ":every" if kind == "spike-repeat" else ""
    return f"{names.get(kind, kind)}@step={step}{suffix}", step


def run(args: list[str], cwd: Path, env: dict[str, str] | None = None, kill_at_step: int | None = None):
    """Run llmc; with ``kill_at_step``, SIGKILL it as soon as it logs that step."""
    full_env = {**os.environ, "COLUMNS": "160", "PYTHONUNBUFFERED": "1", **(env or {})}
    process = subprocess.Popen([*LLMC, *args], cwd=cwd, env=full_env, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)  # fmt: skip
    lines = []
    if kill_at_step is not None:
        for line in process.stdout:
            lines.append(line)
            match = re.match(r"step\s+(\d+)/", line)
            if match and int(match.group(1)) >= kill_at_step:
                process.send_signal(signal.SIGKILL)
                break
    out, err = process.communicate(timeout=900)
    return process.returncode, "".join(lines) + out, err


def corrupt_newest(run_dir: Path, rng: random.Random) -> str:
    from llmc_cli.checkpoints import catalog

    complete = [e for e in catalog.entries(run_dir) if e.complete]
    if not complete:
        return "no checkpoint to corrupt"
    victim = complete[-1].path
    files = sorted(p for p in victim.iterdir() if p.name != "manifest.json")
    target = rng.choice(files)
    how = rng.choice(["flip", "truncate", "delete"])
    if how == "flip":
        data = bytearray(target.read_bytes())
        data[rng.randrange(len(data))] ^= 0x40
        target.write_bytes(bytes(data))
    elif how == "truncate":
        target.write_bytes(target.read_bytes()[: max(0, target.stat().st_size // 2)])
    else:
        target.unlink()
    return f"{how} {victim.name}/{target.name}"


def outcome(run_dir: Path) -> dict:
    """completed (finite adapter) / safe (valid checkpoint + failure report) / neither."""
    import torch
    from safetensors.torch import load_file

    from llmc_cli.checkpoints import catalog
    from llmc_cli.checkpoints.manifest import verify

    summary_path = run_dir / "summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.is_file() else {}
    adapter = run_dir / "final" / "adapter_model.safetensors"
    if summary.get("status") == "completed" and adapter.is_file():
        finite = all(torch.isfinite(t).all() for t in load_file(adapter).values())
        if finite:
            return {"end": "completed", "steps": summary.get("steps")}
    valid = [e for e in catalog.entries(run_dir) if e.complete and verify(e.path).ok]
    if valid and (run_dir / "failure.json").is_file():
        return {"end": "safe", "cause": json.loads((run_dir / "failure.json").read_text())["cause"]}
    return {"end": "neither", "status": summary.get("status")}


def events(run_dir: Path) -> list[dict]:
    path = run_dir / "events.jsonl"
    found = []
    for line in path.read_text().splitlines() if path.is_file() else []:
        try:
            found.append(json.loads(line))
        except ValueError:
            continue
    return found


def evidence(kind: str, run_dir: Path, first_exit: int) -> str | None:
    """What shows the fault happened and was handled (None: no sign of it)."""
    seen = events(run_dir)
    actions = [f"{e['cause']}:{e['action']}@{e['step']}" for e in seen if e.get("event") == "Adjustment"]
    if kind == "enospc":
        warned = [e for e in seen if e.get("event") == "TrainingWarning" and "could not be written" in e["message"]]
        return "save failed, warned, went on" if warned else None
    if kind == "error":
        return "exit 9 + failure report" if first_exit == 9 and (run_dir / "failure.json").is_file() else None
    if kind == "corrupt":
        refused = [s for e in seen if e.get("event") == "RunResumed" for s in e["skipped"]]
        return f"refused {refused[0]}" if refused else None
    if kind in ("sigkill", "lr10"):
        return ", ".join(actions) or "-"
    return ", ".join(actions) or None


def trial(index: int, kind: str, rng: random.Random, model: Path, data: Path, root: Path) -> dict:
    name = f"t{index:03d}-{kind}"
    seed = rng.randint(0, 10_000)
    record: dict = {"trial": index, "kind": kind, "seed": seed}
    started = time.perf_counter()
    if kind in ("sigkill", "corrupt"):
        # corrupt: after the second checkpoint (step 6), so an older valid one exists to fall back to
        at = rng.randint(7 if kind == "corrupt" else 1, STEPS - 1)
        code, _, err = run(train_args(data, model, name, seed), root, kill_at_step=at)
        record["fault"] = f"SIGKILL at step {at}"
        if kind == "corrupt":
            record["fault"] += "; " + corrupt_newest(root / "runs" / name, rng)
    elif kind == "lr10":
        code, _, err = run(train_args(data, model, name, seed, lr="10"), root)
        record["fault"] = "--lr 10"
    else:
        spec, _ = fault_spec(kind, rng)
        code, _, err = run(train_args(data, model, name, seed), root, env={"LLMC_FAULTS": spec})
        record["fault"] = spec
    record["exit"] = code
    record["traceback"] = "Traceback" in err
    run_dir = root / "runs" / name
    first = outcome(run_dir) if run_dir.is_dir() else {"end": "neither"}
    record["first_end"] = first["end"]
    resumes = 0
    while code != 0 and resumes < 2 and run_dir.is_dir() and any((run_dir / "checkpoints").glob("step-*")):
        resumes += 1
        code, _, err = run(["resume", name, "--no-dashboard"], root)
        record["traceback"] |= "Traceback" in err
    if code != 0 and not (run_dir / "checkpoints").is_dir():
        # Killed before the first checkpoint: nothing to resume, the user starts again.
        record["restarted"] = True
        code, _, err = run(train_args(data, model, name + "-again", seed), root)
        run_dir = root / "runs" / (name + "-again")
    record.update(resumes=resumes, final_exit=code, **outcome(run_dir), seconds=round(time.perf_counter() - started, 1))
    record["evidence"] = evidence(kind, run_dir, record["exit"])
    needed_resume = resumes > 0 or record.get("restarted", False)
    record["recovered"] = (
        record["end"] == "completed" and (kind in ENDS_PROCESS or not needed_resume) and record["evidence"] is not None
    )
    record["never_neither"] = first["end"] != "neither" or kind in ("sigkill", "corrupt")
    return record


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=56)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--kinds", default=",".join(KINDS), help="comma-separated subset of: " + ", ".join(KINDS))
    args = parser.parse_args()

    rng = random.Random(args.seed)
    chosen = [k for k in args.kinds.split(",") if k in KINDS]
    kinds = [chosen[i % len(chosen)] for i in range(args.trials)]
    rng.shuffle(kinds)
    records = []
    with tempfile.TemporaryDirectory(prefix="llmc-reliability-") as tmp:
        root = Path(tmp)
        model, data = prepare(root)
        for index, kind in enumerate(kinds):
            record = trial(index, kind, rng, model, data, root)
            records.append(record)
            print(
                f"[{index + 1:>3}/{args.trials}] {kind:<13} {record['fault']:<52} exit {record['exit']:>4} -> "
                f"{record['end']:<9} resumes {record['resumes']} {'ok' if record['recovered'] else 'NOT RECOVERED'}  "
                f"[{record['evidence']}]",
                flush=True,
            )

    by_kind: dict[str, list[dict]] = defaultdict(list)
    for record in records:
        by_kind[record["kind"]].append(record)
    print("\n| fault | trials | recovered | first exit codes | ends | tracebacks |")
    print("|---|---:|---:|---|---|---:|")
    for kind in KINDS:
        group = by_kind.get(kind, [])
        if not group:
            continue
        exits = Counter(r["exit"] for r in group)
        ends = Counter(r["end"] for r in group)
        print(
            f"| {kind} | {len(group)} | {sum(r['recovered'] for r in group)} | "
            f"{', '.join(f'{k}: {v}' for k, v in sorted(exits.items()))} | "
            f"{', '.join(f'{k}: {v}' for k, v in ends.items())} | {sum(r['traceback'] for r in group)} |"
        )
    recovered = sum(r["recovered"] for r in records)
    neither = [r for r in records if r["end"] == "neither" or not r["never_neither"]]
    print(f"\nRecovery success: {recovered}/{len(records)} = {recovered / len(records):.1%} (target > 95%)")
    print(f"Runs that ended with neither a completed adapter nor a valid checkpoint + failure report: {len(neither)}")
    print(f"Tracebacks shown to the user: {sum(r['traceback'] for r in records)}")
    if args.json:
        args.json.write_text(json.dumps({"records": records, "recovered": recovered}, indent=2) + "\n")


if __name__ == "__main__":
    main()
