"""Side-by-side training speed: a tutorial HF Trainer + PEFT script, TRL SFTTrainer, and llmc.

    python benchmarks/speed.py                      # 3 interleaved rounds, prints a markdown table
    python benchmarks/speed.py --rounds 1 --only hf,llmc --json out.json
    python benchmarks/speed.py --only llmc,llmc-base --base-src /tmp/llmc-before/src   # A/B two llmc trees

Same work for every contender (issue 3): the first 256 examples of GSM8K train, prompt tokens
masked, a mini TinyLlama-shaped Llama (hidden 512, 4 layers, 8 heads, 4 KV heads, MLP 1408,
the Llama-2 vocabulary, random init, seed 0), LoRA r=16 / alpha 32 / dropout 0.05 on all
linear layers, LR 2e-4, about 8 examples per optimizer step, 1 epoch, max length 512.
Every example is rendered and tokenised once, by llmc's pipeline, so all three train on
identical token ids and labels. Each run is a fresh subprocess (clean peak RSS). After
training, one shared evaluator (fp32, unpacked, response tokens only) computes the eval loss
of each adapter on the first 200 GSM8K test examples.

Figures: wall time of the whole run (process start to adapter saved); tokens/s = non-padding
training tokens / training-loop time; peak RSS of the process before evaluation; model FLOP/s
= (forward + activation-gradient FLOPs of the frozen model over the non-padding tokens) /
training-loop time, and that as a fraction of this machine's peak matmul FLOP/s measured in
the same invocation in fp32 and bf16.

Needs ../shared (tokenizer and GSM8K) or --shared, and `pip install trl datasets` for (b).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHAPE = dict(
    hidden_size=512,
    num_hidden_layers=4,
    num_attention_heads=8,
    num_key_value_heads=4,
    intermediate_size=1408,
    max_position_embeddings=2048,
)
SHAPES = {
    "mini": SHAPE,  # the CPU workload
    "tinyllama-1.1b": dict(  # TinyLlama-1.1B's shape, random init: for GPU runs
        hidden_size=2048,
        num_hidden_layers=22,
        num_attention_heads=32,
        num_key_value_heads=4,
        intermediate_size=5632,
        max_position_embeddings=2048,
    ),
}
LORA = dict(r=16, lora_alpha=32, lora_dropout=0.05, target_modules="all-linear")
LR, MAX_LENGTH, EXAMPLES_PER_STEP, SEED = 2e-4, 512, 8, 0
CONTENDERS = {
    "hf": "(a) HF Trainer + PEFT, DataCollatorForSeq2Seq, fp32",
    "trl": "(b) TRL SFTTrainer, packing, bf16",
    "llmc": "(c) llmc, defaults for this hardware",
    "llmc-base": "(c') llmc from --base-src (another commit), defaults for this hardware",
}


# --------------------------------------------------------------------------- preparation
def prepare(work: Path, shared: Path, n_train: int, n_eval: int, shape: str = "mini") -> dict:
    """Build the model, write the data slices and the shared token rows; return the work facts."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from llmc_cli.config.families import FAMILIES
    from llmc_cli.data.formats import normalise
    from llmc_cli.data.readers import read_records
    from llmc_cli.data.templates import ensure_chat_template
    from llmc_cli.data.tokenize import encode

    work.mkdir(parents=True, exist_ok=True)
    model_dir = work / ("model" if shape == "mini" else f"model-{shape}")
    tokenizer = AutoTokenizer.from_pretrained(shared / "tokenizers" / "llama2")
    if not (model_dir / "config.json").is_file():
        torch.manual_seed(SEED)
        config = LlamaConfig(vocab_size=len(tokenizer), tie_word_embeddings=False, **SHAPES[shape])
        LlamaForCausalLM(config).save_pretrained(model_dir)
        tokenizer.save_pretrained(model_dir)

    files = {}
    for split, count in (("train", n_train), ("test", n_eval)):
        lines = (shared / "data" / "gsm8k" / f"{split}.jsonl").read_text().splitlines()[:count]
        files[split] = work / f"{split}{count}.jsonl"
        files[split].write_text("\n".join(lines) + "\n")

    ensure_chat_template(tokenizer, FAMILIES["tinyllama"])  # what llmc uses for this model
    rows = {}
    for split, path in files.items():
        _, examples = normalise(path, read_records(path))
        encoded, _ = encode(tokenizer, examples, MAX_LENGTH)
        rows[split] = [{"input_ids": e.input_ids, "labels": e.labels} for e in encoded]
    (work / "rows.json").write_text(json.dumps(rows))
    tokens = sum(len(r["input_ids"]) for r in rows["train"])
    return {
        "model_dir": str(model_dir),
        "train": str(files["train"]),
        "test": str(files["test"]),
        "train_tokens": tokens,
        "mean_length": tokens / len(rows["train"]),
        "vocab": len(tokenizer),
        "pad_id": tokenizer.pad_token_id or 0,
        "shape": shape,
    }


