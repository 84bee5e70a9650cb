"""What `llmc tune` gains, and what pruning saves, on a real pretrained model.

    bash ../shared/models/get-smollm2.sh /tmp/smollm2
    python benchmarks/tune.py --model /tmp/smollm2 --json out.json
    python benchmarks/tune.py --model /tmp/smollm2 --trials 6 --budget-steps 20 --seeds 1 2 3

GSM8K (from ../shared): the first `--train-n` training examples (llmc holds out its own
validation split from them) and the first `--test-n` test examples for the held-out judgement.
Every run is the `quality` preset with `--max-length 256`, `batch_size 2`, `grad_accum 2` (a
config file, so trial 0, the study's trials and the retraining share them).

1. Two studies of `--trials` trials, `--budget-steps` optimizer steps each, TPE with the same
   sampler seed: one with `--pruner` (median by default), one without (`llmc tune` processes; wall time measured).
   Compute is the training tokens of every trial (pruned trials stop early).
2. Quality: the pruned study's best configuration (`llmc train --from-study`) and trial 0's (the
   preset as llmc resolves it) are trained again with `llmc train` at the same budget for each
   `--seeds` training seed, and each final adapter is judged by the answer-token loss on the test
   examples, computed without llmc's code (`divergence.held_out_loss`: the tokenizer,
   `question + "\\n"` as the prompt, no template).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from divergence import LLMC, SHARED, held_out_loss  # noqa: E402 - benchmarks are scripts

BENCH_CONFIG = "preset = 'quality'\nmax_length = 256\nbatch_size = 2\ngrad_accum = 2\n"


def jsonl(path: Path, n: int) -> list[dict]:
    rows = []
    with path.open() as handle:
        for line in handle:
            if len(rows) == n:
                break
            rows.append(json.loads(line))
    return rows


def llmc(args: list, cwd: Path) -> tuple[subprocess.CompletedProcess, float]:
    started = time.perf_counter()
    done = subprocess.run([*LLMC, *map(str, args)], capture_output=True, text=True, cwd=cwd)
    if done.returncode != 0:
        print(done.stdout[-3000:], done.stderr[-3000:], file=sys.stderr)
        raise SystemExit(f"llmc {args[0]} failed with exit {done.returncode}")
    return done, time.perf_counter() - started


def study(work: Path, model: Path, data: Path, config: Path, name: str, pruner: str, args) -> dict:
    _, wall = llmc(["tune", "--data", data, "--model", model, "--config", config, "--trials", args.trials,
                    "--method", "tpe", "--pruner", pruner, "--budget-steps", args.budget_steps, "--seed", 0,
                    "--study", name, "--output", work / "studies"], work)  # fmt: skip
    shown, _ = llmc(["tune", "show", name, "--output", work / "studies", "--json"], work)
    report = json.loads(shown.stdout)
    trials = report["trials"]
    return {
        "pruner": pruner,
        "wall_s": round(wall, 1),
        "trials": [{k: t[k] for k in ("number", "state", "value", "params", "tokens", "rss_after_mb")} for t in trials],
        "tokens": sum(t["tokens"] or 0 for t in trials),
        "pruned": sum(t["state"] == "PRUNED" for t in trials),
        "best": report["best"],
        "trial0": trials[0],
    }


def retrain(work: Path, source: list, name: str, seed: int, steps: int) -> Path:
    """``llmc train`` with ``source`` (a config and data, or ``--from-study``) for one training seed."""
    llmc(["train", *source, "--seed", seed, "--max-steps", steps, "--output", work / "retrain",
          "--run-name", f"{name}-seed{seed}", "--no-dashboard", "--report-to", "none"], work)  # fmt: skip
    return work / "retrain" / f"{name}-seed{seed}" / "final"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, required=True, help="SmolLM2-135M-Instruct folder (get-smollm2.sh)")
    parser.add_argument("--shared", type=Path, default=SHARED)
    parser.add_argument("--work", type=Path, default=Path("/tmp/llmc-tune-bench"))
    parser.add_argument("--train-n", type=int, default=400)
    parser.add_argument("--test-n", type=int, default=200)
    parser.add_argument("--trials", type=int, default=8)
    parser.add_argument("--budget-steps", type=int, default=30)
    parser.add_argument("--pruner", default="median", choices=("median", "hyperband", "halving"))
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    import shutil

    shutil.rmtree(args.work, ignore_errors=True)
    args.work.mkdir(parents=True)
    data = args.work / "train.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in jsonl(args.shared / "data/gsm8k/train.jsonl", args.train_n)))
    test = jsonl(args.shared / "data/gsm8k/test.jsonl", args.test_n)
    config = args.work / "bench.toml"
    config.write_text(BENCH_CONFIG)

    result: dict = {"model": str(args.model), "train_n": args.train_n, "test_n": args.test_n,
                    "trials": args.trials, "budget_steps": args.budget_steps, "pruner": args.pruner}  # fmt: skip
    pruned = study(args.work, args.model, data, config, "pruned", args.pruner, args)
    print(json.dumps({k: pruned[k] for k in ("wall_s", "tokens", "pruned", "best")}), flush=True)
    unpruned = study(args.work, args.model, data, config, "unpruned", "none", args)
    print(json.dumps({k: unpruned[k] for k in ("wall_s", "tokens", "pruned", "best")}), flush=True)
    result["studies"] = [pruned, unpruned]
    result["pruning"] = {
        "best_pruned": pruned["best"]["value"],
        "best_unpruned": unpruned["best"]["value"],
        "best_gap": round(pruned["best"]["value"] / unpruned["best"]["value"] - 1, 4),
        "tokens_saved": round(1 - pruned["tokens"] / unpruned["tokens"], 4),
        "wall_saved": round(1 - pruned["wall_s"] / unpruned["wall_s"], 4),
    }
    print(json.dumps(result["pruning"]), flush=True)

    sources = {"preset": ["--data", data, "--model", args.model, "--config", config],
               "tuned": ["--from-study", args.work / "studies" / "pruned"]}  # fmt: skip
    base = held_out_loss(args.model, None, test)
    quality: dict = {"base": base, "preset": [], "tuned": []}
    for seed in args.seeds:
        for label, source in sources.items():
            adapter = retrain(args.work, source, label, seed, args.budget_steps)
            loss = held_out_loss(args.model, adapter, test)
            quality[label].append(loss)
            print(json.dumps({"seed": seed, label: loss}), flush=True)
    drops = {k: [base - v for v in quality[k]] for k in ("preset", "tuned")}
    quality["improvement_of_loss"] = [
        round(1 - t / p, 4) for p, t in zip(quality["preset"], quality["tuned"], strict=True)
    ]
    quality["improvement_of_drop"] = [
        round(t / p - 1, 4) if p > 0 else None for p, t in zip(*drops.values(), strict=True)
    ]
    quality["mean_improvement_of_loss"] = round(statistics.mean(quality["improvement_of_loss"]), 4)
    result["quality"] = quality
    print(json.dumps(quality), flush=True)
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
