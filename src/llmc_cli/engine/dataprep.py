"""A run's data, prepared: its tokenizer, and its rows from the data cache.

Used by the training session and by ``llmc prepare`` / ``FineTuner.prepare`` alike, so a
prepared cache is exactly the one a run with the same config reads.
"""

from __future__ import annotations

from collections.abc import Callable

from llmc_cli.data.dataset import Rows
from llmc_cli.data.prepare import Progress, prepare
from llmc_cli.data.templates import ensure_chat_template
from llmc_cli.engine.plan import RunPlan
from llmc_cli.errors import DataError
from llmc_cli.models.loading import load_tokenizer
from llmc_cli.paths import data_cache_dir


def open_tokenizer(plan: RunPlan):
    """The run's tokenizer with a pad token and a chat template; returns it and the template's origin."""
    tokenizer = load_tokenizer(plan.source)
    return tokenizer, ensure_chat_template(tokenizer, plan.source.family)


def prepare_rows(
    plan: RunPlan,
    tokenizer,
    progress: Progress | None = None,
    warn: Callable[[str], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
):
    """The run's rows (tokenised once into the cache, then reused); notes go to ``warn``.

    Raises:
        DataError: nothing is left to train on after tokenisation.
    """
    cfg = plan.resolved.config
    data = cfg.data
    rows: Rows = prepare(
        data,
        tokenizer,
        plan.data,
        cfg.training.seed,
        data_cache_dir(data.data_cache),
        workers=data.data_workers,
        progress=progress,
        should_stop=should_stop,
    )
    if warn is not None:
        for note in rows.notes + rows.train_report.warnings(data.max_length):
            warn(note)
    if len(rows.train) == 0:
        raise DataError(
            f"No training example is left after tokenisation ({rows.train_report.examples} read).",
            hint="Raise --max-length, use --overlong truncate, or check that responses are not empty.",
        )
    return rows
