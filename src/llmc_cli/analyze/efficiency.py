"""Efficiency: throughput over the run, where the time went (training, evaluation, checkpoints),
how full the rows were, peak memory against the device's, and the model FLOP/s reached
(findings: slow_throughput, memory_headroom)."""

from __future__ import annotations

import statistics

from llmc_cli.analyze.findings import Finding, Section, clamp

WORTH_S = 60.0  # a run shorter than this (train + eval + saving) gets no finding about where its time went


def analyze_efficiency(records) -> Section:
    section = Section("efficiency", "", [], {})
    summary, config = records.summary or {}, records.config
    speeds = [float(r["tokens_per_s"]) for r in records.steps[2:] if r.get("tokens_per_s")]
    if len(speeds) >= 8:
        quarter = max(2, len(speeds) // 4)
        first, last = statistics.median(speeds[:quarter]), statistics.median(speeds[-quarter:])
        section.figures["tokens_per_s"] = {"first_quarter": round(first, 1), "last_quarter": round(last, 1)}
        section.evidence.append(f"{first:,.0f} tokens/s in the first quarter, {last:,.0f} in the last")
        if last < 0.7 * first:
            section.findings.append(Finding(
                "slow_throughput", f"throughput fell {1 - last / first:.0%} during the run",
                f"{first:,.0f} -> {last:,.0f} tokens/s (another process on the machine, thermal limits, or swapping)",
                "check the machine (llmc doctor); compare the system panel's CPU and RAM", 0.5))  # fmt: skip
    train_s, eval_s = summary.get("train_time_s"), summary.get("eval_time_s")
    saved_s = summary.get("checkpoint_time_s")
    if saved_s is None:
        saved_s = sum(float(c.get("duration_s") or 0) for c in records.of("CheckpointSaved"))
    if train_s:
        total = train_s + (eval_s or 0) + (saved_s or 0)
        split = {"train": train_s / total, "eval": (eval_s or 0) / total, "checkpoint": (saved_s or 0) / total}
        section.figures["time_split"] = {k: round(v, 3) for k, v in split.items()}
        section.evidence.append(
            f"time: {split['train']:.0%} training, {split['eval']:.0%} evaluating, {split['checkpoint']:.0%} saving"
        )
        every = _eval_every(records)
        long_enough = total >= WORTH_S  # seconds of a toy run split any way are nothing to fix
        if split["eval"] > 0.3 and every and long_enough:
            section.findings.append(Finding(
                "slow_throughput", f"{split['eval']:.0%} of the time went to evaluation",
                f"{eval_s:.0f} s evaluating against {train_s:.0f} s training, every {every} steps",
                f"--eval-every {every * 3}", clamp(split["eval"] / 0.5)))  # fmt: skip
        interval = config.get("checkpoint_interval")
        if split["checkpoint"] > 0.15 and interval and long_enough:
            section.findings.append(Finding(
                "slow_throughput", f"{split['checkpoint']:.0%} of the time went to saving checkpoints",
                f"{saved_s:.0f} s saving every {interval} steps", f"--checkpoint-interval {interval * 3}",
                clamp(split["checkpoint"] / 0.3)))  # fmt: skip
    train_data = (summary.get("data") or {}).get("train") or {}
    rows, max_length = summary.get("train_rows"), config.get("max_length")
    if rows and max_length and train_data.get("tokens"):
        fill = train_data["tokens"] / (rows * max_length)
        section.figures["row_fill"] = round(fill, 3)
        section.evidence.append(f"rows {fill:.0%} full ({'packed' if config.get('packing') else 'not packed'})")
        if fill < 0.5 and not config.get("packing"):
            section.findings.append(Finding(
                "slow_throughput", f"rows were {fill:.0%} full: most of each batch was padding",
                f"{train_data['tokens']:,} tokens in {rows:,} rows of {max_length}", "--packing", 0.6))  # fmt: skip
    _memory(records, section)
    if summary.get("tokens_per_s") and summary.get("total_params"):
        flops = 4 * summary["total_params"] * summary["tokens_per_s"]  # LoRA: forward + input gradients
        section.figures["model_flops_per_s"] = flops
        measured = f"about {flops / 1e9:,.1f} GFLOP/s of model compute (4·parameters·tokens/s)"
        peak = summary.get("matmul_peak_flops_per_s")
        if peak:
            section.figures["model_flops_share_of_peak"] = round(flops / peak, 3)
            measured += f", {flops / peak:.0%} of this machine's measured matmul peak ({peak / 1e9:,.0f} GFLOP/s)"
        section.evidence.append(measured)
    section.verdict = "; ".join(f.summary for f in section.findings) or "no time or memory lost worth fixing"
    return section


def _eval_every(records) -> int | None:
    steps = [int(e["step"]) for e in records.evals if e["step"] > 0]
    return steps[1] - steps[0] if len(steps) >= 2 else records.config.get("eval_every")


def _memory(records, section: Section) -> None:
    ooms = [a for a in records.of("Adjustment") if str(a.get("cause", "")).startswith("oom")]
    gpus = [g for s in records.of("SystemSampled") for g in s.get("gpus") or []]
    peak_rss = (records.summary or {}).get("peak_rss_mb") or max(
        (float(s.get("rss_mb") or 0) for s in records.of("SystemSampled")), default=0.0
    )
    if peak_rss:
        section.evidence.append(f"peak RSS {peak_rss:,.0f} MB")
    if ooms:
        micro = ooms[-1].get("settings", {}).get("micro_batch")
        section.findings.append(Finding(
            "memory_headroom", f"memory ran out {len(ooms)} time(s); recovery shrank the micro-batch",
            "; ".join(str(a.get("message")) for a in ooms[:2]),
            f"--micro-batch {micro}" if micro else "--micro-batch smaller, or --quantize 4bit", 0.7))  # fmt: skip
    elif gpus:
        used = max(float(g.get("memory_used_mb") or 0) for g in gpus)
        total = max(float(g.get("memory_total_mb") or 0) for g in gpus)
        if total:
            share = used / total
            section.figures["gpu_memory_peak_share"] = round(share, 3)
            section.evidence.append(f"GPU memory peak {used / 1024:.1f} of {total / 1024:.0f} GB ({share:.0%})")
            micro = records.config.get("micro_batch") or records.config.get("batch_size")
            if share < 0.35 and micro:
                section.findings.append(Finding(
                    "memory_headroom", f"the GPU was {share:.0%} full at its peak",
                    f"{used / 1024:.1f} of {total / 1024:.0f} GB", f"--micro-batch {2 * int(micro)}", 0.5))  # fmt: skip
