"""Which family and preset fit this machine: ``llmc doctor``'s answer, from traces shipped as data.

Tracing a family's model on fake tensors takes seconds per preset and setting (about a minute for
the whole table), so the traces of each family's model (its shape in ``config/families.py``) at
each preset are computed once and kept in ``family_traces.json`` beside this module, with the
torch and transformers versions they were made with; ``llmc doctor`` only does arithmetic on
them. Regenerate after changing a preset's LoRA targets or length, or a family's model:

    python -m llmc_cli.optimize.families
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from functools import cache
from pathlib import Path
from typing import Any

from llmc_cli.config.families import FAMILIES, family_config
from llmc_cli.config.presets import load_presets
from llmc_cli.config.schema import PRESET_NAMES, LoraSettings
from llmc_cli.optimize.batch import fit_batch
from llmc_cli.optimize.memory import MemoryModel, ModelFacts, model_facts

TABLE_FILE = Path(__file__).with_name("family_traces.json")
PRECISIONS = ("fp32", "bf16")
LORA_KEYS = ("lora_r", "lora_alpha", "lora_dropout", "target_modules")


@dataclass(frozen=True)
class FamilyFit:
    family: str
    preset: str
    fits: bool
    micro_batch: int
    gradient_checkpointing: bool
    total_bytes: int


def preset_plan(family: str, preset: str) -> tuple[LoraSettings, dict[str, Any]]:
    """The preset's adapter and its values (for the medium dataset bucket)."""
    _, values = load_presets().layer(family, preset, None)
    return LoraSettings(**{key: values[key] for key in LORA_KEYS}), values


def build_table() -> dict[str, Any]:
    """Trace every family x preset x precision x checkpointing (a minute or two)."""
    import torch
    import transformers

    from llmc_cli.models.trace import trace_step

    table: dict[str, Any] = {
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "facts": {},
        "traces": {},
    }
    for name, family in FAMILIES.items():
        if not family.shape:
            continue
        config = family_config(family)
        for preset in PRESET_NAMES:
            lora, values = preset_plan(name, preset)
            table["facts"][f"{name}/{preset}"] = asdict(model_facts(config, lora))
            for precision in PRECISIONS:
                for checkpointing in (False, True):
                    trace = trace_step(
                        config,
                        lora,
                        precision=precision,
                        seq_len=values["max_length"],
                        gradient_checkpointing=checkpointing,
                        fast_dropout=True,
                    )
                    key = _key(name, preset, precision, checkpointing)
                    table["traces"][key] = {"fixed": trace.fixed, "per_sequence": trace.per_sequence}
    return table


@cache
def load_table(path: Path = TABLE_FILE) -> dict[str, Any]:
    return json.loads(path.read_text())


def family_fits(
    device: str, precision: str, budget_bytes: int, budget_rule: str, quantize: str = "none"
) -> list[FamilyFit]:
    """For each family (smallest first) and preset (fastest first): the largest micro-batch that fits
    (checkpointing only if needed). With ``quantize`` the linear weights are 4/8-bit (QLoRA)."""
    from llmc_cli.models.trace import StepTrace

    table = load_table()
    traces = table["traces"]
    table_precision = precision if precision in PRECISIONS else "bf16"
    found = []
    for name, family in sorted(FAMILIES.items(), key=lambda item: item[1].billions):
        if not family.shape:
            continue
        for preset in PRESET_NAMES:
            lora, values = preset_plan(name, preset)
            known = {
                mode: StepTrace(values["max_length"], **traces[_key(name, preset, table_precision, mode)])
                for mode in (False, True)
            }
            memory = MemoryModel(
                None,  # nothing is traced: the table holds the traces
                ModelFacts(**table["facts"][f"{name}/{preset}"]),
                lora,
                device=device,
                precision=precision,
                quantize=quantize,
                seq_len=values["max_length"],
                traces=known,
            )
            effective = values["batch_size"] * values["grad_accum"]
            ceiling = values["batch_size"] if device != "cuda" else effective
            fit = fit_batch(
                memory, budget_bytes, budget_rule, effective=effective, ceiling=ceiling, checkpointing="auto"
            )
            found.append(
                FamilyFit(name, preset, fit.fits, fit.micro_batch, fit.gradient_checkpointing, fit.estimate.total_bytes)
            )
    return found


def _key(family: str, preset: str, precision: str, checkpointing: bool) -> str:
    return f"{family}/{preset}/{precision}/{'checkpointed' if checkpointing else 'plain'}"


if __name__ == "__main__":
    TABLE_FILE.write_text(json.dumps(build_table(), indent=1, sort_keys=True) + "\n")
    print(f"wrote {TABLE_FILE}")