def model_flops_per_token(vocab: int, context: float, shape: dict = SHAPE) -> float:
    """Forward + activation-gradient FLOPs of the frozen model per token (LoRA terms are <2 %).

    Frozen weights get no weight gradient, so each linear layer costs 2 FLOPs per weight in
    forward and 2 in backward; attention scores and mixing add 2 x 2 x context x hidden per
    layer in forward, twice that in backward (causal: half the context on average).
    """
    h, layers, mlp = shape["hidden_size"], shape["num_hidden_layers"], shape["intermediate_size"]
    kv = h * shape["num_key_value_heads"] // shape["num_attention_heads"]
    per_layer = h * h * 2 + h * kv * 2 + 3 * h * mlp
    linear = 4 * (layers * per_layer + h * vocab)
    attention = 3 * 4 * layers * h * context / 2
    return linear + attention


def peak_matmul_flops(dtype_name: str, seconds: float = 3.0) -> float:
    """Best FLOP/s of square matmuls (256 to 8192 on a GPU, to 2048 on CPU) in this dtype.

    Sizes grow while one product takes under a second, so an emulated dtype (bf16 without
    native instructions runs hundreds of times slower) is measured without stalling the run.
    On a GPU the training runs use it, so its peak is the one measured.
    """
    import torch

    dtype, best = getattr(torch, dtype_name), 0.0
    device = "cuda" if torch.cuda.is_available() else "cpu"
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    sizes = (256, 512, 1024, 2048, 4096, 8192) if device == "cuda" else (256, 512, 1024, 2048)
    for size in sizes:
        a, b = (torch.randn(size, size, dtype=dtype, device=device) for _ in range(2))
        deadline, slowest = time.perf_counter() + seconds / len(sizes), 0.0
        while time.perf_counter() < deadline:
            sync()
            started = time.perf_counter()
            a @ b
            sync()
            elapsed = time.perf_counter() - started
            best, slowest = max(best, 2 * size**3 / elapsed), max(slowest, elapsed)
        if slowest > 1.0:
            break
    return best


# ------------------------------------------------------------------------------ workers
def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _dataset(rows):
    from datasets import Dataset

    return Dataset.from_list([{**r, "attention_mask": [1] * len(r["input_ids"])} for r in rows])


def _packed_rows_per_step(facts: dict) -> int:
    """Packed rows per step holding about EXAMPLES_PER_STEP examples."""
    return max(1, round(EXAMPLES_PER_STEP * facts["mean_length"] / MAX_LENGTH))


