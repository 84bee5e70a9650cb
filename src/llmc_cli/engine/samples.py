"""Sample answers while training: what the model now says to a few fixed validation prompts.

The prompts are the first ``samples`` validation examples: an example's tokens before its first
target token (the chat template's assistant header included, so it is exactly what generation
continues from), and the decoded target span as the reference. Plain text (every token a target)
has no prompt and no reference: its first ``TEXT_PROMPT`` tokens (at most half) are the prompt,
and the samples are shown unscored. A prompt that leaves no room for ``sample_tokens`` within the
model's context keeps its last tokens (:func:`fit_prompt`).
At each sampling point the model answers them greedily in one batch (left-padded; the stock SDPA
attention is used while generating, since ``llmc_packed`` takes neither a KV cache nor padding),
up to ``sample_tokens`` new tokens or the end-of-sequence token.

When: before training and at the end of a run (the "before" and "after"), and between them at
evaluations while sampling has taken at most ``BUDGET_SHARE`` of the training time so far (on a
CPU one answer of 128 tokens costs about as much as a few training steps of a small model); with
``sample_every`` N, every N steps regardless. The time is counted with evaluation's
(``eval_time_s``) and reported apart in the summary.

Generation never changes training: the model goes back to train mode, the attention
implementation back to what it was, and every random generator to its state before (greedy
decoding draws nothing, and the generators are forked anyway), so a run with sampling on has
the same losses and adapter as the run with it off (``tests/integration/test_samples.py``).

Scores (:mod:`llmc_cli.engine.answers`) go with the ``SamplesGenerated`` event to
``metrics.jsonl``, the trackers and the summary; the texts to ``samples.jsonl``.
"""

from __future__ import annotations

import time
from contextlib import nullcontext
from dataclasses import dataclass

import torch

from llmc_cli.engine.answers import score
from llmc_cli.events import EventBus, SamplesGenerated

PACKED = "llmc_packed"
TEXT_PROMPT = 32  # tokens of a plain-text example given as its prompt
BUDGET_SHARE = 0.1  # of the training time so far, for the default sampling between start and end


@dataclass(frozen=True)
class Prompt:
    ids: list[int]
    prompt: str
    reference: str


