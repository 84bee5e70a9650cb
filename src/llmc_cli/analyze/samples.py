"""``llmc analyze RUN --samples``: how the sample answers changed over a run, and their scores.

Reads ``samples.jsonl`` (one line per prompt and sampling step, engine/samples.py) and the
``samples`` records of ``metrics.jsonl`` (the scores; a resume's voided steps dropped as for the
other records). Shows the score at every sampling step and, for the first, middle and last
sampling, each prompt's answer next to its reference.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llmc_cli.durable import parse_jsonl
from llmc_cli.engine.record import SAMPLES, by_step

SCORE_KEYS = ("step", "exact_match", "format_adherence", "scored", "rouge_l", "chrf", "text_scored", "duration_s")


@dataclass(frozen=True)
class SampleHistory:
    scores: list[dict[str, Any]]  # per sampling step: step, exact_match, format_adherence, scored, rouge_l, chrf
    answers: dict[int, list[dict[str, Any]]]  # step -> the samples (prompt, reference, output, correct)

    def shown_steps(self) -> list[int]:
        """The first, middle and last sampling steps (fewer when there were fewer)."""
        steps = sorted(self.answers)
        if len(steps) <= 3:
            return steps
        return [steps[0], steps[len(steps) // 2], steps[-1]]

    def to_json(self) -> dict[str, Any]:
        return {"scores": self.scores, "answers": {str(s): self.answers[s] for s in self.shown_steps()}}


def read_samples(run_dir: Path) -> SampleHistory | None:
    """The run's sample history; None when it logged no samples (sampling off, or plain-text data)."""
    path = run_dir / SAMPLES
    if not path.is_file():
        return None
    scores = list(by_step(run_dir, "samples").values())
    kept = {record["step"] for record in scores}
    answers: dict[int, list[dict[str, Any]]] = {}
    for line in parse_jsonl(path.read_text(encoding="utf-8", errors="replace").splitlines()):
        if line.get("step") in kept:  # steps a resume or rollback voided are not shown
            answers.setdefault(line["step"], []).append(line)
    prompts = min((len(lines) for lines in answers.values()), default=0)
    answers = {step: lines[-prompts:] for step, lines in answers.items()}  # a step sampled again: its last try
    return SampleHistory(
        [{k: r.get(k) for k in SCORE_KEYS} for r in scores],
        answers,
    )


def render_samples(console, history: SampleHistory | None, width: int = 100) -> None:
    from rich.table import Table

    if history is None:
        console.print("No sample answers in this run (sampling was off: --samples, or the data has no prompts).")
        return
    scores = Table(title="Sample scores by step")
    text = any(r.get("rouge_l") is not None for r in history.scores)
    answers = any(r.get("scored") for r in history.scores) or not text
    columns = ["step"] + (["exact match", "format", "scored"] if answers else [])
    columns += ["ROUGE-L", "chrF", "free text"] if text else []
    for column in [*columns, "seconds"]:
        scores.add_column(column, justify="right")
    for r in history.scores:
        row = [str(r["step"])]
        if answers:
            row += [_share(r["exact_match"]), _share(r["format_adherence"]), str(r["scored"])]
        if text:
            row += [_number(r.get("rouge_l"), ".2f"), _number(r.get("chrf"), ".1f"), str(r.get("text_scored") or 0)]
        scores.add_row(*row, f"{r.get('duration_s') or 0:.1f}")
    console.print(scores)
    for step in history.shown_steps():
        table = Table(title=f"Answers at step {step}", show_lines=True)
        for column in ("prompt", "reference", "answer", "score"):
            table.add_column(column, overflow="fold")
        for sample in history.answers[step]:
            ok = {True: "yes", False: "no", None: "-"}[sample.get("correct")]
            if sample.get("rouge_l") is not None:
                ok = f"ROUGE-L {sample['rouge_l']:.2f}"
            table.add_row(*(_cut(sample.get(k, ""), width) for k in ("prompt", "reference", "output")), ok)
        console.print(table)


def _share(value: float | None) -> str:
    return "-" if value is None else f"{value:.0%}"


def _number(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def _cut(text: str, width: int) -> str:
    flat = " ".join(str(text).split())
    return flat if len(flat) <= width else flat[: width - 1] + "…"