def _hf_like(kind: str, facts: dict, rows: dict, out: Path) -> dict:
    """(a) as tutorials write it, or (b) TRL's SFTTrainer with packing and bf16."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(SEED)
    tokenizer = AutoTokenizer.from_pretrained(facts["model_dir"])
    tokenizer.pad_token = tokenizer.pad_token or tokenizer.eos_token  # as the tutorials do
    model = AutoModelForCausalLM.from_pretrained(facts["model_dir"])
    train = _dataset(rows["train"])
    common = dict(
        output_dir=str(out),
        num_train_epochs=1,
        learning_rate=LR,
        logging_steps=5,
        save_strategy="no",
        report_to="none",
        seed=SEED,
        use_cpu=not torch.cuda.is_available(),
    )
    if kind == "hf":
        from transformers import DataCollatorForSeq2Seq, Trainer, TrainingArguments

        model = get_peft_model(model, LoraConfig(task_type="CAUSAL_LM", **LORA))
        args = TrainingArguments(per_device_train_batch_size=EXAMPLES_PER_STEP, **common)
        trainer = Trainer(
            model=model, args=args, train_dataset=train, data_collator=DataCollatorForSeq2Seq(tokenizer, padding=True)
        )
    else:
        from trl import SFTConfig, SFTTrainer

        args = SFTConfig(
            per_device_train_batch_size=_packed_rows_per_step(facts),
            packing=True,
            max_length=MAX_LENGTH,
            bf16=True,
            **common,
        )
        trainer = SFTTrainer(
            model=model,
            args=args,
            train_dataset=train.remove_columns("attention_mask"),
            peft_config=LoraConfig(task_type="CAUSAL_LM", **LORA),
            processing_class=tokenizer,
        )
    budget = _TimeBudget(float(os.environ.get("BENCH_BUDGET_S", "inf")))
    trainer.add_callback(budget)
    started = time.perf_counter()
    trainer.train()
    train_time = time.perf_counter() - started
    trainer.model.save_pretrained(out / "adapter")
    steps, planned = trainer.state.global_step, trainer.state.max_steps
    return {
        "train_time_s": train_time,
        "tokens": round(facts["train_tokens"] * steps / planned),
        "steps": steps,
        "planned_steps": planned,
        "partial": steps < planned,
    }


class _TimeBudget:
    """A TrainerCallback that ends training after ``seconds`` (for contenders too slow to finish)."""

    def __init__(self, seconds: float) -> None:
        self.seconds, self.started = seconds, time.perf_counter()

    def __getattr__(self, name):  # every other callback event: nothing to do
        if name.startswith("on_"):
            return lambda *args, **kwargs: None
        raise AttributeError(name)

    def on_step_end(self, args, state, control, **kwargs):
        if time.perf_counter() - self.started > self.seconds:
            control.should_training_stop = True
        return control


def _llmc(facts: dict, out: Path) -> dict:
    import llmc_cli
    from llmc_cli import FineTuner

    run_dir = FineTuner(
        facts["train"],
        model=facts["model_dir"],
        val_data=facts["test"],
        output=out,
        env_file=None,
        lora_r=LORA["r"],
        lora_alpha=LORA["lora_alpha"],
        lora_dropout=LORA["lora_dropout"],
        target_modules=LORA["target_modules"],
        lr=LR,
        epochs=1,
        max_length=MAX_LENGTH,
        batch_size=_packed_rows_per_step(facts),
        grad_accum=1,
        seed=SEED,
    ).train()
    summary = json.loads((run_dir / "summary.json").read_text())
    return {
        "train_time_s": summary["train_time_s"],
        "tokens": summary["tokens"],
        "steps": summary["steps"],
        "adapter": str(run_dir / "final"),
        "llmc_eval_loss": summary["final_eval_loss"],
        "precision": summary["precision"],
        "fused_loss": summary["fused_loss"],
        "llmc_source": str(Path(llmc_cli.__file__).parent),
    }


def evaluate_adapter(facts: dict, rows: list[dict], adapter: Path) -> float:
    """Token-weighted response-only CE of base + adapter, fp32, one example per row."""
    import torch
    import torch.nn.functional as F
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(facts["model_dir"]), adapter).eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for row in rows:
            ids, labels = torch.tensor([row["input_ids"]]), torch.tensor([row["labels"]])
            logits = model(input_ids=ids).logits[0, :-1].float()
            total += F.cross_entropy(logits, labels[0, 1:], ignore_index=-100, reduction="sum").item()
            count += int(labels[0, 1:].ne(-100).sum())
    return total / count


def worker(kind: str, work: Path, round_index: int) -> None:
    """One contender in this process; prints one JSON line."""
    process_started = time.perf_counter()
    facts = json.loads((work / "facts.json").read_text())
    rows = json.loads((work / "rows.json").read_text())
    out = work / f"{kind}-{round_index}"
    result = _llmc(facts, out) if kind.startswith("llmc") else _hf_like(kind, facts, rows, out)
    result["wall_s"] = time.perf_counter() - process_started
    result["peak_rss_mb"] = _peak_rss_mb()
    import torch

    if torch.cuda.is_available():
        result["peak_gpu_mb"] = torch.cuda.max_memory_allocated() / 2**20
    result["eval_loss"] = evaluate_adapter(facts, rows["test"], Path(result.get("adapter", out / "adapter")))
    print("RESULT " + json.dumps(result), flush=True)


# ---------------------------------------------------------------------------------- main
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--only", default="hf,trl,llmc", help="comma-separated subset of hf,trl,llmc")
    parser.add_argument("--work", type=Path, default=Path(os.environ.get("TMPDIR", "/tmp")) / "llmc-speed-bench")
    parser.add_argument("--shared", type=Path, default=ROOT.parent / "shared")
    parser.add_argument("--train-examples", type=int, default=256)
    parser.add_argument("--eval-examples", type=int, default=200)
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument(
        "--shape", choices=sorted(SHAPES), default="mini", help="model shape (tinyllama-1.1b for GPU runs)"
    )
    parser.add_argument(
        "--trl-rounds", type=int, default=1, help="rounds for (b), which is slow where bf16 is emulated"
    )
    parser.add_argument(
        "--trl-budget-s",
        type=float,
        default=120.0,
        help="stop (b) after this many seconds of training; its tokens/s covers the steps it made",
    )
    parser.add_argument(
        "--base-src", type=Path, help="for llmc-base: a src/ folder of another llmc commit (git archive it there)"
    )
    parser.add_argument("--worker", choices=sorted(CONTENDERS), help=argparse.SUPPRESS)
    parser.add_argument("--round", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args.worker, args.work, args.round)

    kinds = [k.strip() for k in args.only.split(",") if k.strip()]
    if "llmc-base" in kinds and not (args.base_src and (args.base_src / "llmc_cli").is_dir()):
        sys.exit("llmc-base needs --base-src DIR, a src/ folder that holds llmc_cli (e.g. from `git archive`)")
    facts = prepare(args.work, args.shared, args.train_examples, args.eval_examples, args.shape)
    (args.work / "facts.json").write_text(json.dumps(facts))
    peaks = {name: peak_matmul_flops(name) for name in ("float32", "bfloat16")}
    print(
        f"peak matmul: fp32 {peaks['float32'] / 1e9:.1f} GFLOP/s, bf16 {peaks['bfloat16'] / 1e9:.1f} GFLOP/s",
        file=sys.stderr,
    )
    flops_per_token = model_flops_per_token(facts["vocab"], facts["mean_length"], SHAPES[args.shape])

    runs: dict[str, list[dict]] = {k: [] for k in kinds}
    for round_index in range(args.rounds):  # interleaved, so drift in machine load hits everyone alike
        # ... and in the reverse order every other round, so that no contender always runs first.
        for kind in kinds if round_index % 2 == 0 else kinds[::-1]:
            if kind == "trl" and round_index >= args.trl_rounds:
                continue
            print(f"round {round_index + 1}/{args.rounds}: {kind} ...", file=sys.stderr, flush=True)
            env = {**os.environ, "TOKENIZERS_PARALLELISM": "false"}
            if kind == "trl":
                env["BENCH_BUDGET_S"] = str(args.trl_budget_s)
            if kind == "llmc-base":  # that tree's llmc_cli comes first on the path
                env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(args.base_src), env.get("PYTHONPATH")]))
            proc = subprocess.run(
                [sys.executable, __file__, "--worker", kind, "--work", str(args.work), "--round", str(round_index)],
                capture_output=True,
                text=True,
                env=env,
            )
            lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
            if proc.returncode != 0 or not lines:
                sys.exit(f"{kind} failed (exit {proc.returncode}):\n{proc.stderr[-4000:]}")
            result = json.loads(lines[-1][len("RESULT ") :])
            result["tokens_per_s"] = result["tokens"] / result["train_time_s"]
            result["model_flops_per_s"] = result["tokens_per_s"] * flops_per_token
            runs[kind].append(result)
            partial = f" (partial: {result['steps']}/{result['planned_steps']} steps)" if result.get("partial") else ""
            print(
                f"  {result['tokens_per_s']:,.0f} tok/s, eval loss {result['eval_loss']:.4f}{partial}", file=sys.stderr
            )

    report = summarise(runs, peaks, facts, flops_per_token)
    print(table(report))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))


def summarise(runs: dict[str, list[dict]], peaks: dict, facts: dict, flops_per_token: float) -> dict:
    def median(kind, key):
        return statistics.median(r[key] for r in runs[kind])

    rows = {}
    for kind in runs:
        rows[kind] = {
            key: median(kind, key)
            for key in ("wall_s", "train_time_s", "tokens_per_s", "peak_rss_mb", "eval_loss", "model_flops_per_s")
        }
        rows[kind]["fraction_of_fp32_peak"] = rows[kind]["model_flops_per_s"] / peaks["float32"]
        rows[kind]["fraction_of_bf16_peak"] = rows[kind]["model_flops_per_s"] / peaks["bfloat16"]
        rows[kind]["compute_dtype"] = _compute_dtype(kind, runs[kind][0])
        rows[kind]["partial"] = any(r.get("partial") for r in runs[kind])
        rows[kind]["runs"] = runs[kind]
    return {"peak_matmul_flops": peaks, "work": facts, "model_flops_per_token": flops_per_token, "results": rows}


def _compute_dtype(kind: str, run: dict) -> str:
    if kind.startswith("llmc"):
        return {"bf16": "bfloat16", "fp16": "float16"}.get(run.get("precision", "fp32"), "float32")
    return "bfloat16" if kind == "trl" else "float32"


def table(report: dict) -> str:
    results = report["results"]
    base_kind = "hf" if "hf" in results else "llmc-base" if "llmc-base" in results else None
    base = results.get(base_kind)
    ref = "(a)" if base_kind == "hf" else "(c')"
    lines = [
        f"| contender | wall s | tokens/s | vs {ref} | peak RSS MB | eval loss | vs {ref} | model GFLOP/s "
        "| of fp32 peak | of bf16 peak |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for kind, r in results.items():
        speed = f"{r['tokens_per_s'] / base['tokens_per_s']:.2f}x" if base else "-"
        loss = f"{(r['eval_loss'] / base['eval_loss'] - 1) * 100:+.2f} %" if base else "-"
        if r["partial"]:
            loss = "partial run"
        lines.append(
            f"| {CONTENDERS[kind]} | {r['wall_s']:.1f} | {r['tokens_per_s']:,.0f} | {speed} | {r['peak_rss_mb']:,.0f} "
            f"| {r['eval_loss']:.4f} | {loss} | {r['model_flops_per_s'] / 1e9:.1f} "
            f"| {r['fraction_of_fp32_peak']:.1%} | {r['fraction_of_bf16_peak']:.1%} |"
        )
    peaks = report["peak_matmul_flops"]
    lines.append("")
    lines.append(
        "Medians over interleaved rounds (" + ", ".join(f"{k}: {len(r['runs'])}" for k, r in results.items()) + "). "
        f"Peak matmul: fp32 {peaks['float32'] / 1e9:.1f} GFLOP/s, bf16 {peaks['bfloat16'] / 1e9:.1f} GFLOP/s."
    )
    if any(r.get("partial") for r in results.values()):
        lines[-1] += " A partial run stopped at its time budget: its tokens/s is real, its eval loss is not comparable."
    return "\n".join(lines)


if __name__ == "__main__":
    main()
