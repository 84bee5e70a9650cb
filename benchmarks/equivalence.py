"""Do two llmc source trees train bit-identically? For refactors that must not change behaviour.

    git archive OLD_COMMIT | tar -x -C /tmp/llmc-base
    python benchmarks/equivalence.py --base-src /tmp/llmc-base/src

Runs the same short trainings with this checkout and with ``--base-src`` (each case in a fresh
subprocess with that tree's ``llmc_cli`` first on the path): a clean run, and runs in which
recovery and the controls act (NaN steps then a rollback, a repeating spike, an OOM that halves
the micro-batch, reduce-on-plateau down to its floor, early stopping with restore-best). For
each it compares every logged train loss, learning rate and gradient norm, every eval loss, the
adjustments made and the sha256 of the final adapter, and prints one line per case.
A tiny random-init Llama (2 layers, hidden 64) with the Llama-2 tokenizer of ../shared, on GSM8K.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OPTS = dict(
    preset="highspeed", max_length=128, batch_size=4, grad_accum=2, limit=64, max_steps=16, lr=2e-3,
    lora_dropout=0.1, target_modules="all-linear", checkpoint_interval=5, eval_every=4,
)  # fmt: skip
CASES = {
    "clean": ("", {}),
    "nan-rollback": ("nan@step=7-9", {}),
    "spike-repeat": ("spike@step=13:every", {}),
    "oom": ("oom@step=3", {}),
    "plateau-floor": ("", dict(lr_plateau_patience=1, eval_every=1, lr_plateau_cooldown=0, lr=3e-2)),
    "early-stop": (
        "",
        dict(eval_every=2, enable_early_stopping=True, early_stopping_patience=2, early_stopping_min_delta=100.0),
    ),
}


def worker(case: str, work: Path, out: Path, data: str) -> None:
    """One case with whichever llmc_cli is first on the path; prints one JSON line."""
    import llmc_cli
    from llmc_cli import FineTuner

    faults, extra = CASES[case]
    os.environ["LLMC_FAULTS"] = faults
    events = []
    run = FineTuner(data, model=str(work / "model"), output=out, run_name=case, env_file=None, **{**OPTS, **extra})
    run = run.subscribe(events.append).train()
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    result = {
        "source": str(Path(llmc_cli.__file__).parent),
        "train": [(r["step"], r["loss"], r["lr"], r["grad_norm"]) for r in records if r["type"] == "train"],
        "eval": [(r["step"], r["eval_loss"]) for r in records if r["type"] == "eval"],
        "adjustments": [(e.step, e.cause, e.action) for e in events if type(e).__name__ == "Adjustment"],
        "adapter_sha256": hashlib.sha256((run / "final" / "adapter_model.safetensors").read_bytes()).hexdigest(),
    }
    print("RESULT " + json.dumps(result), flush=True)


def build_model(work: Path, shared: Path) -> None:
    from transformers import AutoTokenizer

    from llmc_cli.demo.build import TinyShape, build_tiny_llama

    folder = work / "model"
    if (folder / "config.json").is_file():
        return
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer = AutoTokenizer.from_pretrained(shared / "tokenizers" / "llama2")
    tokenizer.save_pretrained(folder)
    shape = TinyShape(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                      intermediate_size=128, max_position_embeddings=1024)  # fmt: skip
    build_tiny_llama(folder, len(tokenizer), shape, seed=0)


def run_case(case: str, src: Path | None, work: Path, out: Path, data: str) -> dict:
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false"}
    if src is not None:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(src), env.get("PYTHONPATH")]))
    command = [sys.executable, __file__, "--worker", case, "--work", str(work), "--out", str(out), "--data", data]
    proc = subprocess.run(command, capture_output=True, text=True, env=env)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        sys.exit(f"{case} failed with {src or 'this checkout'} (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    return json.loads(lines[-1][len("RESULT ") :])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base-src", type=Path, help="a src/ folder holding another tree's llmc_cli")
    parser.add_argument("--shared", type=Path, default=ROOT.parent / "shared")
    parser.add_argument("--cases", default=",".join(CASES))
    parser.add_argument("--worker", choices=sorted(CASES), help=argparse.SUPPRESS)
    parser.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--data", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args.worker, args.work, args.out, args.data)
    if not (args.base_src and (args.base_src / "llmc_cli").is_dir()):
        sys.exit("--base-src DIR must hold llmc_cli (e.g. git archive OLD | tar -x -C /tmp/base; DIR=/tmp/base/src)")
    data = str(args.shared / "data" / "gsm8k" / "train.jsonl")
    work = Path(tempfile.mkdtemp(prefix="llmc-equivalence-"))
    build_model(work, args.shared)
    differing = 0
    for case in args.cases.split(","):
        this = run_case(case, None, work, work / "this", data)
        base = run_case(case, args.base_src, work, work / "base", data)
        same = [key for key in ("train", "eval", "adjustments", "adapter_sha256") if this[key] == base[key]]
        verdict = (
            "identical"
            if len(same) == 4
            else "DIFFERENT in "
            + ", ".join(key for key in ("train", "eval", "adjustments", "adapter_sha256") if key not in same)
        )
        differing += len(same) != 4
        if this["source"] == base["source"]:
            sys.exit(f"both runs imported {this['source']}: --base-src did not take effect")
        print(f"{case:14s} {verdict}: {len(this['train'])} train records, adjustments {this['adjustments'] or 'none'}, "
              f"adapter {this['adapter_sha256'][:12]}")  # fmt: skip
    print(f"\n{len(args.cases.split(',')) - differing} of {len(args.cases.split(','))} cases bit-identical "
          f"(this checkout vs {args.base_src}).")  # fmt: skip


if __name__ == "__main__":
    main()
