"""The engine in-process on a tiny Llama: run directory, metrics, adapter round trip."""

import json

import pytest
import torch

from llmc_cli import FineTuner
from llmc_cli.engine.export import save_adapter
from llmc_cli.engine.interrupt import StopRequest
from llmc_cli.engine.loop import Loop
from llmc_cli.engine.session import open_session
from llmc_cli.events import EvalEnded, EventBus, RunStarted, StepEnded
from llmc_cli.models.loading import DTYPES

SAMPLE_OPTS = dict(preset="highspeed", max_length=256, batch_size=4, grad_accum=2, env_file=None)


def test_finetuner_writes_a_complete_run(tmp_path, tiny_model_dir, gsm8k_train, monkeypatch):
    from llmc_cli.optimize import throughput

    monkeypatch.setattr(throughput, "PEAK_PROBE_FROM_S", 0.0)
    events = []
    tuner = FineTuner(
        gsm8k_train,
        model=str(tiny_model_dir),
        output=tmp_path / "runs",
        max_steps=6,
        limit=120,
        lr=3e-3,
        target_modules="all-linear",
        **SAMPLE_OPTS,
    )
    run_dir = tuner.subscribe(events.append).train()

    assert run_dir == tmp_path / "runs" / "run-1"
    for name in (
        "config.json",
        "metrics.jsonl",
        "events.jsonl",
        "summary.json",
        "final/adapter_model.safetensors",
        "final/adapter_config.json",
        "final/tokenizer.json",
    ):
        assert (run_dir / name).is_file(), name
    config = json.loads((run_dir / "config.json").read_text())
    assert config["sources"]["max_steps"] == "cli"
    assert config["sources"]["scheduler"] == "preset:tinyllama/highspeed/small"
    metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics if m["type"] == "train"] == [1, 2, 3, 4, 5, 6]
    evals = [m for m in metrics if m["type"] == "eval"]
    assert evals[0]["step"] == 0 and evals[-1]["step"] == 6
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["steps"] == 6
    assert summary["matmul_peak_flops_per_s"] > 1e8  # measured after training (from 60 s of it; 0 here)
    assert summary["final_eval_loss"] < summary["initial_eval_loss"]
    kinds = [type(e) for e in events]
    assert kinds.index(RunStarted) < kinds.index(StepEnded)
    assert kinds[-1].__name__ == "RunEnded"
    # The run's analysis, from the API, reads what the run recorded (6 steps: too few to judge much).
    analysis = tuner.analyze()
    assert analysis.records.run_dir == run_dir and analysis.to_json()["status"] == "completed"
    assert analysis.to_json()["steps"] == 6
    assert [s.name for s in analysis.sections][0] == "convergence" and not analysis.sections[0].judged
    # A second run never reuses the directory.
    assert (
        FineTuner(
            gsm8k_train, model=str(tiny_model_dir), output=tmp_path / "runs", max_steps=1, limit=40, **SAMPLE_OPTS
        )
        .train()
        .name
        == "run-2"
    )


def test_saved_adapter_reproduces_the_trained_models_logits(tmp_path, tiny_model_dir, gsm8k_train):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    tuner = FineTuner(
        gsm8k_train,
        model=str(tiny_model_dir),
        max_steps=3,
        limit=60,
        lr=1e-2,
        lora_dropout=0.1,
        target_modules="all-linear",
        **SAMPLE_OPTS,
    )
    plan = tuner.plan()
    with EventBus() as bus:
        session = open_session(plan, tmp_path, bus)
        Loop(session, bus, StopRequest()).fit()
        adapter = save_adapter(session, tmp_path / "final")
    ids = torch.tensor([session.rows.val[0].input_ids])
    trained = session.unwrapped().eval()
    # The base as the session loaded it: bf16 where the CPU has native bf16 math, else fp32.
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=DTYPES[session.precision])
    reloaded = PeftModel.from_pretrained(base, adapter).eval()
    with torch.no_grad(), session.accelerator.autocast():  # the same mixed precision for both
        expected = trained(input_ids=ids).logits.float()
        got = reloaded(input_ids=ids).logits.float()
    # fp32: equal to rounding. bf16: the training session's attention pads packed examples to 64
    # tokens on CPU (optimize/attention.py) where the reloaded model runs stock SDPA, so a few
    # logits land one bf16 step apart (0.1 % of them, 0.002, in a run of this test).
    atol = 1e-5 if session.precision == "fp32" else 4e-3
    torch.testing.assert_close(got, expected, rtol=0, atol=atol)
    # The adapter changed the model far more than that (the comparison above is not trivially true).
    with torch.no_grad(), session.accelerator.autocast(), reloaded.disable_adapter():
        assert (reloaded(input_ids=ids).logits.float() - expected).abs().max() > 10 * atol


