"""Does torch.compile pay off for llmc's training step? Eager against compiled, side by side.

    python benchmarks/compile.py                 # the speed benchmark's mini model, bf16 where native
    python benchmarks/compile.py --steps 12 --model DIR

Each mode runs in its own process: the model (frozen base, LoRA on every linear layer, llmc's
packed attention and fused loss) trains ``--steps`` steps of 4 rows x 512 tokens, each row packing
four random-length examples, as llmc's packed batches do. Printed: the whole loop's seconds (the
compile included), the first step's, and the median of the steps after the fourth.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def train(model_dir: str, mode: str, steps: int, precision: str) -> None:
    import torch
    from transformers import AutoModelForCausalLM

    from llmc_cli.config.schema import LoraSettings
    from llmc_cli.engine.loss import TokenLoss
    from llmc_cli.models.loading import DTYPES, add_lora
    from llmc_cli.optimize.attention import use_packed_attention

    torch.manual_seed(0)
    dtype = DTYPES[precision]
    base = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype, attn_implementation="sdpa")
    model = add_lora(base, LoraSettings(lora_r=16, target_modules="all-linear"), False, quantized=False)
    use_packed_attention(base)
    if mode == "compile":
        model = torch.compile(model)
    loss, rows, length = TokenLoss(model), 4, 512
    vocab = base.config.vocab_size
    generator = torch.Generator().manual_seed(0)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    model.train()
    times, started = [], time.perf_counter()
    for _ in range(steps):
        ids = torch.randint(3, vocab, (rows, length), generator=generator)
        cuts = sorted(torch.randint(20, length - 12, (3,), generator=generator).tolist())
        bounds = [0, *cuts, length]
        positions = torch.cat([torch.arange(b - a) for a, b in zip(bounds, bounds[1:], strict=False)])
        labels = ids.clone()
        labels[:, :60] = -100
        batch = {"input_ids": ids, "position_ids": positions.expand(rows, length), "labels": labels}
        step_started = time.perf_counter()
        with torch.autocast("cpu", dtype=dtype, enabled=precision != "fp32"):
            value = loss(model, batch)
        value.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - step_started)
    later = sorted(times[4:]) or times
    print(
        f"{mode}: {time.perf_counter() - started:.1f} s for {steps} steps, first step {times[0]:.2f} s, "
        f"median after the fourth {later[len(later) // 2]:.3f} s",
        flush=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="a Hugging Face causal LM folder (default: the speed benchmark's mini model)")
    parser.add_argument("--shared", type=Path, default=ROOT.parent / "shared")
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--precision", choices=("bf16", "fp32"), help="default: what llmc picks here")
    parser.add_argument("--mode", choices=("eager", "compile"), help=argparse.SUPPRESS)  # one worker process
    args = parser.parse_args()
    model = args.model
    if model is None:
        sys.path.insert(0, str(ROOT / "benchmarks"))
        from speed import prepare

        model = prepare(Path(tempfile.gettempdir()) / "llmc-compile-bench", args.shared, 600, 10)["model_dir"]
    precision = args.precision
    if precision is None:
        from llmc_cli.optimize.hardware import choose_precision, detect

        precision = choose_precision("auto", True, detect())[0]
    if args.mode:
        train(model, args.mode, args.steps, precision)
        return
    print(f"model {model}, {precision}, {args.steps} steps of 4 x 512 tokens")
    for mode in ("eager", "compile"):
        command = [sys.executable, __file__, "--model", model, "--steps", str(args.steps), "--mode", mode]
        subprocess.run([*command, "--precision", precision], check=True)


if __name__ == "__main__":
    main()
