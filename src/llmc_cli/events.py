"""Typed events and the queue that carries them from the training loop to its consumers.

The loop only calls :meth:`EventBus.emit`, which enqueues and returns at once; one
dispatcher thread hands each event, in order, to every subscriber. A subscriber that
raises is reported once on stderr and dropped; training never stops for a display.
"""

from __future__ import annotations

import dataclasses
import queue
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Event:
    """Base class; ``time`` is the wall-clock time of emission."""

    time: float = field(default_factory=time.time, kw_only=True)

    @property
    def kind(self) -> str:
        return type(self).__name__

    def to_dict(self) -> dict[str, Any]:
        return {"event": self.kind, **dataclasses.asdict(self)}


@dataclass(frozen=True)
class RunStarted(Event):
    run_dir: str
    model: str
    family: str
    precision: str
    device: str
    total_steps: int
    steps_per_epoch: int
    train_examples: int
    val_examples: int
    train_rows: int
    trainable_params: int
    total_params: int


@dataclass(frozen=True)
class DataProgress(Event):
    """Preparing data: ``done`` of ``total`` records through ``stage`` after ``elapsed_s``."""

    stage: str
    done: int
    total: int
    elapsed_s: float

    @property
    def eta_s(self) -> float | None:
        rate = self.done / self.elapsed_s if self.elapsed_s > 0 else 0.0
        return (self.total - self.done) / rate if rate > 0 else None


@dataclass(frozen=True)
class StepEnded(Event):
    step: int
    total_steps: int
    epoch: float
    loss: float
    lr: float
    grad_norm: float
    tokens: int  # non-padding tokens in this logging interval
    target_tokens: int
    examples: int
    tokens_per_s: float
    examples_per_s: float
    elapsed_s: float
    eta_s: float
    update_ratio: float | None = None  # |parameter update| / |parameters| of the last step
    clip_threshold: float | None = None  # gradient-norm clipping threshold of the last step


@dataclass(frozen=True)
class EvalEnded(Event):
    step: int
    eval_loss: float
    perplexity: float
    tokens: int
    duration_s: float


@dataclass(frozen=True)
class SamplesGenerated(Event):
    """Greedy answers to the fixed validation prompts (engine/samples.py) and their scores."""

    step: int
    exact_match: float | None  # None: no reference carries a final answer
    format_adherence: float | None
    scored: int
    duration_s: float
    samples: list[dict[str, Any]]  # prompt, reference, output, correct, rouge_l
    rouge_l: float | None = None  # mean ROUGE-L F1 where references are free text (engine/answers.py)
    chrf: float | None = None  # corpus chrF (0-100) of the same samples
    text_scored: int = 0  # samples with a free-text reference

    def scores(self) -> dict[str, Any]:
        """The event without its texts (what metrics.jsonl and events.jsonl keep)."""
        return {key: value for key, value in self.to_dict().items() if key != "samples"}


@dataclass(frozen=True)
class CheckpointSaved(Event):
    step: int
    path: str
    reason: str  # "interval", "time", "epoch", "interrupt" or "final"
    size_bytes: int
    duration_s: float
    removed: list[str]  # checkpoints deleted by rotation after this one was complete


@dataclass(frozen=True)
class RunResumed(Event):
    step: int
    checkpoint: str
    skipped: list[str]  # checkpoints refused, with the reason


@dataclass(frozen=True)
class TrainingWarning(Event):
    code: str
    message: str
    suggestion: str | None = None  # what to change, when there is a clear fix
    evidence: dict[str, Any] = field(default_factory=dict)  # the numbers behind the warning
    step: int | None = None


@dataclass(frozen=True)
class Adjustment(Event):
    """A change the engine made on its own: recovery from a failure, or a training control."""

    step: int
    cause: str  # oom-gpu, oom-cpu, non-finite, spike, data, checkpoint, plateau, instability, early-stopping
    action: str  # halved-micro-batch, gradient-checkpointing, skipped-batch, rolled-back, lowered-lr, ...
    message: str
    settings: dict[str, Any] = field(default_factory=dict)  # micro-batch, accumulation, LR scale ... after it


@dataclass(frozen=True)
class RolledBack(Event):
    """Training went back to the state after ``step``; later records of the abandoned steps are void."""

    step: int
    from_step: int
    source: str  # a checkpoint path, or "start of this session"


@dataclass(frozen=True)
class SystemSampled(Event):
    cpu_percent: float  # this process, 100 = one core busy
    rss_mb: float  # this process
    ram_percent: float  # the whole machine
    gpus: list[dict[str, float]]  # per device: util_percent, memory_used_mb, memory_total_mb
    torch_allocated_mb: list[float] = field(default_factory=list)  # per CUDA device, by PyTorch's allocator


@dataclass(frozen=True)
class RunEnded(Event):
    status: str  # "completed", "interrupted" or "failed"
    run_dir: str
    adapter_dir: str | None
    summary: dict[str, Any]


Subscriber = Callable[[Event], None]
_STOP = object()


class EventBus:
    """A queue between the loop (producer) and subscribers (consumers).

    ``RunEnded`` is the last event subscribers see: what is emitted after it (the system
    sampler's last tick, from its own thread, before it is stopped) is dropped, so a tracker
    never gets a metric after it finished its run."""

    def __init__(self) -> None:
        self._queue: queue.Queue[Any] = queue.Queue()
        self._subscribers: list[Subscriber] = []
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._ended = False

    def subscribe(self, subscriber: Subscriber) -> None:
        """Add a consumer; it receives the events emitted from now on."""
        with self._lock:
            self._subscribers.append(subscriber)

    def unsubscribe(self, subscriber: Subscriber) -> None:
        """Remove a consumer (no error if it is not subscribed, or was detached for failing)."""
        with self._lock:
            if subscriber in self._subscribers:
                self._subscribers.remove(subscriber)

    def start(self) -> EventBus:
        if self._thread is None:
            self._thread = threading.Thread(target=self._dispatch, name="llmc-events", daemon=True)
            self._thread.start()
        return self

    def emit(self, event: Event) -> None:
        """Enqueue an event; never blocks the caller on a consumer."""
        with self._lock:
            if self._ended:
                return
            self._ended = isinstance(event, RunEnded)
            self._queue.put(event)

    def flush(self) -> None:
        """Wait until every event emitted so far has been handed to the subscribers."""
        if self._thread is not None:
            self._queue.join()

    def close(self) -> None:
        """Deliver everything queued, then stop the dispatcher."""
        if self._thread is not None:
            self._queue.put(_STOP)
            self._thread.join()
            self._thread = None

    def __enter__(self) -> EventBus:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _dispatch(self) -> None:
        while (event := self._queue.get()) is not _STOP:
            with self._lock:
                subscribers = list(self._subscribers)
            for subscriber in subscribers:
                try:
                    subscriber(event)
                except Exception as exc:  # a broken consumer must not stop training
                    self.unsubscribe(subscriber)
                    print(f"llmc: event consumer {subscriber!r} failed and was detached: {exc}", file=sys.stderr)
            self._queue.task_done()
        self._queue.task_done()