def test_a_callers_stop_request_saves_a_checkpoint_and_reports(tmp_path, tiny_model_dir, gsm8k_train):
    """The engine's entry point takes a StopRequest the caller triggers (a tuner pruning a trial)."""
    from llmc_cli.engine.run import train
    from llmc_cli.errors import RunInterrupted

    stop = StopRequest()

    def stop_after_first_step(event):
        if isinstance(event, StepEnded):
            stop.request("pruning")

    tuner = FineTuner(gsm8k_train, model=str(tiny_model_dir), max_steps=50, limit=80, **SAMPLE_OPTS)
    with EventBus() as bus:
        bus.subscribe(stop_after_first_step)
        with pytest.raises(RunInterrupted, match="stopped by pruning"):
            train(tuner.plan(), tmp_path, bus, stop=stop)
    (checkpoint,) = (tmp_path / "checkpoints").iterdir()
    assert (checkpoint / "adapter_model.safetensors").is_file() and (checkpoint / "manifest.json").is_file()
    assert json.loads((tmp_path / "summary.json").read_text())["status"] == "interrupted"


def test_eval_uses_the_validation_file_when_given(tmp_path, tiny_model_dir):
    from pathlib import Path

    fixtures = Path(__file__).resolve().parents[1] / "fixtures" / "gsm8k"
    events = []
    FineTuner(
        fixtures / "train_sample.jsonl",
        model=str(tiny_model_dir),
        val_data=fixtures / "test_sample.jsonl",
        output=tmp_path,
        max_steps=1,
        limit=20,
        **SAMPLE_OPTS,
    ).subscribe(events.append).train()
    started = next(e for e in events if isinstance(e, RunStarted))
    assert (started.train_examples, started.val_examples) == (20, 60)
    assert any(isinstance(e, EvalEnded) for e in events)


def test_a_run_without_validation_data_finishes_without_an_eval_loss(tmp_path, tiny_model_dir, gsm8k_train):
    """Fewer than 10 examples and no --val-data: nothing is held out, so nothing is evaluated."""
    events = []
    run_dir = (
        FineTuner(gsm8k_train, model=str(tiny_model_dir), output=tmp_path, max_steps=2, limit=8, **SAMPLE_OPTS)
        .subscribe(events.append)
        .train()
    )
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["final_eval_loss"] is None
    assert not any(isinstance(e, EvalEnded) for e in events)
    assert (run_dir / "final" / "adapter_model.safetensors").is_file()


def test_tensorboard_events_match_the_metrics_log(tmp_path, tiny_model_dir, gsm8k_train):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from llmc_cli.engine.record import by_step

    run_dir = FineTuner(
        gsm8k_train, model=str(tiny_model_dir), output=tmp_path, max_steps=4, limit=40, **SAMPLE_OPTS
    ).train()
    accumulator = EventAccumulator(str(run_dir / "tb"))
    accumulator.Reload()
    scalars = accumulator.Tags()["scalars"]
    for tag in ("train/loss", "train/learning_rate", "train/grad_norm", "train/update_to_weight_ratio", "eval/loss"):
        assert tag in scalars, tag
    logged = {s: r["loss"] for s, r in by_step(run_dir).items()}
    written = {e.step: e.value for e in accumulator.Scalars("train/loss")}
    assert written.keys() == logged.keys() == {1, 2, 3, 4}
    assert all(abs(written[s] - logged[s]) < 1e-6 * abs(logged[s]) for s in logged)
    ratios = [e.value for e in accumulator.Scalars("train/update_to_weight_ratio")]
    assert all(0 < r < 1 for r in ratios)


def test_monitoring_off_and_no_tensorboard(tmp_path, tiny_model_dir, gsm8k_train):
    events = []
    run_dir = (
        FineTuner(
            gsm8k_train,
            model=str(tiny_model_dir),
            output=tmp_path,
            max_steps=2,
            limit=40,
            enable_monitoring=False,
            report_to="none",
            **SAMPLE_OPTS,
        )
        .subscribe(events.append)
        .train()
    )
    assert not (run_dir / "tb").exists()
    assert not [e for e in events if type(e).__name__ == "SystemSampled"]
