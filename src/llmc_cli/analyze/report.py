"""One run's analysis: every section, and the findings ranked into recommendations."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llmc_cli.analyze.convergence import analyze_convergence
from llmc_cli.analyze.data import analyze_data
from llmc_cli.analyze.efficiency import analyze_efficiency
from llmc_cli.analyze.findings import KINDS, Finding, Section, rank
from llmc_cli.analyze.lr import analyze_lr
from llmc_cli.analyze.overfitting import analyze_overfitting
from llmc_cli.analyze.records import RunRecords, load_run
from llmc_cli.analyze.stability import analyze_stability

SECTIONS = (analyze_convergence, analyze_overfitting, analyze_lr, analyze_stability, analyze_data, analyze_efficiency)


@dataclass(frozen=True)
class Analysis:
    records: RunRecords
    sections: list[Section]
    findings: list[Finding]  # ranked: the first is the top recommendation

    def to_json(self) -> dict[str, Any]:
        r = self.records
        evals = [e["eval_loss"] for e in r.evals]
        return {
            "run": str(r.run_dir),
            "status": r.status,
            "steps": r.steps[-1]["step"] if r.steps else 0,
            "total_steps": r.total_steps,
            "final_train_loss": r.steps[-1].get("loss") if r.steps else None,
            "best_eval_loss": min(evals) if evals else None,
            "sections": [s.to_json() for s in self.sections],
            "findings": [f.to_json() for f in self.findings],
            "cannot_judge": [s.verdict for s in self.sections if not s.judged],
            "kinds": KINDS,
        }


def analyze_run(run: str | Path, output: Path = Path("runs")) -> Analysis:
    """Analyse a run (a path, a name under ``output`` or a number); reads records only.

    Raises:
        ConfigError: no such run, not a run directory, or nothing recorded yet.
    """
    records = load_run(run, output)
    sections = [analyze(records) for analyze in SECTIONS]
    findings = rank([f for s in sections for f in s.findings])
    if any(f.kind in ("lr_too_high", "overfitting") for f in findings):
        # Falling loss at the end is not a reason to train longer when the rate or the epochs are the problem.
        findings = [f for f in findings if f.kind != "too_few_steps"]
    return Analysis(records, sections, findings)
