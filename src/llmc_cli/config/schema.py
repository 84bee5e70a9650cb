"""The run configuration: one pydantic model per concern, composed into a frozen RunConfig.

Every key has one flat name (``lora_r``, ``lr``, ``checkpoint_interval``) used alike by
CLI flags, ``llmc.toml``, ``LLMC_*`` environment variables and ``config.json``; names are
unique across sections so the flat and nested views map one to one. Field descriptions
feed ``--help``, ``llmc presets show`` and ``llmc.toml.example``.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

PresetName = Literal["highspeed", "quality", "bestaccuracy"]
PRESET_NAMES: tuple[str, ...] = ("highspeed", "quality", "bestaccuracy")
DataFormat = Literal["auto", "alpaca", "prompt_completion", "qa", "chat", "text"]
Quantize = Literal["none", "8bit", "4bit"]
Precision = Literal["auto", "bf16", "fp16", "fp32"]
Overlong = Literal["truncate", "drop"]


# Keys of the specification whose feature does not exist yet: any value but the default is refused
# (never accepted and silently ignored), with when it will work.
NOT_YET = {
    "compile_model": "torch.compile did not pay off on CPU (benchmarks/compile.py, a 4-layer model in bf16 with "
    "packed examples: 12 steps took 33-288 s against 15-16 s without it, compiling anew as the examples' layout "
    "changed; at best a step was 4 % faster) and is not measured on GPUs yet",
    "enable_hyperparameter_tuning": "`llmc train` does not tune; `llmc tune` does (then `llmc train "
    "--from-study tune-N`)",
    "enable_distributed_training": "multi-process training from llmc arrives in a later release",
}


def _refuse_unavailable(cls: type[BaseModel], value: Any, info: ValidationInfo) -> Any:
    if value != cls.model_fields[info.field_name].default:
        raise ValueError(f"not available yet: {NOT_YET[info.field_name]}. Remove the setting (or use its default)")
    return value


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)


class ModelSettings(_Section):
    """Which model to adapt and how to hold it in memory."""

    model: str = Field(
        "auto",
        description="Local Hugging Face directory, hub id, family alias (tinyllama, phi, mistral, qwen) "
        "or 'auto' (picked from the detected hardware).",
    )
    quantize: Quantize = Field("none", description="Load the frozen base weights in 8 or 4 bits (QLoRA, bitsandbytes).")
    precision: Precision = Field(
        "auto",
        description="Compute precision; 'auto' picks bf16 where the GPU or CPU has native bf16 "
        "math, fp16 with loss scaling on older GPUs, fp32 otherwise.",
    )
    enable_mixed_precision: bool = Field(True, description="Set false to force fp32 everywhere.")
    enable_gradient_checkpointing: bool | Literal["auto"] = Field(
        "auto",
        description="Recompute activations in backward to save memory; 'auto' turns it on for "
        "models of 1B parameters or more.",
    )
    compile_model: bool = Field(
        False,
        description="torch.compile the model. Not available (true is refused): on CPU it measured slower, "
        "compile time aside; a later release turns it on where it measures faster, compile time included.",
    )
    optimize_memory: bool = Field(
        True,
        description="Fit the run to the memory it may use: the largest micro-batch that fits (effective batch kept), "
        "gradient checkpointing only when needed; and free memory between phases.",
    )
    optimize_for_data: bool = Field(
        True,
        description="Fit the preset to the data: max_length from the examples' p99 token length, enough optimizer "
        "steps, warm-up, LoRA rank/dropout and weight decay by the data's size (rules in optimize/rules.toml); "
        "values you set are kept.",
    )
    memory_budget: float | None = Field(
        None,
        gt=0,
        description="GiB of memory a run may plan for (default: 90% of available RAM, 85% in bf16/fp16 on CPU, "
        "or 90% of free GPU memory, within any cgroup limit).",
    )

    _not_yet = field_validator("compile_model")(_refuse_unavailable)


class DataSettings(_Section):
    """Where the examples come from and how they become token sequences."""

    data: Path | None = Field(None, description="Training data: .jsonl, .json, .csv or .parquet.")
    val_data: Path | None = Field(None, description="Validation data; without it a split is held out from --data.")
    format: DataFormat = Field(
        "auto",
        description="Example format: alpaca, prompt_completion, qa, chat (messages or ShareGPT "
        "conversations), text; 'auto' detects it from the fields.",
    )
    max_length: int = Field(1024, ge=16, le=131072, description="Longest token sequence trained on.")
    overlong: Overlong = Field("truncate", description="What to do with examples longer than max_length.")
    limit: int | None = Field(None, ge=1, description="Use only the first N training examples.")
    train_on_prompt: bool = Field(
        False, description="Also compute the loss on prompt tokens (default: response tokens only)."
    )
    packing: bool = Field(
        True,
        description="Pack several examples into each sequence, with attention kept within each example.",
    )
    data_cache: Path | None = Field(
        None, description="Where prepared (tokenised) data is kept and reused; default: ~/.cache/llmc/data."
    )
    data_workers: int | None = Field(
        None, ge=1, le=256, description="Processes that prepare large data files; default: one per CPU core."
    )


class LoraSettings(_Section):
    """The low-rank adapter trained on top of the frozen model."""

    lora_r: int = Field(16, ge=1, le=1024, description="LoRA rank.")
    lora_alpha: float = Field(32.0, gt=0, description="LoRA scaling numerator (scale = alpha / r).")
    lora_dropout: float = Field(0.05, ge=0.0, lt=1.0, description="Dropout on the LoRA input.")
    target_modules: str | tuple[str, ...] = Field(
        "all-linear",
        description="Modules to adapt: 'all-linear' or a comma-separated list such as q_proj,v_proj.",
    )

    @field_validator("target_modules", mode="before")
    @classmethod
    def _split_modules(cls, value: Any) -> Any:
        if isinstance(value, str) and value.strip() != "all-linear":
            value = [part for part in (p.strip() for p in value.split(",")) if part]
        if isinstance(value, list | tuple):
            if not value:
                raise ValueError("name at least one module, or use all-linear")
            return tuple(value)
        return value.strip() if isinstance(value, str) else value


def _split_names(value: Any) -> Any:
    """'a,b' -> ('a', 'b'); 'none' or '' -> ()."""
    if isinstance(value, str):
        value = [part for part in (p.strip() for p in value.split(",")) if part and part != "none"]
    return tuple(value) if isinstance(value, list | tuple) else value


class TrainingSettings(_Section):
    """The optimisation schedule."""

    epochs: float = Field(3.0, gt=0, le=1000, description="Passes over the training data.")
    max_steps: int | None = Field(None, ge=1, description="Stop after this many optimizer steps (overrides epochs).")
    lr: float = Field(2e-4, gt=0, le=10.0, description="Peak learning rate (AdamW).")
    batch_size: int = Field(4, ge=1, le=4096, description="Sequences per batch (the loader's).")
    grad_accum: int = Field(4, ge=1, le=4096, description="Batches per optimizer step (accumulated).")
    micro_batch: int | None = Field(
        None,
        ge=1,
        le=4096,
        description="Most rows per forward pass: each batch is cut into micro-batches this large (default: "
        "batch_size). With optimize_memory it is chosen to fit memory; the rows of each step stay the same.",
    )
    warmup_ratio: float = Field(0.03, ge=0.0, le=0.5, description="Fraction of steps spent warming up.")
    scheduler: Literal["cosine", "linear", "constant"] = Field(
        "cosine", description="Learning-rate decay after warmup."
    )
    weight_decay: float = Field(0.0, ge=0.0, le=1.0, description="AdamW weight decay.")
    max_grad_norm: float = Field(1.0, gt=0, description="Clip the gradient norm to at most this value.")
    adaptive_clipping: bool = Field(
        True,
        description="Clip at a running percentile of the last 100 gradient norms (never above max_grad_norm); "
        "the threshold is logged every step.",
    )
    clip_percentile: float = Field(95.0, ge=50.0, le=100.0, description="Percentile used by adaptive clipping.")
    adaptive_lr: bool = Field(
        True,
        description="Lower the learning rate, on top of the schedule, when the eval loss stops improving, the "
        "loss oscillates without decreasing, or a gradient norm explodes.",
    )
    lr_plateau_patience: int = Field(3, ge=1, description="Evaluations without improvement before lowering the LR.")
    lr_plateau_factor: float = Field(
        0.5, gt=0.0, lt=1.0, description="Factor applied to the LR on a plateau, an oscillation or an explosion."
    )
    lr_plateau_cooldown: int = Field(1, ge=0, description="Evaluations to wait after lowering the LR.")
    min_lr_ratio: float = Field(
        0.05,
        gt=0.0,
        le=1.0,
        description="The adaptive-LR reductions never take the LR below this fraction of the plan "
        "(rollbacks may, within max_rollbacks).",
    )
    eval_every: int | None = Field(
        None,
        ge=1,
        description="Evaluate every N steps (default: ten times per run, fewer when evaluating would cost more "
        "than a quarter of the training compute).",
    )
    samples: int = Field(
        4,
        ge=0,
        le=64,
        description="Validation prompts answered (greedy) at each sampling point, logged to samples.jsonl "
        "and scored against their references; 0 turns sampling off.",
    )
    sample_every: int | None = Field(
        None,
        ge=0,
        description="Generate the sample answers every N steps (default: at each evaluation; 0: off).",
    )
    sample_tokens: int = Field(128, ge=1, le=4096, description="Most tokens generated for one sample answer.")
    answer_pattern: str = Field(
        r"####\s*([-+]?[\d,]*\.?\d+)",
        description="Regular expression whose first group is a text's final answer (default: GSM8K's "
        "'#### 42'); samples score exact match and format adherence where the references carry one.",
    )

    @field_validator("answer_pattern")
    @classmethod
    def _one_group(cls, value: str) -> str:
        import re

        try:
            groups = re.compile(value).groups
        except re.error as exc:
            raise ValueError(f"not a regular expression ({exc})") from None
        if groups < 1:
            raise ValueError("needs a group around the answer, as in '####\\s*(\\S+)'")
        return value

    log_every: int = Field(1, ge=1, description="Log metrics every N optimizer steps.")
    seed: int = Field(42, ge=0, description="Seed for data order, dropout and initialisation.")


class RunSettings(_Section):
    """Where results go and the run-level switches of the specification."""

    preset: str = Field(
        "quality",
        description="highspeed, quality or bestaccuracy, or tuned:NAME (a study's best, from llmc tune best --export).",
    )

    output: Path = Field(Path("runs"), description="Folder that holds the run directories.")
    run_name: str | None = Field(
        None, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$", description="Name of the run directory (default run-N)."
    )
    merge: bool = Field(False, description="Also write merged full weights next to the adapter.")
    enable_monitoring: bool = Field(
        True, description="Sample system metrics and watch for training issues (loss spikes, plateaus...)."
    )
    report_to: tuple[Literal["tensorboard", "wandb", "mlflow"], ...] = Field(
        ("tensorboard",),
        description="Trackers besides metrics.jsonl: tensorboard, wandb, mlflow (comma-separated), or none.",
    )
    _report_to = field_validator("report_to", mode="before")(lambda cls, value: _split_names(value))

    checkpoint_interval: int = Field(100, ge=1, description="Save a checkpoint every N optimizer steps.")
    checkpoint_minutes: float | None = Field(
        None, gt=0, description="Also save when this many minutes have passed since the last checkpoint."
    )
    max_checkpoints: int = Field(5, ge=1, description="Newest checkpoints to keep (the best ones are kept too).")
    keep_best_checkpoints: int = Field(1, ge=0, description="Best checkpoints to keep, by checkpoint_metric.")
    checkpoint_metric: Literal["eval_loss", "train_loss"] = Field(
        "eval_loss", description="Metric that ranks checkpoints as best (lower is better)."
    )
    on_checkpoint_error: Literal["continue", "stop"] = Field(
        "continue", description="When a checkpoint cannot be written (a full disk): keep training, or stop."
    )
    enable_early_stopping: bool = Field(
        False, description="Stop when the eval loss stops improving; the best adapter is restored at the end."
    )
    early_stopping_patience: int = Field(5, ge=1, description="Evaluations without improvement before stopping.")
    early_stopping_min_delta: float = Field(
        0.0, ge=0.0, description="Smallest eval-loss decrease that counts as an improvement."
    )
    auto_recovery: bool = Field(
        True,
        description="Recover on its own from out-of-memory (smaller micro-batch, gradient checkpointing) and "
        "divergence (skip, roll back, lower LR); false fails at once with a report.",
    )
    max_rollbacks: int = Field(3, ge=0, description="Rollbacks to the last good state before giving up.")
    max_oom_retries: int = Field(
        8, ge=0, description="Out-of-memory fallbacks before giving up (8 halve a micro-batch of 128 to 1)."
    )
    nan_tolerance: int = Field(3, ge=1, description="Non-finite steps in a row that are skipped before rolling back.")
    spike_threshold: float = Field(
        3.0,
        gt=1.0,
        description="A loss above this multiple of the recent median (and far outside its spread) "
        "is a spike and rolls back.",
    )
    max_skipped_batches: int = Field(10, ge=0, description="Batches recovery may skip in a run.")
    enable_hyperparameter_tuning: bool = Field(
        False, description="Tune before training. Not available (true is refused): tuning is `llmc tune`."
    )
    hyperparameter_trials: int = Field(
        10, ge=1, description="Trials of an `llmc tune` study when --trials is not given."
    )
    enable_distributed_training: bool = Field(
        False,
        description="Train on every local GPU. Not available yet (true is refused): a later release launches "
        "accelerate / torchrun itself.",
    )

    _not_yet = field_validator("enable_hyperparameter_tuning", "enable_distributed_training")(_refuse_unavailable)

    @field_validator("preset")
    @classmethod
    def _known_preset(cls, value: str) -> str:
        if value in PRESET_NAMES or re.fullmatch(r"tuned:[A-Za-z0-9][A-Za-z0-9._-]*", value):
            return value
        names = ", ".join(repr(name) for name in PRESET_NAMES)
        raise ValueError(f"{value!r} is not one of {names}, or tuned:NAME (a preset from llmc tune best --export)")


SECTIONS: dict[str, type[_Section]] = {
    "model": ModelSettings,
    "data": DataSettings,
    "lora": LoraSettings,
    "training": TrainingSettings,
    "run": RunSettings,
}
FIELD_SECTION: dict[str, str] = {name: section for section, cls in SECTIONS.items() for name in cls.model_fields}
# Environment names from the specification, read with and without the LLMC_ prefix.
SPEC_ENV_KEYS: tuple[str, ...] = (
    "enable_monitoring",
    "checkpoint_interval",
    "max_checkpoints",
    "enable_early_stopping",
    "early_stopping_patience",
    "enable_mixed_precision",
    "enable_gradient_checkpointing",
    "optimize_memory",
    "compile_model",
    "enable_hyperparameter_tuning",
    "hyperparameter_trials",
    "enable_distributed_training",
)


class RunConfig(BaseModel):
    """The fully resolved, immutable configuration of one run."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    model: ModelSettings = ModelSettings()
    data: DataSettings = DataSettings()
    lora: LoraSettings = LoraSettings()
    training: TrainingSettings = TrainingSettings()
    run: RunSettings = RunSettings()

    @classmethod
    def from_flat(cls, flat: dict[str, Any]) -> RunConfig:
        """Build from flat keys; unknown keys raise a pydantic ValidationError."""
        nested: dict[str, dict[str, Any]] = {section: {} for section in SECTIONS}
        for key, value in flat.items():
            nested.setdefault(FIELD_SECTION.get(key, "__unknown__"), {})[key] = value
        return cls.model_validate(nested)

    def flat(self) -> dict[str, Any]:
        """All keys in one flat dict of JSON-friendly values."""
        dumped = self.model_dump(mode="json")
        return {key: value for section in SECTIONS for key, value in dumped[section].items()}

    def with_updates(self, **changes: Any) -> RunConfig:
        """A validated copy with some flat keys changed."""
        return RunConfig.from_flat({**self.flat(), **changes})


def describe(key: str) -> str:
    """The description of a flat key, for help texts and generated docs."""
    field = SECTIONS[FIELD_SECTION[key]].model_fields[key]
    return field.description or ""
