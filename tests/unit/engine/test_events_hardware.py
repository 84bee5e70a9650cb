import subprocess
import sys
import threading

import pytest

from llmc_cli.events import EvalEnded, EventBus, RunEnded, SystemSampled, TrainingWarning
from llmc_cli.optimize.hardware import Hardware, choose_precision, cpu_has_native_bf16


def test_bus_delivers_in_order_and_survives_a_broken_consumer(capsys):
    seen, threads = [], set()

    def broken(event):
        raise RuntimeError("display crashed")

    def good(event):
        seen.append(event.step)
        threads.add(threading.current_thread().name)

    bus = EventBus()
    bus.subscribe(broken)
    bus.subscribe(good)
    with bus:
        for step in range(50):
            bus.emit(EvalEnded(step=step, eval_loss=1.0, perplexity=2.7, tokens=1, duration_s=0.0))
    assert seen == list(range(50))
    assert threads == {"llmc-events"}  # consumers never run on the training thread
    assert "failed and was detached: display crashed" in capsys.readouterr().err


def test_run_ended_is_the_last_event_subscribers_see():
    from llmc_cli.monitor.system import SystemSampler

    seen = []
    bus = EventBus()
    bus.subscribe(lambda event: seen.append(type(event).__name__))
    with bus, SystemSampler(bus, interval_s=0.001):  # the sampler stops only after the run's end
        bus.emit(EvalEnded(step=1, eval_loss=1.0, perplexity=2.7, tokens=1, duration_s=0.0))
        bus.emit(RunEnded("completed", "runs/run-1", None, {}))
        bus.emit(SystemSampled(cpu_percent=1.0, rss_mb=1.0, ram_percent=1.0, gpus=[]))
        threading.Event().wait(0.05)  # ticks of the sampler after RunEnded
    assert seen[-1] == "RunEnded" and "EvalEnded" in seen


def test_event_to_dict_names_the_kind():
    record = TrainingWarning("data", "3 examples truncated").to_dict()
    assert record["event"] == "TrainingWarning" and record["message"] == "3 examples truncated"


def test_cpu_bf16_detection_reads_the_flags(tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text("processor: 0\nflags\t\t: fpu sse avx2 avx512f\n")
    assert not cpu_has_native_bf16(info)
    info.write_text("processor: 0\nflags\t\t: fpu avx2 avx512f avx512_bf16\n")
    assert cpu_has_native_bf16(info)
    assert not cpu_has_native_bf16(tmp_path / "missing")


def hw(device="cpu", cpu_bf16=False, gpu_bf16=False):
    return Hardware(device, "X", 24.0 if device == "cuda" else 0.0, gpu_bf16, cpu_bf16, 2, 24.0)


def test_precision_policy():
    assert choose_precision("auto", True, hw(cpu_bf16=False))[0] == "fp32"
    assert choose_precision("auto", True, hw(cpu_bf16=True))[0] == "bf16"
    assert choose_precision("auto", True, hw("cuda", gpu_bf16=True))[0] == "bf16"
    assert choose_precision("auto", True, hw("cuda", gpu_bf16=False))[0] == "fp16"
    assert choose_precision("bf16", False, hw(cpu_bf16=True))[0] == "fp32"
    assert choose_precision("bf16", True, hw())[0] == "bf16"


def test_cli_import_does_not_import_torch():
    code = "import sys, llmc_cli.cli.app; print('torch' in sys.modules, 'transformers' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]


@pytest.mark.parametrize(
    ("steps", "tokens_per_step", "val_tokens", "interval"),
    [
        (100, 4000, 4000, 10),  # small validation set: ten evaluations
        (30, 4000, 80000, 30),  # validation set as large as the run: only step 0 and the end
        (38, 1500, 45000, 38),
        (1000, 4000, 80000, 100),
        (40, 4000, 40000, 20),  # 0.25 x 3 x 40 x 4000 / 40000 = 3 affordable: steps 0, 20, 40
        (1, 10, 10**6, 1),
    ],
)
def test_default_eval_interval_keeps_evaluation_within_a_quarter_of_training(
    steps, tokens_per_step, val_tokens, interval
):
    from llmc_cli.engine.session import default_eval_interval

    assert default_eval_interval(steps, tokens_per_step, val_tokens) == interval