def pick_prompts(val, tokenizer, count: int) -> list[Prompt]:
    """The first ``count`` validation examples that have a prompt and a target (none for plain text)."""
    if count <= 0 or len(val) == 0:
        return []
    picked: list[Prompt] = []
    for example in val.members:
        ids, mask = val.reader.example(int(example))
        targets = mask.nonzero()[0]
        if len(targets) == 0 or len(ids) < 2:
            continue
        first = int(targets[0])
        if first <= 1 and mask[1:].all():  # plain text: its opening as the prompt, nothing to score against
            cut = max(1, min(TEXT_PROMPT, len(ids) // 2))
            prompt_ids = [int(t) for t in ids[:cut]]
            picked.append(Prompt(prompt_ids, tokenizer.decode(prompt_ids, skip_special_tokens=True), ""))
        else:
            end = first
            while end < len(mask) and mask[end]:
                end += 1  # the first answer span; a multi-turn example's later turns are not the reference
            prompt_ids = [int(t) for t in ids[:first]]
            picked.append(
                Prompt(
                    prompt_ids,
                    tokenizer.decode(prompt_ids, skip_special_tokens=True),
                    tokenizer.decode([int(t) for t in ids[first:end]], skip_special_tokens=True),
                )
            )
        if len(picked) == count:
            break
    return picked


class Sampler:
    """Generates the sample answers at the points the loop asks for, and emits them."""

    def __init__(self, session, bus: EventBus, prompts: list[Prompt]) -> None:
        self.s, self.bus, self.prompts = session, bus, prompts
        training = session.config.training
        self.every = training.sample_every
        self.max_tokens = training.sample_tokens
        self.pattern = training.answer_pattern
        self.time_s = 0.0
        self.first: SamplesGenerated | None = None
        self.last: SamplesGenerated | None = None
        self.earlier: dict | None = None  # a resumed run's first sampling, from its metrics.jsonl

    @property
    def enabled(self) -> bool:
        return bool(self.prompts) and self.every != 0

    def due(self, step: int, evaluated: bool, train_time_s: float, final: bool = False) -> bool:
        """Before training and at the end; between, at evaluations within the time budget by
        default, or every ``sample_every`` steps when set; never twice at one step."""
        if not self.enabled or (self.last is not None and self.last.step == step):
            return False
        if step == 0 or final:
            return True
        if self.every is not None:
            return step % self.every == 0
        return evaluated and self.time_s <= BUDGET_SHARE * train_time_s

    def summary(self) -> dict | None:
        """The first and last sampling's scores (before and after training, in a fresh run) and the time spent."""
        if self.first is None or self.last is None:
            return None
        first = self.earlier or self.first.scores()
        return {"prompts": len(self.prompts), "first": first, "last": self.last.scores(),
                "time_s": self.time_s}  # fmt: skip

    def resumed(self, run_dir) -> None:
        """Keep the run's first sampling (before training) for the summary of a resumed session."""
        from llmc_cli.engine.record import by_step

        self.earlier = next(iter(by_step(run_dir, "samples").values()), None)

    def __call__(self, step: int) -> SamplesGenerated:
        started = time.perf_counter()
        outputs = self.generate([p.ids for p in self.prompts])
        duration = time.perf_counter() - started
        self.time_s += duration
        scores = score(outputs, [p.reference for p in self.prompts], self.pattern)
        overlap = scores.overlap or [None] * len(outputs)
        event = SamplesGenerated(
            step=step,
            exact_match=scores.exact_match,
            format_adherence=scores.format_adherence,
            scored=scores.scored,
            duration_s=duration,
            samples=[
                {"prompt": p.prompt, "reference": p.reference, "output": out, "correct": ok, "rouge_l": rouge}
                for p, out, ok, rouge in zip(self.prompts, outputs, scores.correct, overlap, strict=True)
            ],
            rouge_l=scores.rouge_l,
            chrf=scores.chrf,
            text_scored=scores.text_scored,
        )
        if self.first is None:
            self.first = event
        self.last = event
        self.bus.emit(event)
        return event

    @torch.no_grad()
    def generate(self, prompts: list[list[int]]) -> list[str]:
        """Greedy answers to token-id prompts from the model with its current adapter; training state untouched."""
        return generate(self.s.unwrapped(), self.s.tokenizer, prompts, self.max_tokens, self.s.accelerator)


def fit_prompt(ids: list[int], max_tokens: int, context: int | None) -> list[int]:
    """``ids`` cut to its last tokens where it and ``max_tokens`` new ones would not fit in ``context``."""
    if not isinstance(context, int) or len(ids) + max_tokens <= context:
        return list(ids)
    room = max(1, context - max_tokens)
    return list(ids[-room:])


@torch.no_grad()
def generate(model, tokenizer, prompts: list[list[int]], max_tokens: int, accelerator=None) -> list[str]:
    """Greedy continuations of ``prompts`` (token ids), decoded without special tokens.

    The model's mode, attention implementation and every random generator are as before afterwards.
    """
    if not prompts:
        return []
    context = getattr(getattr(model, "config", None), "max_position_embeddings", None)
    prompts = [fit_prompt(ids, max_tokens, context) for ids in prompts]
    was_training = model.training
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    attention = getattr(base.config, "_attn_implementation", None)
    device = next(model.parameters()).device
    devices = [device.index or 0] if device.type == "cuda" else []
    eos = tokenizer.eos_token_id
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
    width = max(len(ids) for ids in prompts)
    input_ids = torch.tensor([[pad] * (width - len(ids)) + list(ids) for ids in prompts], device=device)
    mask = torch.tensor([[0] * (width - len(ids)) + [1] * len(ids) for ids in prompts], device=device)
    model.eval()
    try:
        if attention == PACKED:
            base.set_attn_implementation("sdpa")
        with torch.random.fork_rng(devices=devices), accelerator.autocast() if accelerator else nullcontext():
            made = model.generate(
                input_ids=input_ids,
                attention_mask=mask,
                max_new_tokens=max_tokens,
                do_sample=False,
                eos_token_id=eos,
                pad_token_id=pad,
                use_cache=True,
            )
        outputs = []
        for row in made[:, width:].tolist():
            if eos is not None and eos in row:
                row = row[: row.index(eos)]
            outputs.append(tokenizer.decode(row, skip_special_tokens=True).strip())
    finally:
        if attention == PACKED:
            base.set_attn_implementation(PACKED)
        model.train(was_training)
    return outputs
