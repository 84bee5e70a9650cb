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
  real full disks (the run's --output on a 64 MB tmpfs in a private mount namespace, filled
  for real by the disk-fill faults; not run, with the reason, where mounting is not allowed):
    disk-ckpt (full at a random checkpoint, space back two steps later: training must go on),
    disk-final (full at the final save: exit 10, no half final/, then space freed + resume),
    disk-report (an error, then full when the failure report is written: the report goes to
    stderr, then space freed + resume)
  user mistakes, which must be refused cleanly (documented exit code, one message, no run
  left half-made) rather than recovered:
    bert (a bidirectional encoder as --model: exit 4), t5 (an encoder-decoder: exit 4),
    out-file (--output is a file: exit 2)

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
import shutil
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
    "sigkill", "corrupt", "lr10", "disk-ckpt", "disk-final", "disk-report", "bert", "t5", "out-file",
)  # fmt: skip
ENDS_PROCESS = {"sigkill", "corrupt", "error", "disk-final", "disk-report"}
ON_SMALL_DISK = {"disk-ckpt", "disk-final", "disk-report"}
REFUSED = {"bert": 4, "t5": 4, "out-file": 2}  # user mistakes: the exit code that refuses them
WRONG_MODELS = {
    "bert": {"model_type": "bert", "architectures": ["BertForMaskedLM"], "vocab_size": 32000},
    "t5": {"model_type": "t5", "architectures": ["T5ForConditionalGeneration"], "vocab_size": 32000},
}
SMALL_DISK_SCRIPT = """
disk=$1; out=$2; name=$3; shift 3
mount -t tmpfs -o size=64m tmpfs "$disk" || exit 90
"$@" --output "$disk/runs" > "$out/train.out" 2> "$out/train.err"
rc=$?
echo $rc > "$out/first_exit"
find "$disk" -name '.llmc-disk-filler' -delete  # the user frees space
if [ $rc -ne 0 ] && [ -d "$disk/runs/$name/checkpoints" ]; then
  env -u LLMC_FAULTS "$PYTHON" -c "from llmc_cli.cli.app import main; main()" \\
    resume "$disk/runs/$name" --no-dashboard > "$out/resume.out" 2> "$out/resume.err"
  rc=$?
  echo 1 > "$out/resumed"
fi
mkdir -p "$out/runs" && cp -a "$disk/runs/." "$out/runs/"
exit $rc
"""


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


def small_disk_problem() -> str | None:
    """None when a tmpfs can be mounted in a private mount namespace here, else why not."""
    try:
        probe = subprocess.run(["unshare", "-rm", "sh", "-c", "mount -t tmpfs -o size=1m tmpfs /mnt"],
                               capture_output=True, text=True)  # fmt: skip
    except FileNotFoundError:
        return "unshare is not installed"
    return None if probe.returncode == 0 else f"cannot mount a tmpfs: {probe.stderr.strip()}"


def disk_trial(kind: str, rng: random.Random, model: Path, data: Path, root: Path, name: str, seed: int) -> dict:
    """A run whose output is a small tmpfs that fills up for real; a failed run is resumed after
    the space is freed, in the same namespace. Results are copied to root/runs."""
    if kind == "disk-ckpt":
        step = rng.choice([3, 6, 9])  # checkpoints every 3 steps: fill just before one, free after
        spec = f"disk-fill@{step - 1},disk-free@{step + 1}"
    elif kind == "disk-final":
        spec = "disk-fill.final"
    else:
        spec = f"error@step={rng.randint(2, STEPS - 1)},disk-fill.report"
    work = root / "disk" / name
    disk, out = work / "mnt", work / "out"
    disk.mkdir(parents=True)
    out.mkdir()
    args = train_args(data, model, name, seed)
    env = {**os.environ, "LLMC_FAULTS": spec, "PYTHON": sys.executable, "COLUMNS": "160"}
    process = subprocess.run(["unshare", "-rm", "sh", "-c", SMALL_DISK_SCRIPT, "sh", str(disk), str(out), name,
                              *LLMC, *args], env=env, capture_output=True, text=True, cwd=root)  # fmt: skip
    first = int((out / "first_exit").read_text()) if (out / "first_exit").is_file() else process.returncode
    errors = "".join(p.read_text() for p in sorted(out.glob("*.err")))
    said = "".join(p.read_text() for p in sorted(out.glob("*.out")))  # warnings go to the console
    target = root / "runs" / name
    shutil.copytree(out / "runs" / name, target) if (out / "runs" / name).is_dir() else None
    return {"fault": spec, "exit": first, "final_exit": process.returncode, "resumes": int((out / "resumed").is_file()),
            "traceback": "Traceback" in errors, "stderr": said + errors, "run_dir": target}  # fmt: skip


