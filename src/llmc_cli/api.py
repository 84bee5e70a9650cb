"""The Python API: ``FineTuner(data_path, model="auto", preset="quality").train()``.

It composes the engine with what watches a run: the engine trains and keeps the run's record;
this layer attaches the trackers, issue detectors and system sampler the config asks for,
and the caller's own subscribers (``llmc train`` attaches its dashboard here).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from llmc_cli.engine.plan import RunPlan, plan_run, user_layers
from llmc_cli.engine.resume import ResumeTarget, find_target, plan_resume
from llmc_cli.engine.rundir import start_run
from llmc_cli.events import EventBus, Subscriber
from llmc_cli.faults import Faults


class FineTuner:
    """Fine-tune a causal LM with LoRA and write a run directory.

    Args:
        data_path: Training data (.jsonl, .json, .csv, .parquet).
        model: Local folder, hub id, family alias or "auto" (default when None).
        preset: "highspeed", "quality" (default when None) or "bestaccuracy".
        config_file: An ``llmc.toml`` to layer under the arguments.
        env_file: A ``.env`` file to read (None to skip).
        demo: Use the bundled demo data and a locally built model.
        faults: Faults to inject (reliability tests); default: those in ``LLMC_FAULTS``, if any.
        **overrides: Any config key (``lr=1e-4``, ``max_steps=30``, ``lora_r=8`` ...).

    Example:
        >>> run_dir = FineTuner("data.jsonl", model="./tiny-llama", preset="highspeed", max_steps=30).train()
    """

    def __init__(
        self,
        data_path: str | Path | None = None,
        model: str | None = None,
        preset: str | None = None,
        *,
        config_file: str | Path | None = None,
        env_file: str | Path | None = ".env",
        demo: bool = False,
        faults: Faults | None = None,
        **overrides: Any,
    ) -> None:
        flags = {"data": data_path, "model": model, "preset": preset, **overrides}
        self._layers = user_layers(
            flags,
            config_file=Path(config_file) if config_file is not None else None,
            env_file=Path(env_file) if env_file is not None else None,
            demo=demo,
        )
        self._subscribers: list[Subscriber] = []
        self._plan: RunPlan | None = None
        self._resume: ResumeTarget | None = None
        self._faults = faults
        self._run_dir: Path | None = None

    @classmethod
    def resume(
        cls, run: str | Path, checkpoint: str = "latest", output: str | Path = "runs", faults: Faults | None = None
    ) -> FineTuner:
        """Continue a run from a checkpoint, with the run's own config.

        Args:
            run: ``run-42``, ``42``, a run name under ``output``, or a run directory.
            checkpoint: ``latest``, ``best``, ``step-N`` or a checkpoint directory. One that
                fails verification is refused and the newest older valid one is used.
            output: Where runs given by name live.

        Raises:
            CheckpointError: no run, no checkpoint, or none that verifies.
        """
        tuner = cls.__new__(cls)
        tuner._layers, tuner._subscribers, tuner._faults = [], [], faults
        tuner._resume = find_target(run, checkpoint, Path(output))
        tuner._plan = plan_resume(tuner._resume)
        return tuner

    @classmethod
    def from_study(
        cls,
        study: str | Path,
        data_path: str | Path | None = None,
        model: str | None = None,
        preset: str | None = None,
        *,
        storage: str | None = None,
        config_file: str | Path | None = None,
        env_file: str | Path | None = ".env",
        faults: Faults | None = None,
        **overrides: Any,
    ) -> FineTuner:
        """A full run with the best trial of an ``llmc tune`` study: the study's data, model, preset,
        config file and limit with the trial's values (searched and derived) on top, without the
        study's per-trial step budget. Arguments and overrides replace what the study used.

        Args:
            study: The study's name (under ``output``, default ``runs``) or its folder.
            storage: The Optuna RDB URL the study lives in, if not its folder's journal.

        Raises:
            ConfigError: no such study, or no complete trial in it.
        """
        from llmc_cli.tune.best import find_best

        best = find_best(study, Path(overrides.get("output") or "runs"), storage)
        tuner = cls.__new__(cls)
        flags = {"data": data_path, "model": model, "preset": preset, **overrides}
        tuner._layers = best.layers(
            flags,
            config_file=Path(config_file) if config_file is not None else None,
            env_file=Path(env_file) if env_file is not None else None,
        )
        tuner._subscribers, tuner._plan, tuner._resume, tuner._faults = [], None, None, faults
        return tuner

    @property
    def resume_target(self) -> ResumeTarget | None:
        """The run and checkpoint a resumed tuner continues from (None for a new run)."""
        return self._resume

    def subscribe(self, subscriber: Subscriber) -> FineTuner:
        """Receive every event of the run (called from the event thread)."""
        self._subscribers.append(subscriber)
        return self

    def plan(self) -> RunPlan:
        """Resolve config, validate data, locate the model, estimate memory and (``optimize_memory``)
        fit the micro-batch to it, without loading weights. A resumed run keeps its own plan."""
        if self._plan is None:
            from llmc_cli.engine.fit import fit_to_machine

            self._plan = fit_to_machine(plan_run(self._layers))
        return self._plan

    def dry_run(self) -> dict:
        """What a run would do, without loading weights or training: the resolved config with
        the source of each value, data, model and adapter sizes, precision, steps and disk."""
        from llmc_cli.engine.dryrun import dry_run

        return dry_run(self.plan())

    def prepare(self, progress=None, warn=None):
        """Tokenise the data into the cache (or find it there) without loading the model's weights.

        Args:
            progress: ``progress(stage, done, total, elapsed_s)``, called every few seconds.
            warn: ``warn(message)`` for what the user should know (truncated examples ...).

        Returns:
            The :class:`~llmc_cli.data.dataset.Rows` a run with this config trains on; its
            ``cache_path``, ``reused`` and ``fingerprint`` say where and whether it was built.
        """
        from llmc_cli.engine.dataprep import open_tokenizer, prepare_rows

        plan = self._plan or plan_run(self._layers)  # batch fitting does not change the prepared data
        tokenizer, _ = open_tokenizer(plan)
        return prepare_rows(plan, tokenizer, progress=progress, warn=warn)

    def train(self, stop=None) -> Path:
        """Run training to the end and return the run directory.

        ``stop`` (a :class:`~llmc_cli.engine.interrupt.StopRequest`) lets the caller end the run
        at the next step boundary from a subscriber, as ``llmc tune`` prunes a trial: a checkpoint
        is saved and RunInterrupted raised with the reason given.

        Raises:
            LlmcError: bad config, data or model (before a run directory exists), or a failure
                during training (its failure report named by ``error.report``); RunInterrupted
                after SIGINT/SIGTERM (a checkpoint is saved; ``FineTuner.resume(run_dir)`` continues).
        """
        from llmc_cli.engine.run import train
        from llmc_cli.models.kind import check_causal, load_config
        from llmc_cli.monitor.attach import observe
        from llmc_cli.monitor.reporters import check_installed

        plan = self.plan()
        config = plan.resolved.config
        check_installed(config.run.report_to)  # before a run directory exists
        faults = self._faults if self._faults is not None else Faults.from_env()
        if self._resume is None:  # the wrong kind of model is refused before a run directory exists
            check_causal(load_config(plan.source.location), plan.source.location)
        run_dir = self._resume.run_dir if self._resume is not None else start_run(plan)
        self._run_dir = run_dir
        bus = EventBus()
        for subscriber in self._subscribers:
            bus.subscribe(subscriber)
        tags = {"llmc.family": plan.source.family.name, "llmc.model": plan.source.location}
        with observe(bus, run_dir, config, tags):
            return train(plan, run_dir, bus, resume=self._resume, faults=faults, stop=stop)

    def generate(self, prompts: list[str], max_tokens: int = 256) -> list[str]:
        """Greedy answers of this tuner's trained run (``final/``: the base model plus the adapter,
        with the chat template the run trained with) to user ``prompts``, one string each.

        The base model is loaded in fp32 from where the adapter says it came from; nothing is
        downloaded that training did not use.

        Raises:
            ConfigError: no run yet (call ``train()`` first), or a run without a final adapter.
        """
        import json

        from peft import PeftModel
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from llmc_cli.data.templates import Rendered, chat_prompt
        from llmc_cli.data.tokenize import tokenize_texts
        from llmc_cli.engine.samples import generate
        from llmc_cli.errors import ConfigError

        run_dir = self._run_dir or (self._resume.run_dir if self._resume is not None else None)
        adapter = run_dir / "final" if run_dir is not None else None
        if adapter is None or not (adapter / "adapter_config.json").is_file():
            raise ConfigError(
                "This FineTuner has no trained adapter to answer with yet.",
                hint="Call train() first (or FineTuner.resume(run_dir).train() for an unfinished run).",
            )
        tokenizer = AutoTokenizer.from_pretrained(adapter)
        base = json.loads((adapter / "adapter_config.json").read_text())["base_model_name_or_path"]
        model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), adapter)
        texts = [Rendered(chat_prompt(tokenizer, prompt), ()) for prompt in prompts]
        ids = [pair[0] for pair in tokenize_texts(tokenizer, texts)]
        return generate(model, tokenizer, ids, max_tokens)

    def analyze(self):
        """Diagnose this tuner's run (the one ``train()`` wrote, finished or not, or the run
        ``resume()`` continues) from its records: the same result as ``llmc analyze RUN --json``
        (``.to_json()``), with ``.findings`` ranked, the top recommendation first.

        Raises:
            ConfigError: no run yet (call ``train()`` first), or a run with nothing recorded.
        """
        from llmc_cli.analyze import analyze_run
        from llmc_cli.errors import ConfigError

        run_dir = self._run_dir or (self._resume.run_dir if self._resume is not None else None)
        if run_dir is None:
            raise ConfigError("This FineTuner has no run to analyse yet.", hint="Call train() first, or use "
                              "llmc_cli.analyze_run(run_dir) for a run on disk.")  # fmt: skip
        return analyze_run(run_dir)
