"""Data preparation at scale: synthetic alpaca files of 100 MB and 1 GB built from GSM8K.

For each file size, as a user would run it (whole processes, measured from outside):

1. ``llmc prepare`` with 1 and with 2 preparation processes (``--workers``), each into an
   empty cache: wall time, records/s and tokens/s, peak RSS of the process tree (parent and
   workers, sampled every 0.1 s), cache size on disk.
2. ``llmc train --max-steps N`` reusing that cache: wall time from the start of the process to
   the first optimizer step (the ``StepEnded`` event of step 1 in events.jsonl), and peak RSS
   of the whole training process.
3. Optionally (``--baseline-src``) the same ``llmc train`` from another checkout's sources
   (e.g. the in-memory pipeline before the cache): time to first step and peak RSS.

The model is a 4-million-parameter Llama (h64, 2 layers, the Llama-2 tokenizer from
../shared), trained in fp32, so the figures are about the data path, not the model (in bf16
on CPU, glibc's heap grows by gigabytes during evaluation with llmc's allocator setting,
whatever the data: a separate problem, noted in benchmarks/README.md). The synthetic examples are
GSM8K train questions and answers as alpaca instruction/output, each prefixed with its index
so no two are identical. Peak RSS is the machine's, measured in the same run.

    python benchmarks/data.py --sizes 100,1000 --workers 1,2
    python benchmarks/data.py --sizes 100 --baseline-src /tmp/llmc-base/src
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[1]


def make_alpaca(gsm8k: Path, path: Path, megabytes: int) -> int:
    """Write an alpaca JSONL of about ``megabytes`` MB from GSM8K; return its record count."""
    if path.is_file() and path.stat().st_size >= megabytes * 10**6:
        return sum(1 for _ in path.open("rb"))
    source = [json.loads(line) for line in gsm8k.read_text().splitlines() if line.strip()]
    written, count = 0, 0
    with path.open("w") as out:
        while written < megabytes * 10**6:
            row = source[count % len(source)]
            line = json.dumps(
                {"instruction": f"Problem {count}: {row['question']}", "input": "", "output": row["answer"]}
            )
            out.write(line + "\n")
            written += len(line) + 1
            count += 1
    return count


class TreeSampler:
    """Peak RSS of a process and all its children, sampled in a thread."""

    def __init__(self, pid: int, every_s: float = 0.1) -> None:
        self.process = psutil.Process(pid)
        self.peak = 0
        self.every_s = every_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                procs = [self.process, *self.process.children(recursive=True)]
                total = 0
                for proc in procs:
                    try:
                        total += proc.memory_info().rss
                    except psutil.Error:
                        pass
                self.peak = max(self.peak, total)
            except psutil.Error:
                return
            time.sleep(self.every_s)

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        return self.peak


def run(command: list[str], env: dict, cwd: Path) -> dict:
    started = time.time()
    process = subprocess.Popen(command, env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    sampler = TreeSampler(process.pid)
    output, _ = process.communicate()
    peak = sampler.stop()
    if process.returncode != 0:
        sys.exit(f"{' '.join(command)} failed ({process.returncode}):\n{output[-3000:]}")
    return {"started": started, "wall_s": time.time() - started, "peak_rss_mb": peak / 2**20, "output": output}


def tiny_model(folder: Path, tokenizer: Path, python: str) -> None:
    if (folder / "config.json").is_file():
        return
    code = (
        "import sys; from pathlib import Path; from transformers import AutoTokenizer;"
        "from llmc_cli.demo.build import TinyShape, build_tiny_llama;"
        "out = Path(sys.argv[1]); tok = AutoTokenizer.from_pretrained(sys.argv[2]); tok.save_pretrained(out);"
        "build_tiny_llama(out, len(tok), TinyShape(hidden_size=64, num_hidden_layers=2, num_attention_heads=4,"
        " num_key_value_heads=2, intermediate_size=128, max_position_embeddings=1024), seed=0)"
    )
    subprocess.run([python, "-c", code, str(folder), str(tokenizer)], check=True)


def first_step_s(run_dir: Path, started: float) -> float:
    for line in (run_dir / "events.jsonl").read_text().splitlines():
        event = json.loads(line)
        if event.get("event") == "StepEnded":
            return event["time"] - started
    return float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="100,1000", help="file sizes in MB")
    parser.add_argument("--workers", default="1,2", help="preparation processes to compare")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--max-length", type=int, default=512)
    parser.add_argument("--shared", type=Path, default=ROOT.parent / "shared")
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "llmc-bench-data")
    parser.add_argument("--baseline-src", type=Path, help="src/ of another checkout to time `llmc train` with")
    parser.add_argument("--baseline-sizes", default="100", help="sizes (MB) to run the baseline on")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    work = args.work
    work.mkdir(parents=True, exist_ok=True)
    python = sys.executable
    model = work / "tiny-llama"
    tiny_model(model, args.shared / "tokenizers" / "llama2", python)
    base_env = {k: v for k, v in os.environ.items() if not k.startswith("LLMC_")}
    base_env.update(HF_HUB_OFFLINE="1", PYTHONPATH=str(ROOT / "src"))
    results = []
    for megabytes in (int(s) for s in args.sizes.split(",")):
        data = work / f"alpaca-{megabytes}mb.jsonl"
        records = make_alpaca(args.shared / "data" / "gsm8k" / "train.jsonl", data, megabytes)
        common = ["--data", str(data), "--model", str(model), "--max-length", str(args.max_length)]
        training = ["--max-steps", str(args.steps), "--batch-size", "4", "--grad-accum", "1", "--precision", "fp32"]
        training += ["--eval-every", str(args.steps)]
        for workers in (int(w) for w in args.workers.split(",")):
            cache = work / f"cache-{megabytes}-{workers}"
            shutil.rmtree(cache, ignore_errors=True)
            env = {**base_env, "LLMC_CACHE": str(cache)}
            prep = run([python, "-m", "llmc_cli.cli.app", "prepare", *common, "--workers", str(workers)], env, work)
            entry = next((cache / "data").glob("*/manifest.json")).parent
            manifest = json.loads((entry / "manifest.json").read_text())
            size = sum(p.stat().st_size for p in entry.rglob("*") if p.is_file())
            out = work / f"runs-{megabytes}-{workers}"
            shutil.rmtree(out, ignore_errors=True)
            train = run(
                [python, "-m", "llmc_cli.cli.app", "train", *common, *training, "--output", str(out)], env, work
            )
            result = {
                "size_mb": megabytes,
                "file_bytes": data.stat().st_size,
                "records": records,
                "workers": workers,
                "prepare_s": prep["wall_s"],
                "tokenise_s": manifest["seconds"],
                "records_per_s": records / prep["wall_s"],
                "tokens": manifest["tokens"],
                "tokens_per_s": manifest["tokens"] / prep["wall_s"],
                "prepare_peak_rss_mb": prep["peak_rss_mb"],
                "cache_mb": size / 2**20,
                "train_wall_s": train["wall_s"],
                "train_first_step_s": first_step_s(out / "run-1", train["started"]),
                "train_peak_rss_mb": train["peak_rss_mb"],
            }
            results.append(result)
            print(json.dumps(result), flush=True)
        if args.baseline_src and str(megabytes) in args.baseline_sizes.split(","):
            out = work / f"runs-{megabytes}-baseline"
            shutil.rmtree(out, ignore_errors=True)
            env = {**base_env, "PYTHONPATH": str(args.baseline_src), "LLMC_CACHE": str(work / "cache-baseline")}
            train = run(
                [python, "-m", "llmc_cli.cli.app", "train", *common, *training, "--output", str(out)], env, work
            )
            result = {
                "size_mb": megabytes,
                "baseline": str(args.baseline_src),
                "train_wall_s": train["wall_s"],
                "train_first_step_s": first_step_s(out / "run-1", train["started"]),
                "train_peak_rss_mb": train["peak_rss_mb"],
            }
            results.append(result)
            print(json.dumps(result), flush=True)
    print("\n| file | records | processes | prepare s | tokens/s | prep peak RSS MB | cache MB | "
          "train: first step s | train peak RSS MB |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|")  # fmt: skip
    for r in results:
        if "baseline" in r:
            print(f"| {r['size_mb']} MB | | baseline (in-memory) | | | | | {r['train_first_step_s']:.1f} | "
                  f"{r['train_peak_rss_mb']:,.0f} |")  # fmt: skip
        else:
            print(
                f"| {r['size_mb']} MB | {r['records']:,} | {r['workers']} | {r['prepare_s']:.1f} | "
                f"{r['tokens_per_s']:,.0f} | {r['prepare_peak_rss_mb']:,.0f} | {r['cache_mb']:,.0f} | "
                f"{r['train_first_step_s']:.1f} | {r['train_peak_rss_mb']:,.0f} |"
            )
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
