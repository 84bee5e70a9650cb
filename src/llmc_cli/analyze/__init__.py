"""``llmc analyze``: read a run's records and say what went wrong and what to change."""

from llmc_cli.analyze.report import Analysis, analyze_run

__all__ = ["Analysis", "analyze_run"]
