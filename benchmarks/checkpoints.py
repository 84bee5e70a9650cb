"""Checkpoint save and load time, and size, for the speed benchmark's model.

    python benchmarks/checkpoints.py                 # 5 saves and loads, medians
    python benchmarks/checkpoints.py --repeat 10 --dir /fast/disk

The model is the mini TinyLlama of benchmarks/speed.py (hidden 512, 4 layers, 32,000-token
vocabulary, random init) with LoRA r=16 on all linear layers and an AdamW state after one
step. "save" is the full commit protocol as training runs it (PEFT adapter, optimizer,
scheduler, RNG, trainer state, config; fsync of every file; manifest with sha256; rename;
fsync of the directory). "load" is what resume does: verify every sha256, then load the
adapter, optimizer and scheduler into fresh objects. "verify" is the sha256 check alone.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from speed import LORA, SHAPE  # noqa: E402  (the same model as the speed benchmark)


def build(vocab: int):
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM, get_scheduler

    torch.manual_seed(0)
    model = get_peft_model(LlamaForCausalLM(LlamaConfig(vocab_size=vocab, **SHAPE)), LoraConfig(**LORA))
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=2e-4)
    scheduler = get_scheduler("cosine", optimizer, num_warmup_steps=1, num_training_steps=100)
    ids = torch.randint(0, vocab, (1, 64))
    model(input_ids=ids, labels=ids).loss.backward()
    optimizer.step()
    scheduler.step()
    return model, optimizer, scheduler, sum(p.numel() for p in params)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--vocab", type=int, default=32000)
    parser.add_argument("--dir", type=Path, default=None, help="where to write (default: a temporary directory)")
    args = parser.parse_args()

    from llmc_cli.checkpoints.commit import commit
    from llmc_cli.checkpoints.manifest import read_manifest, verify
    from llmc_cli.checkpoints.state import TrainerState
    from llmc_cli.engine.snapshot import restore_snapshot, write_snapshot

    model, optimizer, scheduler, trainable = build(args.vocab)
    state = TrainerState()
    facts = {"epoch_fraction": 0.0, "data_fingerprint": "benchmark", "model": "benchmark"}
    saves, loads, verifies = [], [], []
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        root = Path(tmp)
        for index in range(args.repeat):
            started = time.perf_counter()
            path = commit(
                root,
                f"step-{index:06d}",
                lambda d: write_snapshot(
                    d, model=model, optimizer=optimizer, scheduler=scheduler, state=state, config_json={}, facts=facts
                ),
            )
            saves.append(time.perf_counter() - started)
            started = time.perf_counter()
            assert verify(path).ok
            verifies.append(time.perf_counter() - started)
            fresh_model, fresh_optimizer, fresh_scheduler, _ = build(args.vocab)
            started = time.perf_counter()
            assert verify(path).ok
            fresh = dict(model=fresh_model, optimizer=fresh_optimizer, scheduler=fresh_scheduler)
            restore_snapshot(path, **fresh, data_fingerprint="benchmark")
            loads.append(time.perf_counter() - started)
        files = read_manifest(path)["files"]
    total = sum(f["size"] for f in files.values())
    print(f"model: {SHAPE}, LoRA {LORA}, {trainable:,} trainable parameters, vocab {args.vocab:,}")
    print(f"\n| checkpoint | median of {args.repeat} |\n|---|---:|")
    print(f"| save (commit protocol) | {statistics.median(saves) * 1000:.0f} ms |")
    print(f"| verify (sha256 of every file) | {statistics.median(verifies) * 1000:.0f} ms |")
    print(f"| load (verify + restore) | {statistics.median(loads) * 1000:.0f} ms |")
    print(f"| size | {total / 2**20:.2f} MB |")
    print("\n| file | bytes |\n|---|---:|")
    for name, meta in sorted(files.items(), key=lambda item: -item[1]["size"]):
        print(f"| {name} | {meta['size']:,} |")


if __name__ == "__main__":
    main()
