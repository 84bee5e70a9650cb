"""Does `llmc analyze` name what went wrong? A labelled set of real runs and the confusion table.

    python benchmarks/analyze_labelled.py                           # tiny models only (a few minutes)
    bash ../shared/models/get-smollm2.sh /tmp/smollm2
    python benchmarks/analyze_labelled.py --model /tmp/smollm2      # plus runs of a real pretrained model
    python benchmarks/analyze_labelled.py --only lr_high overfit --json out.json

Each case is a real `llmc train` process (a tiny Llama built and briefly pre-trained here, or
SmolLM2 with `--model`) made to show one pathology: the learning rate far too high (tiny: 30x the
healthy 1e-3; SmolLM2: 1e-2, 10x the best rate `llmc tune` found for it) or 100x too low, 32 examples
over many epochs (overfitting), gradient explosions injected with LLMC_FAULTS (instability), a run
killed with SIGTERM and resumed, a run with no validation data, and healthy runs. `llmc analyze RUN
--json` judges each; the top recommendation's kind among the pathologies is compared with the label
("none": no pathology among the findings). For overfitting the step `analyze` names is compared with
the eval-loss minimum in metrics.jsonl, read here without llmc's code. `--reuse` analyses the runs
already in --work again (after a change to the analysis) without training.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from divergence import LLMC, ROOT, SHARED  # noqa: E402 - benchmarks are scripts

PATHOLOGIES = ("lr_too_high", "lr_too_low", "overfitting", "instability", "too_few_steps", "plateau", "underfitting")
QUIET = ["--no-dashboard", "--report-to", "none"]
PRETRAIN_STEPS = 300


def tiny_model(work: Path, shared: Path) -> Path:
    """A 2-layer Llama (hidden 128), briefly pre-trained here (plain PyTorch, all weights) on GSM8K rows
    the fine-tuning never sees, so that LoRA has a language model to adapt, as with a real model."""
    folder = work / "tiny-model"
    if (folder / "config.json").is_file():
        return folder
    import torch

    from llmc_cli.demo.build import TinyShape, build_tiny_llama, train_tokenizer

    texts = [r["question"] + "\n" + r["answer"] for r in gsm8k_rows(shared)[-2000:]]
    tokenizer = train_tokenizer(texts, folder, vocab_size=1024)
    shape = TinyShape(hidden_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                      intermediate_size=344)  # fmt: skip
    model = build_tiny_llama(folder, len(tokenizer), shape, seed=0)
    torch.manual_seed(0)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    for step in range(PRETRAIN_STEPS):
        batch = tokenizer(texts[(step * 16) % len(texts) :][:16], return_tensors="pt", padding=True,
                          truncation=True, max_length=128)  # fmt: skip
        labels = batch.input_ids.masked_fill(batch.attention_mask == 0, -100)
        loss = model(**batch, labels=labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    print(f"tiny model pre-trained for {PRETRAIN_STEPS} steps: loss {loss.item():.3f}", flush=True)
    model.save_pretrained(folder)
    return folder


def gsm8k_rows(shared: Path) -> list[dict]:
    source = shared / "data/gsm8k/train.jsonl"
    path = source if source.is_file() else ROOT / "tests/fixtures/gsm8k/train_sample.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()]


def data_files(work: Path, shared: Path) -> tuple[Path, Path]:
    """Training rows and a separate validation set, apart from the pre-training rows."""
    lines = [json.dumps(row) for row in gsm8k_rows(shared)]
    train, val = work / "train.jsonl", work / "val.jsonl"
    train.write_text("\n".join(lines[:800]) + "\n")
    val.write_text("\n".join(lines[800:864]) + "\n")
    return train, val


def cases(tiny: Path, real: Path | None) -> list[dict]:
    """(name, label, model, extra args, env, interrupt) for each run."""
    tiny_base = ["--max-length", "128", "--batch-size", "8", "--grad-accum", "1", "--eval-every", "10", "--lr", "1e-3"]
    out = [
        {"name": "tiny-healthy", "label": "none", "model": tiny, "args": [*tiny_base, "--max-steps", "80"]},
        {"name": "tiny-healthy-seed2", "label": "none", "model": tiny,
         "args": [*tiny_base, "--max-steps", "80", "--seed", "2"]},
        {"name": "tiny-lr-high", "label": "lr_too_high", "model": tiny,
         "args": [*tiny_base, "--max-steps", "80", "--lr", "3e-2"]},
        {"name": "tiny-lr-low", "label": "lr_too_low", "model": tiny,
         "args": [*tiny_base, "--max-steps", "80", "--lr", "1e-5"]},
        {"name": "tiny-overfit", "label": "overfitting", "model": tiny,
         "args": [*tiny_base, "--limit", "32", "--epochs", "60", "--eval-every", "8"]},
        {"name": "tiny-spikes", "label": "instability", "model": tiny, "args": [*tiny_base, "--max-steps", "80"],
         "env": {"LLMC_FAULTS": "grad-spike@25,grad-spike@50"}},
        {"name": "tiny-resumed", "label": "none", "model": tiny,
         "args": [*tiny_base, "--max-steps", "80", "--checkpoint-interval", "10"], "interrupt_at": 35},
        {"name": "tiny-no-eval", "label": "none", "model": tiny, "no_val": True,
         "args": [*tiny_base, "--max-steps", "80", "--limit", "9"]},
    ]  # fmt: skip
    if real is not None:
        real_base = ["--max-length", "256", "--batch-size", "2", "--grad-accum", "2", "--eval-every", "6",
                     "--lr", "2e-4"]  # fmt: skip
        out += [
            {"name": "real-healthy", "label": "none", "model": real, "args": [*real_base, "--max-steps", "48"]},
            # 10x the best rate llmc tune found for this model and data (1e-3; benchmarks/tune.py):
            # 2e-3, 10x the 2e-4 used here, trained fine (eval 1.415 -> 0.815).
            {"name": "real-lr-high", "label": "lr_too_high", "model": real,
             "args": [*real_base, "--max-steps", "48", "--lr", "1e-2"]},
            {"name": "real-lr-low", "label": "lr_too_low", "model": real,
             "args": [*real_base, "--max-steps", "48", "--lr", "2e-6"]},
            {"name": "real-overfit", "label": "overfitting", "model": real,
             "args": [*real_base, "--limit", "32", "--epochs", "12", "--eval-every", "8", "--lr", "1e-3"]},

        ]  # fmt: skip
    return out


def train(case: dict, work: Path, train_file: Path, val_file: Path) -> tuple[Path, float, int]:
    run_dir = work / "runs" / case["name"]
    val = [] if case.get("no_val") else ["--val-data", val_file]
    args = ["train", "--data", train_file, *val, "--model", case["model"], *case["args"], *QUIET,
            "--output", work / "runs", "--run-name", case["name"]]  # fmt: skip
    if "toml" in case:
        toml = work / f"{case['name']}.toml"
        toml.write_text(case["toml"])
        args += ["--config", toml]
    env = {**os.environ, **case.get("env", {})}
    started = time.perf_counter()
    if "interrupt_at" in case:
        proc = subprocess.Popen([*LLMC, *map(str, args)], cwd=work, env=env, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, text=True)  # fmt: skip
        while proc.poll() is None and _last_step(run_dir) < case["interrupt_at"]:
            time.sleep(0.2)
        proc.send_signal(signal.SIGTERM)
        proc.wait()
        done = subprocess.run([*LLMC, "resume", run_dir, "--no-dashboard"], cwd=work, env=env, capture_output=True,
                              text=True)  # fmt: skip
    else:
        done = subprocess.run([*LLMC, *map(str, args)], cwd=work, env=env, capture_output=True, text=True)
    if done.returncode not in (0, 7):
        print(done.stderr[-2000:], file=sys.stderr)
    return run_dir, time.perf_counter() - started, done.returncode


def _last_step(run_dir: Path) -> int:
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        return 0
    steps = [json.loads(line).get("step", 0) for line in path.read_text().splitlines() if '"train"' in line]
    return max(steps, default=0)


def eval_minimum(run_dir: Path) -> int | None:
    """The step of the lowest eval loss, from metrics.jsonl (the later record of a re-logged step wins)."""
    evals: dict[int, float] = {}
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        record = json.loads(line)
        if record.get("type") == "eval" and record["step"] > 0:
            evals[record["step"]] = record["eval_loss"]
    return min(evals, key=evals.get) if evals else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, help="SmolLM2-135M-Instruct folder: adds the real-model cases")
    parser.add_argument("--shared", type=Path, default=SHARED)
    parser.add_argument("--work", type=Path, default=Path("/tmp/llmc-analyze-labelled"))
    parser.add_argument("--only", nargs="+", help="run only the cases whose name contains one of these")
    parser.add_argument("--reuse", action="store_true", help="analyse runs already in --work instead of training")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    train_file, val_file = data_files(args.work, args.shared)
    chosen = [c for c in cases(tiny_model(args.work, args.shared), args.model)
              if not args.only or any(o in c["name"] for o in args.only)]  # fmt: skip
    results = []
    for case in chosen:
        run_dir = args.work / "runs" / case["name"]
        wall, code = None, None
        if not args.reuse:
            if run_dir.exists():
                subprocess.run(["rm", "-rf", str(run_dir)], check=True)
            run_dir, wall, code = train(case, args.work, train_file, val_file)
        done = subprocess.run([*LLMC, "analyze", run_dir, "--json"], capture_output=True, text=True, cwd=args.work)
        if done.returncode != 0:
            print(f"{case['name']}: llmc analyze failed: {done.stderr.strip()}", file=sys.stderr)
            continue
        report = json.loads(done.stdout)
        kinds = [f["kind"] for f in report["findings"]]
        pathologies = [k for k in kinds if k in PATHOLOGIES]
        top = pathologies[0] if pathologies else "none"
        result = {"case": case["name"], "label": case["label"], "top": top, "findings": kinds,
                  "train_exit": code, "wall_s": round(wall, 1) if wall else None,
                  "cannot_judge": report["cannot_judge"]}  # fmt: skip
        if case["label"] == "overfitting":
            section = next(s for s in report["sections"] if s["name"] == "overfitting")
            result["found_step"] = section["figures"].get("best_eval_step")
            result["true_min_step"] = eval_minimum(run_dir)
        results.append(result)
        print(json.dumps(result), flush=True)
    labels = sorted({r["label"] for r in results} | {r["top"] for r in results})
    print("\nconfusion (rows: label, columns: top recommendation)")
    print(f"{'':>14}" + "".join(f"{k:>14}" for k in labels))
    for label in labels:
        row = [sum(1 for r in results if r["label"] == label and r["top"] == k) for k in labels]
        if any(row):
            print(f"{label:>14}" + "".join(f"{n:>14}" for n in row))
    right = sum(r["label"] == r["top"] for r in results)
    print(f"\n{right} of {len(results)} named correctly")
    if args.json:
        args.json.write_text(json.dumps({"results": results, "correct": right}, indent=2))


if __name__ == "__main__":
    main()
