"""A real learning-rate blow-up on a real pretrained model: does llmc notice, recover or stop?

    bash ../shared/models/get-smollm2.sh /tmp/smollm2
    python benchmarks/divergence.py --model /tmp/smollm2                 # LR x1, x10, x30, x100
    python benchmarks/divergence.py --model /tmp/smollm2 --factors 100 --json out.json

Issue 13's run: SmolLM2-135M-Instruct on GSM8K, batch 1, no accumulation, max length 256,
evaluation every 4 steps, with the learning rate 1x, 10x, 30x and 100x a sane one (2e-4).
Each run is a fresh `llmc train` process with automatic recovery on (the default). Reported per
run: exit code, rollbacks, skipped batches, LR multiplier at the end, llmc's own step-0 and
final eval loss, and (when the run left an adapter in ``final/``) the answer-token loss of the
base model and of base + adapter on held-out GSM8K test questions, computed here without any
llmc code: the tokenizer alone, ``question + "\\n"`` as the prompt, no chat template, fp32.
A run passes when it ends with an adapter better than the base on that held-out loss, or with
exit 7 (diverged, with a report and a checkpoint that verifies).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("LLMC_SHARED", ROOT.parent / "shared"))
LLMC = [sys.executable, "-c", "from llmc_cli.cli.app import main; main()"]
BASE_LR = 2e-4


def held_out_loss(model_dir: Path, adapter: Path | None, rows: list[dict]) -> float:
    """Mean cross-entropy of the answer tokens given the question, token-weighted (no llmc code)."""
    import torch
    import torch.nn.functional as F
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    if adapter is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, adapter)
    model.eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for row in rows:
            prompt = tokenizer(row["question"] + "\n", add_special_tokens=False).input_ids
            answer = tokenizer(row["answer"], add_special_tokens=False).input_ids + [tokenizer.eos_token_id]
            ids = torch.tensor([prompt + answer])
            logits = model(input_ids=ids).logits[0, len(prompt) - 1 : -1].float()
            total += F.cross_entropy(logits, torch.tensor(answer), reduction="sum").item()
            count += len(answer)
    return total / count


def run(model: Path, work: Path, factor: float, steps: int, train: Path, val: Path) -> dict:
    out = work / f"lr{factor:g}"
    args = [
        "train", "--data", str(train), "--val-data", str(val), "--model", str(model), "--lr", f"{BASE_LR * factor:g}",
        "--batch-size", "1", "--grad-accum", "1", "--max-length", "256", "--eval-every", "4",
        "--max-steps", str(steps), "--output", str(out), "--run-name", "run", "--no-dashboard", "--report-to", "none",
    ]  # fmt: skip
    started = time.perf_counter()
    proc = subprocess.run(LLMC + args, capture_output=True, text=True, cwd=work)
    run_dir = out / "run"
    summary = json.loads((run_dir / "summary.json").read_text()) if (run_dir / "summary.json").is_file() else {}
    recovery = summary.get("recovery") or {}
    actions = summary.get("adjustments") or []
    if not recovery and (run_dir / "failure.json").is_file():
        actions = json.loads((run_dir / "failure.json").read_text()).get("actions", [])
    evals = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if '"eval_loss"' in line]
    return {
        "lr_factor": factor,
        "lr": BASE_LR * factor,
        "exit_code": proc.returncode,
        "wall_s": round(time.perf_counter() - started, 1),
        "rollbacks": sum(a.get("action") == "rolled-back" for a in actions),
        "skipped": sum(a.get("action") == "skipped-batch" for a in actions),
        "restored_best": summary.get("restored_best_step"),
        "lr_multiplier": summary.get("lr_multiplier"),
        "step0_eval": evals[0]["eval_loss"] if evals else None,
        "eval_curve": [(e["step"], round(e["eval_loss"], 3)) for e in evals],
        "final_eval": summary.get("final_eval_loss"),
        "adapter": str(run_dir / "final") if (run_dir / "final" / "adapter_model.safetensors").is_file() else None,
        "failure": (run_dir / "failure.txt").is_file(),
        "last_line": (proc.stderr.strip() or proc.stdout.strip()).splitlines()[-1:] if proc.returncode else [],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, required=True, help="SmolLM2 folder (get-smollm2.sh)")
    parser.add_argument("--factors", default="1,10,30,100", help="learning-rate multiples of 2e-4")
    parser.add_argument("--steps", type=int, default=24)
    parser.add_argument("--held-out", type=int, default=60, help="GSM8K test questions for the independent loss")
    parser.add_argument("--work", type=Path, default=Path("/tmp/llmc-divergence"))
    parser.add_argument("--json", type=Path)
    opts = parser.parse_args()
    opts.work.mkdir(parents=True, exist_ok=True)
    gsm = SHARED / "data" / "gsm8k"
    train, val = opts.work / "train.jsonl", opts.work / "val.jsonl"
    train.write_text("\n".join((gsm / "train.jsonl").read_text().splitlines()[:400]) + "\n")
    test = (gsm / "test.jsonl").read_text().splitlines()
    val.write_text("\n".join(test[:32]) + "\n")  # llmc's own evaluation
    held_out = [json.loads(line) for line in test[100 : 100 + opts.held_out]]  # never seen by llmc
    base = held_out_loss(opts.model, None, held_out)
    results = []
    for factor in (float(f) for f in opts.factors.split(",")):
        result = run(opts.model.resolve(), opts.work, factor, opts.steps, train, val)
        result["held_out_base"] = round(base, 4)
        adapter = result["adapter"]
        result["held_out_adapted"] = round(held_out_loss(opts.model, Path(adapter), held_out), 4) if adapter else None
        better = result["held_out_adapted"] is not None and result["held_out_adapted"] < base
        result["passed"] = (result["exit_code"] == 0 and better) or result["exit_code"] == 7
        results.append(result)
        print(json.dumps(result), flush=True)
    print(
        "\n| LR | exit | rollbacks | skipped | LR x at end | llmc eval step 0 -> final | held-out base -> adapted "
        "| ok |"
    )
    print("|---|---:|---:|---:|---:|---|---|---|")
    for r in results:
        final = f"{r['final_eval']:.3f}" if r["final_eval"] is not None else "-"
        adapted = f"{r['held_out_adapted']:.3f}" if r["held_out_adapted"] is not None else "(no adapter)"
        print(
            f"| {r['lr']:g} ({r['lr_factor']:g}x) | {r['exit_code']} | {r['rollbacks']} | {r['skipped']} | "
            f"{r['lr_multiplier'] if r['lr_multiplier'] is not None else '-'} | {r['step0_eval']:.3f} -> {final} | "
            f"{r['held_out_base']:.3f} -> {adapted} | {'yes' if r['passed'] else 'NO'} |"
        )
    if opts.json:
        opts.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
