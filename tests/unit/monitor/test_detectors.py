"""Every detector fires on a synthetic curve that shows its problem, and clean curves raise nothing."""

import math
import random

import pytest

from llmc_cli.events import EvalEnded, StepEnded, SystemSampled, TrainingWarning
from llmc_cli.monitor.detectors import IssueMonitor


class Bus:
    def __init__(self):
        self.events = []

    def emit(self, event):
        self.events.append(event)


def step(i, loss, grad=0.8, lr=2e-4, speed=1000.0):
    return StepEnded(
        step=i, total_steps=1000, epoch=i / 100, loss=loss, lr=lr, grad_norm=grad, tokens=1000, target_tokens=600,
        examples=8, tokens_per_s=speed, examples_per_s=8.0, elapsed_s=float(i), eta_s=1.0,
    )  # fmt: skip


def run(steps, evals=(), rss=()):
    bus = Bus()
    monitor = IssueMonitor(bus)
    evals = dict(evals)
    for event in steps:
        monitor(event)
        if event.step in evals:
            monitor(EvalEnded(step=event.step, eval_loss=evals[event.step], perplexity=1.0, tokens=1, duration_s=0.1))
    for value in rss:
        monitor(SystemSampled(cpu_percent=100.0, rss_mb=value, ram_percent=50.0, gpus=[]))
    return [e.code for e in bus.events if isinstance(e, TrainingWarning)]


def clean_curve(seed, n=400, noise=0.04):
    """A healthy fine-tuning curve: power-law decay (still improving), noisy steps, steady speed."""
    rng = random.Random(seed)
    return [
        step(i, 2.0 + 8.0 / math.sqrt(1 + i / 20) + rng.gauss(0, noise),
             grad=abs(rng.gauss(0.8, 0.15)) + 0.05, speed=1000 + rng.gauss(0, 60))
        for i in range(1, n + 1)
    ]  # fmt: skip


@pytest.mark.parametrize("seed,noise", [(seed, noise) for seed in range(4) for noise in (0.04, 0.15)])
def test_clean_runs_raise_nothing(seed, noise):
    steps = clean_curve(seed, noise=noise)
    evals = {s: 2.3 + 8.0 / math.sqrt(1 + s / 20) for s in range(0, 401, 40)}
    rss = [1400 + random.Random(seed).gauss(0, 10) for _ in range(100)]
    assert run(steps, evals, rss) == []


def test_nan_loss():
    steps = clean_curve(0, n=30) + [step(31, float("nan"))]
    assert "nan_loss" in run(steps)


def test_loss_spike_is_caught_once_per_episode():
    steps = clean_curve(1, n=100)
    steps += [step(100 + k, steps[-1].loss * 10) for k in range(1, 6)]  # x10 for five steps
    assert run(steps).count("loss_spike") == 1


def test_exploding_and_vanishing_gradients():
    exploding = clean_curve(2, n=60) + [step(61, 3.0, grad=80.0)]
    assert "exploding_gradients" in run(exploding)
    vanishing = [step(i, 5.0 - i * 0.001, grad=1e-9) for i in range(1, 40)]
    assert "vanishing_gradients" in run(vanishing)


def test_plateau_after_progress():
    rng = random.Random(3)
    steps = [step(i, 8.0 - 0.1 * i + rng.gauss(0, 0.02)) for i in range(1, 51)]  # falls from 8 to 3
    steps += [step(i, 3.0 + rng.gauss(0, 0.1)) for i in range(51, 300)]  # then flat, noisy
    assert "plateau" in run(steps)


def test_learning_rate_too_high_oscillates():
    rng = random.Random(4)
    steps = [step(i, 4.0 + (0.6 if i % 2 else -0.6) + rng.gauss(0, 0.2), lr=5e-2) for i in range(1, 80)]
    assert "lr_too_high" in run(steps)


def test_learning_rate_too_low_is_flat_from_the_start():
    rng = random.Random(5)
    steps = [step(i, 6.0 - 1e-5 * i + rng.gauss(0, 0.002), lr=1e-7) for i in range(1, 80)]
    codes = run(steps)
    assert "lr_too_low" in codes and "plateau" not in codes


def test_overfitting_when_eval_rises_while_train_falls():
    steps = clean_curve(6, n=300)
    evals = {0: 10.0, 50: 4.0, 100: 3.0, 150: 3.2, 200: 3.5}
    assert "overfitting" in run(steps, evals)


def test_throughput_drop():
    steps = clean_curve(7, n=40) + [step(41, 2.5, speed=300.0)]
    assert "throughput_drop" in run(steps)


def test_memory_creep():
    assert "memory_creep" in run(clean_curve(8, n=20), rss=[1000 + 10 * i for i in range(60)])
    # Issue 13: SmolLM2's RSS rose 891 -> 1,162 MB over loading and its first steps, a one-off.
    assert "memory_creep" not in run(clean_curve(8, n=5), rss=[900 + 10 * i for i in range(60)])
