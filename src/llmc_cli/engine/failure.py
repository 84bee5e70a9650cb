"""The failure report a failed run leaves: ``failure.json`` and the same as text, ``failure.txt``.

It says what went wrong (the classified cause and the error), where the run stood (the
last train and eval metrics), what llmc already tried (the run's adjustments), where to
continue from (the newest checkpoint that verifies) and what to change by hand. It is built
from what the engine holds in memory when the error reaches it, not from files read back.
"""

from __future__ import annotations

import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llmc_cli.checkpoints import catalog
from llmc_cli.checkpoints.manifest import verify
from llmc_cli.durable import disk_error, write_json, write_text
from llmc_cli.engine.recovery import classify
from llmc_cli.errors import LlmcError

TRAIN_METRICS = ("loss", "lr", "grad_norm", "clip_threshold", "tokens_per_s")
EVAL_METRICS = ("eval_loss", "perplexity")

SUGGESTIONS: dict[str, list[str]] = {
    "oom-gpu": [
        "Lower --max-length (activation memory grows with it).",
        "Load the base model in 4 bits: --quantize 4bit (QLoRA).",
        "Use a smaller model, or free GPU memory held by other processes (nvidia-smi).",
    ],
    "oom-cpu": [
        "Lower --max-length or --batch-size.",
        "Close other programs, or raise the memory limit (ulimit -v / container limits).",
        "Use a smaller model.",
    ],
    "divergence": [
        "Lower the learning rate 3-10x (--lr).",
        "Keep --max-grad-norm at 1.0 or below, with adaptive clipping on.",
        "On GPUs without bf16, fp16 overflows more easily: try --precision fp32.",
        "Look at the data around the failing step for broken or extreme examples.",
    ],
    "disk": [
        "Free space on the disk holding the run (df -h RUN), or move the run and resume it there.",
        "Keep fewer checkpoints: --max-checkpoints 1 --keep-best 0.",
        "Then continue: llmc resume RUN.",
    ],
    "checkpoint": [
        "Check the run's checkpoints: llmc checkpoints verify RUN.",
        "Continue from an older one: llmc resume RUN --from step-N.",
        "Free disk space if saving failed.",
    ],
    "data": ["Check the data file: llmc validates it before training and names the bad line."],
    "config": ["Fix the setting named in the message; llmc presets show lists the keys."],
    "model": ["Check the model path or hub id, and that the hub is reachable for downloads."],
    "other": [
        "Continue from the saved state: llmc resume RUN.",
        "If it happens again, run with LLMC_DEBUG=1 and report the traceback in failure.txt.",
    ],
}


@dataclass
class Standing:
    """Where the run stood when it failed."""

    step: int = 0
    last_train: dict[str, Any] | None = None  # the last train log line (a StepEnded as a dict)
    last_eval: dict[str, Any] | None = None  # the last evaluation (an EvalEnded as a dict)
    actions: list[dict[str, Any]] = field(default_factory=list)  # the journal's entries


def write_failure_report(
    run_dir: Path, error: BaseException, standing: Standing, checkpoint: Path | None = None
) -> Path | None:
    """Write ``failure.json`` and ``failure.txt`` into ``run_dir``; returns the text report's path.

    Each file is written atomically; when the disk cannot take them (full, failing, read-only)
    neither is left half-written and the report goes to stderr instead (returns None).
    """
    cause = classify(error)
    resume_from = checkpoint if checkpoint is not None and verify(checkpoint).ok else catalog.valid_before(run_dir)[0]
    resume = f"llmc resume {run_dir}" + (f" --from {resume_from.name}" if resume_from else "")
    report: dict[str, Any] = {
        "status": "failed",
        "cause": cause,
        "error": type(error).__name__,
        "message": getattr(error, "message", str(error)),
        "fix": getattr(error, "hint", None),
        "exit_code": error.exit_code if isinstance(error, LlmcError) else 9,
        "time": time.time(),
        "last_step": standing.step,
        "last_train": _metrics(standing.last_train, TRAIN_METRICS),
        "last_eval": _metrics(standing.last_eval, EVAL_METRICS),
        "actions": [
            {k: a.get(k) for k in ("step", "cause", "action", "message", "settings")} for a in standing.actions
        ],
        "checkpoint": str(resume_from) if resume_from else None,
        "resume": resume if resume_from else None,
        "suggestions": [line.replace("RUN", str(run_dir)) for line in SUGGESTIONS.get(cause, SUGGESTIONS["other"])],
    }
    if not isinstance(error, LlmcError):
        report["traceback"] = "".join(traceback.format_exception(error))
    text = run_dir / "failure.txt"
    try:
        write_json(run_dir / "failure.json", report)
        write_text(text, render(report))
    except OSError as exc:
        if not disk_error(exc):
            raise
        (run_dir / "failure.json").unlink(missing_ok=True)  # no report without its text twin
        print(f"llmc: could not write the failure report to {run_dir} ({exc.strerror}); here it is:", file=sys.stderr)
        shown = {k: v for k, v in report.items() if k != "traceback"}  # a traceback belongs in a file
        print(render(shown), file=sys.stderr)
        if "traceback" in report:
            print("(The Python stack is left out here; run again with LLMC_DEBUG=1 to see it.)", file=sys.stderr)
        return None
    return text


def render(report: dict[str, Any]) -> str:
    lines = [
        f"llmc run failed: {report['cause']} ({report['error']}, exit code {report['exit_code']})",
        "",
        report["message"],
    ]
    if report.get("fix"):
        lines += ["", f"Fix: {report['fix']}"]
    lines += ["", f"Last step: {report['last_step']}"]
    for label, key in (("Last train metrics", "last_train"), ("Last eval metrics", "last_eval")):
        if report.get(key):
            lines.append(f"{label}: " + ", ".join(f"{k} {v:.6g}" for k, v in report[key].items()))
    lines += ["", "What llmc tried:"]
    lines += [f"  step {a['step']}: {a['message']}" for a in report["actions"]] or ["  nothing (no recovery applies)"]
    lines += ["", "State to continue from: " + (report["checkpoint"] or "none (no valid checkpoint)")]
    if report.get("resume"):
        lines.append(f"  {report['resume']}")
    lines += ["", "Suggested fixes:"] + [f"  - {s}" for s in report["suggestions"]]
    if report.get("traceback"):
        lines += ["", "Traceback:", report["traceback"].rstrip()]
    return "\n".join(lines) + "\n"


def _metrics(record: dict[str, Any] | None, keys: tuple[str, ...]) -> dict[str, float] | None:
    if not record:
        return None
    return {k: record[k] for k in keys if isinstance(record.get(k), int | float)}
