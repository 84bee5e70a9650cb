"""The data as training saw it: how many examples were cut at max_length or dropped because no
answer token was left, against the token lengths of the data (finding: truncation)."""

from __future__ import annotations

from llmc_cli.analyze.findings import Finding, Section, clamp


def _length_for(p99: int) -> int:
    """A max_length that keeps 99 % of the examples whole: p99 rounded up to a multiple of 64."""
    return -(-p99 // 64) * 64


def analyze_data(records) -> Section:
    train = ((records.summary or {}).get("data") or {}).get("train") or {}
    lengths = records.data_profile.get("lengths") or {}
    max_length = records.config.get("max_length")
    section = Section("data", "", [], {"lengths": lengths, "max_length": max_length})
    examples = train.get("examples")
    if not examples:  # a live or failed run: no data report yet, only the lengths measured before training
        if lengths.get("p50") and max_length and lengths["p50"] > max_length:
            section.evidence.append(f"token lengths: median {lengths['p50']}, p99 {lengths.get('p99')}")
            section.verdict = f"over half of the examples are longer than max_length {max_length}"
            section.findings.append(Finding(
                "truncation", f"over half of the examples are cut at max_length {max_length}",
                f"median length {lengths['p50']} tokens", f"--max-length {_length_for(int(lengths['p99']))}",
                0.7))  # fmt: skip
        else:
            section.verdict, section.judged = "no data report yet (it is written when the run ends)", False
        return section
    truncated = int(train.get("truncated") or 0)
    dropped = int(train.get("dropped_no_target") or 0) + int(train.get("dropped_too_long") or 0)
    section.figures.update({"examples": examples, "kept": train.get("kept"), "truncated": truncated,
                            "dropped": dropped})  # fmt: skip
    section.evidence.append(f"{examples:,} examples: {train.get('kept', examples):,} trained on, {truncated:,} cut "
                            f"at max_length {max_length} ({dropped:,} of them dropped)")  # fmt: skip
    if lengths:
        section.evidence.append(f"token lengths: median {lengths.get('p50')}, p95 {lengths.get('p95')}, "
                                f"p99 {lengths.get('p99')}, longest {lengths.get('max')}")  # fmt: skip
    share = max(truncated, dropped) / examples  # a dropped example was cut first: it is counted in both
    if share > 0.1 and lengths.get("p99") and max_length and lengths["p99"] > max_length:
        target = _length_for(int(lengths["p99"]))
        section.verdict = f"{share:.0%} of the examples were cut or dropped at max_length {max_length}"
        section.findings.append(Finding(
            "truncation", f"{share:.0%} of the examples lost their end at max_length {max_length}",
            f"{truncated:,} of {examples:,} cut, {dropped:,} of them dropped with no answer left; "
            f"p99 length {lengths['p99']} tokens",
            f"--max-length {target} (keeps 99% whole; costs memory: llmc train --dry-run shows the estimate)",
            clamp(0.4 + share)))  # fmt: skip
    else:
        section.verdict = "the examples fit: nothing worth raising max_length for"
    return section
