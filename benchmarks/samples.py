"""Sample answers on a real model: GSM8K test scores before and after a short llmc run, and what sampling costs.

Trains SmolLM2-135M-Instruct (``../shared/models/get-smollm2.sh DIR``) on GSM8K train with
``llmc train`` (4 packed rows of 512 tokens a step, ``--steps`` steps) and its default sampling
(4 validation prompts, before, at evaluations within 10 % of the training time, at the end),
then answers the first ``--questions`` GSM8K *test* questions greedily (up to ``--tokens`` new
tokens, the run's chat template) with the base model and with
the base plus the run's adapter, and scores them with llmc's answer extraction (``#### N``):
exact match and format adherence, before -> after, and, reading the references as free text,
ROUGE-L and chrF of the whole worked solution (rouge-score, sacrebleu). Prints two answers side by side and the wall
time sampling took as a share of the whole run.

    python benchmarks/samples.py --smollm2 /work/smollm2 [--steps 60] [--questions 100] [--json F]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LLMC = [sys.executable, "-m", "llmc_cli.cli.app"]
NEVER = r"(?!)()"  # an answer pattern that finds nothing: every reference is free text


def answer(model_dir: Path, adapter: Path | None, tokenizer_dir: Path, questions: list[str], tokens: int):
    """Greedy answers of the base model (``adapter`` None) or base + adapter, in batches of 25."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from llmc_cli.data.templates import Rendered, chat_prompt
    from llmc_cli.data.tokenize import tokenize_texts
    from llmc_cli.engine.samples import generate

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    if adapter is not None:
        model = PeftModel.from_pretrained(model, adapter)
    ids = [p[0] for p in tokenize_texts(tokenizer, [Rendered(chat_prompt(tokenizer, q), ()) for q in questions])]
    started, outputs = time.perf_counter(), []
    for start in range(0, len(ids), 25):
        outputs += generate(model, tokenizer, ids[start : start + 25], tokens)
    return outputs, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smollm2", type=Path, required=True)
    parser.add_argument("--shared", type=Path, default=ROOT.parent / "shared")
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--questions", type=int, default=100)
    parser.add_argument("--tokens", type=int, default=256)
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "llmc-samples-bench")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    from llmc_cli.engine.answers import score

    gsm8k = args.shared / "data" / "gsm8k"
    shutil.rmtree(args.work, ignore_errors=True)
    args.work.mkdir(parents=True)
    started = time.perf_counter()
    run = subprocess.run(
        [*LLMC, "train", "--data", str(gsm8k / "train.jsonl"), "--model", str(args.smollm2), "--limit", "2000",
         "--max-steps", str(args.steps), "--batch-size", "4", "--grad-accum", "1", "--max-length", "512",
         "--no-dashboard", "--report-to", "none", "--output", str(args.work / "runs")],
        capture_output=True, text=True,
    )  # fmt: skip
    wall = time.perf_counter() - started
    if run.returncode != 0:
        sys.exit(f"llmc train failed ({run.returncode}):\n{run.stderr[-3000:]}")
    run_dir = args.work / "runs" / "run-1"
    summary = json.loads((run_dir / "summary.json").read_text())
    test = [json.loads(line) for line in (gsm8k / "test.jsonl").read_text().splitlines()[: args.questions]]
    questions, references = [t["question"] for t in test], [t["answer"] for t in test]
    pattern = json.loads((run_dir / "config.json").read_text())["config"]["training"]["answer_pattern"]
    before, before_s = answer(args.smollm2, None, run_dir / "final", questions, args.tokens)
    after, after_s = answer(args.smollm2, run_dir / "final", run_dir / "final", questions, args.tokens)
    scored = {name: score(outputs, references, pattern) for name, outputs in (("before", before), ("after", after))}
    # The same answers with the references read as free text (a pattern that never matches): ROUGE-L and chrF
    # of the whole worked solution against the reference's.
    text = {name: score(outputs, references, NEVER) for name, outputs in (("before", before), ("after", after))}
    result = {
        "model": str(args.smollm2),
        "steps": summary["steps"],
        "train_wall_s": round(wall, 1),
        "train_time_s": summary["train_time_s"],
        "sampling_s": round(summary["samples"]["time_s"], 1),
        "sampling_share_of_wall": round(summary["samples"]["time_s"] / wall, 4),
        "sampled_steps": sorted({json.loads(x)["step"] for x in (run_dir / "samples.jsonl").read_text().splitlines()}),
        "run_samples_first": summary["samples"]["first"],
        "run_samples_last": summary["samples"]["last"],
        "test_questions": len(questions),
        "test_exact_match": {k: v.exact_match for k, v in scored.items()},
        "test_format_adherence": {k: v.format_adherence for k, v in scored.items()},
        "test_rouge_l_as_free_text": {k: round(v.rouge_l, 4) for k, v in text.items()},
        "test_chrf_as_free_text": {k: round(v.chrf, 2) for k, v in text.items()},
        "generation_s": {"before": round(before_s, 1), "after": round(after_s, 1)},
        "side_by_side": [
            {"question": questions[i], "reference": references[i], "before": before[i], "after": after[i]}
            for i in range(min(2, len(questions)))
        ],
    }
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