def refusal_trial(kind: str, model: Path, data: Path, root: Path, name: str, seed: int) -> dict:
    """A user mistake: it must end at once with its documented exit code and leave no run behind."""
    args = train_args(data, model, name, seed)
    if kind in WRONG_MODELS:
        wrong = root / "wrong-models" / kind
        wrong.mkdir(parents=True, exist_ok=True)
        (wrong / "config.json").write_text(json.dumps(WRONG_MODELS[kind]))
        args[args.index("--model") + 1] = str(wrong)
        fault = f"--model {kind} config"
    else:
        (root / "a-file").write_text("not a folder")
        args += ["--output", str(root / "a-file")]
        fault = "--output is a file"
    code, _, err = run(args, root)
    message = err.strip().splitlines()[0] if err.strip() else ""
    return {"fault": fault, "exit": code, "final_exit": code, "resumes": 0, "traceback": "Traceback" in err,
            "message": message, "left_run": (root / "runs" / name).exists()}  # fmt: skip


def disk_evidence(kind: str, run_dir: Path, first_exit: int, stderr: str) -> str | None:
    """What shows the full disk was met and handled as documented (None: no sign of it)."""
    if kind == "disk-ckpt":
        warned = [e for e in events(run_dir) if e.get("event") == "TrainingWarning" and "could not be written" in
                  e["message"]]  # fmt: skip
        return "checkpoint dropped, warned, went on" if warned or "could not be written" in stderr else None
    if kind == "disk-final":
        half = (run_dir / "final.partial").exists()
        return "exit 10, no half final/, resumed" if first_exit == 10 and not half and "Disk full" in stderr else None
    return "report on stderr, resumed" if "could not write the failure report" in stderr else None


def trial(index: int, kind: str, rng: random.Random, model: Path, data: Path, root: Path) -> dict:
    name = f"t{index:03d}-{kind}"
    seed = rng.randint(0, 10_000)
    record: dict = {"trial": index, "kind": kind, "seed": seed}
    started = time.perf_counter()
    if kind in REFUSED:
        record.update(refusal_trial(kind, model, data, root, name, seed))
        clean = record["exit"] == REFUSED[kind] and not record["traceback"] and not record["left_run"]
        record.update(end="refused", first_end="refused", recovered=clean, never_neither=True,
                      evidence=record["message"][:60] if clean else None,
                      seconds=round(time.perf_counter() - started, 1))  # fmt: skip
        return record
    if kind in ON_SMALL_DISK:
        result = disk_trial(kind, rng, model, data, root, name, seed)
        run_dir = result.pop("run_dir")
        stderr = result.pop("stderr")
        record.update(result, **outcome(run_dir), seconds=round(time.perf_counter() - started, 1))
        record["first_end"] = "failed" if record["exit"] else record["end"]
        record["evidence"] = disk_evidence(kind, run_dir, record["exit"], stderr)
        expected_first = {"disk-ckpt": 0, "disk-final": 10, "disk-report": 9}[kind]
        record["recovered"] = (
            record["end"] == "completed" and record["exit"] == expected_first and record["evidence"] is not None
        )
        record["never_neither"] = True
        return record
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
    problem = small_disk_problem() if ON_SMALL_DISK & set(chosen) else None
    if problem:
        print(f"Not run: {', '.join(sorted(ON_SMALL_DISK & set(chosen)))} ({problem}).")
        chosen = [k for k in chosen if k not in ON_SMALL_DISK]
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
