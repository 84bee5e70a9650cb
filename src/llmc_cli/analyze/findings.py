"""What an analysis says: sections with evidence and a verdict, and findings with their fix.

A finding's ``kind`` is one of :data:`KINDS` (the documented vocabulary ``--json`` uses); its
``fix`` is the exact ``llmc train`` override to try; ``confidence`` (0-1) says how clear the
evidence is and ``effect`` (0-1) how much fixing it is expected to matter. Recommendations are the
findings ranked by ``effect * confidence``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

KINDS: dict[str, str] = {
    "lr_too_high": "the learning rate is too high: the loss rose, spiked or needed recovery",
    "lr_too_low": "the learning rate is too low: the loss barely moved and updates were tiny",
    "overfitting": "the eval loss turned upwards while the train loss kept falling",
    "instability": "spikes, skipped steps or rollbacks during training",
    "too_few_steps": "the losses were still falling when the run ended",
    "plateau": "the loss stopped improving long before the end: steps that bought nothing",
    "underfitting": "the train loss fell little and flattened at a high level",
    "slow_throughput": "time went to something other than training steps, or throughput fell",
    "memory_headroom": "memory was far from full (room for a larger micro-batch) or nearly full",
    "truncation": "many examples were longer than max_length: cut, or dropped with no answer left",
}
# How much fixing each kind is expected to matter, before confidence.
EFFECT = {"lr_too_high": 0.95, "overfitting": 0.85, "lr_too_low": 0.85, "instability": 0.75, "too_few_steps": 0.65,
          "truncation": 0.6, "plateau": 0.55, "underfitting": 0.5, "slow_throughput": 0.3,
          "memory_headroom": 0.2}  # fmt: skip
PATHOLOGIES = ("lr_too_high", "lr_too_low", "overfitting", "instability", "too_few_steps", "plateau", "underfitting")
# Adjustment and failure causes of a diverged loss (engine/recovery.DIVERGED and the failure report's
# "divergence"); the learning rate's section judges them, the stability section leaves them to it.
DIVERGED_CAUSES = ("diverged", "eval-diverged", "divergence")


@dataclass(frozen=True)
class Finding:
    kind: str
    summary: str  # what is wrong, in one line
    evidence: str  # the numbers and steps behind it
    fix: str  # the llmc train override or preset to use
    confidence: float

    @property
    def score(self) -> float:
        return EFFECT[self.kind] * self.confidence

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "confidence": round(self.confidence, 2), "effect": EFFECT[self.kind]}


@dataclass
class Section:
    name: str
    verdict: str
    evidence: list[str] = field(default_factory=list)
    figures: dict[str, Any] = field(default_factory=dict)
    findings: list[Finding] = field(default_factory=list)
    judged: bool = True  # False: the records cannot answer this section's question

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "verdict": self.verdict, "judged": self.judged, "evidence": self.evidence,
                "figures": self.figures, "findings": [f.to_json() for f in self.findings]}  # fmt: skip


def rank(findings: list[Finding]) -> list[Finding]:
    """Highest expected effect first; one finding per kind (the most confident)."""
    best: dict[str, Finding] = {}
    for finding in findings:
        if finding.kind not in best or finding.confidence > best[finding.kind].confidence:
            best[finding.kind] = finding
    return sorted(best.values(), key=lambda f: f.score, reverse=True)


def clamp(value: float, low: float = 0.0, high: float = 1.0) -> float:
    return max(low, min(high, value))


def fmt_lr(value: float) -> str:
    """A learning rate as a flag value: 3e-04 -> 0.0003, 1.5e-05 -> 1.5e-05."""
    return f"{value:.2g}"
