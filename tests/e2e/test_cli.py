"""The llmc command as users run it: a subprocess, exit codes, and what it prints."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest


def test_train_gsm8k_done_when(llmc, tmp_path, tiny_model_dir, gsm8k_train):
    """The issue's acceptance command, verbatim."""
    from peft import PeftModel
    from tests.conftest import read_jsonl
    from transformers import AutoModelForCausalLM

    result = llmc(
        "train",
        "--data",
        gsm8k_train,
        "--model",
        tiny_model_dir,
        "--preset",
        "highspeed",
        "--max-steps",
        "30",
        cwd=tmp_path,
        env={"LLMC_SAMPLES": "4", "LLMC_SAMPLE_TOKENS": "32"},  # 4: the default, off elsewhere (tests/conftest.py)
    )
    assert result.returncode == 0, result.stderr + result.stdout
    assert "Traceback" not in result.stderr
    run_dir = tmp_path / "runs" / "run-1"
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["steps"] == 30
    assert summary["final_eval_loss"] < summary["initial_eval_loss"]
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir), run_dir / "final")
    assert any("lora_A" in name for name, _ in model.named_parameters())
    # Not a terminal: one plain line per step, no progress-bar control codes.
    assert "step     30/30" in result.stdout and "\x1b[" not in result.stdout
    # Sample answers before and after training (in between only within their time budget), scored.
    sampled = sorted({line["step"] for line in read_jsonl(run_dir / "samples.jsonl")})
    assert sampled[0] == 0 and sampled[-1] == 30 and "samples step      0  exact match " in result.stdout
    assert summary["samples"]["prompts"] == 4 and summary["samples"]["last"]["step"] == 30
    report = llmc("analyze", "run-1", "--samples", "--no-plots", cwd=tmp_path)
    assert report.returncode == 0 and "Answers at step 30" in report.stdout, report.stderr


def test_failure_reports_then_resume_completes_and_merges(llmc, tmp_path, tiny_model_dir, gsm8k_train):
    """An error with no recovery: exit 9, a report and a checkpoint; `llmc resume` finishes (and merges)."""
    from transformers import AutoModelForCausalLM

    args = ["train", "--data", gsm8k_train, "--model", tiny_model_dir, "--max-steps", "4", "--limit", "40",
            "--max-length", "256", "--checkpoint-interval", "2", "--merge", "--run-name", "merged-run",
            "--report-to", "tensorboard,mlflow,wandb"]  # fmt: skip
    trackers = {"MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}", "WANDB_MODE": "offline"}
    failed = llmc(*args, cwd=tmp_path, env={"LLMC_FAULTS": "error@step=3", **trackers})
    assert failed.returncode == 9 and "Traceback" not in failed.stderr, failed.stderr
    stderr = " ".join(failed.stderr.split())
    assert "Training failed: Training stopped on an error llmc has no recovery for: InjectedError" in stderr
    run_dir = tmp_path / "runs" / "merged-run"
    assert f"Failure report: {run_dir.relative_to(tmp_path)}/failure.txt" in stderr
    report = (run_dir / "failure.txt").read_text()
    assert "State to continue from: runs/merged-run/checkpoints/step-000002" in report and "Traceback" in report

    resumed = llmc("resume", "merged-run", cwd=tmp_path, env=trackers)
    assert resumed.returncode == 0, resumed.stderr
    AutoModelForCausalLM.from_pretrained(run_dir / "merged")
    # The trackers followed the run across the failure and the resume: one MLflow run, one W&B run id.
    from mlflow import MlflowClient
    from tests.conftest import read_jsonl, wandb_history

    client = MlflowClient(tracking_uri=trackers["MLFLOW_TRACKING_URI"])
    (run,) = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert run.info.run_name == "merged-run" and run.info.status == "FINISHED"
    logged = {m.step: m.value for m in client.get_metric_history(run.info.run_id, "train/loss")}
    train = {r["step"]: r["loss"] for r in read_jsonl(run_dir / "metrics.jsonl") if r.get("type") == "train"}
    assert logged == pytest.approx(train) and sorted(logged) == [1, 2, 3, 4]
    rows, ids = wandb_history(run_dir)
    assert len(ids) == 1 and {row["_step"]: row["train/loss"] for row in rows if "train/loss" in row} == train
    again = llmc("train", "--data", gsm8k_train, "--model", tiny_model_dir, "--run-name", "merged-run", cwd=tmp_path)
    assert again.returncode == 2 and "already exists; llmc never overwrites a run" in again.stderr


def test_a_tracker_that_cannot_start_is_a_config_error_before_a_run_exists(llmc, tmp_path, tiny_model_dir, gsm8k_train):
    env = {"MLFLOW_TRACKING_URI": "file:./mlruns", "MLFLOW_ALLOW_FILE_STORE": ""}  # MLflow 3 refuses file stores
    result = llmc("train", "--data", gsm8k_train, "--model", tiny_model_dir, "--report-to", "tensorboard,mlflow",
                  "--max-steps", "1", cwd=tmp_path, env=env)  # fmt: skip
    stderr = " ".join(result.stderr.split())
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert "The mlflow tracker cannot use the tracking store 'file:./mlruns'" in stderr
    assert "MLFLOW_ALLOW_FILE_STORE=true" in stderr and not (tmp_path / "runs").exists()


BAD = '{"question": "What is 1+1?", "answer": "2"}\n{"question": "broken", "answer": \n'
QA = '{"question": "q", "answer": "a"}\n'


def _has_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


@pytest.mark.parametrize(
    ("files", "args", "code", "message"),
    [
        ({"d.jsonl": BAD}, ["--data", "d.jsonl"], 3, "d.jsonl, line 2: invalid JSON"),
        ({"d.jsonl": ""}, ["--data", "d.jsonl"], 3, "Data file d.jsonl is empty."),
        ({}, ["--data", "missing.jsonl"], 3, "Data file missing.jsonl does not exist."),
        ({"d.jsonl": b'{"text": "\xff"}\n'}, ["--data", "d.jsonl"], 3, "not UTF-8 text: byte 0xff on line 1"),
        (
            {"d.jsonl": '{"question": "q", "answer": "a"}\n{"prompt": "p", "completion": "c"}\n'},
            ["--data", "d.jsonl"],
            3,
            "mixes formats",
        ),
        (
            {"d.jsonl": '{"question": "q"}\n'},
            ["--data", "d.jsonl", "--format", "qa"],
            3,
            "line 1: missing field 'answer'",
        ),
        (
            {"d.jsonl": '{"question": "q", "answer": "a"}\n'},
            ["--data", "d.jsonl", "--model", "./no-such-model"],
            4,
            "Model './no-such-model' is not a folder on this machine",
        ),
        (
            {"d.jsonl": '{"question": "q", "answer": "a"}\n'},
            ["--data", "d.jsonl", "--model", "TinyLlama/TinyLlama-1.1B-Chat-v1.0"],
            4,
            "is not on this machine and the Hugging Face Hub cannot be reached",
        ),
        (
            {"d.jsonl": '{"question": "q", "answer": "a"}\n'},
            ["--data", "d.jsonl", "--preset", "fastest"],
            2,
            "'fastest' is not one of 'highspeed', 'quality', 'bestaccuracy'",
        ),
        (
            {"d.jsonl": '{"question": "q", "answer": "a"}\n', "llmc.toml": "lora_rank = 4\n"},
            ["--data", "d.jsonl", "--config", "llmc.toml"],
            2,
            "unknown key 'lora_rank' (did you mean 'lora_r'?)",
        ),
        ({}, ["--max-steps", "3"], 2, "No training data given."),
        *[
            ({"d.jsonl": QA, "m/config.json": json.dumps(config)}, ["--data", "d.jsonl", "--model", "m"], 4, message)
            for config, message in (
                ({"model_type": "bert", "architectures": ["BertForMaskedLM"]}, "is a bidirectional encoder (Bert"),
                ({"model_type": "distilbert"}, "is a 'distilbert' model (distilbert), which has no causal"),
                ({"model_type": "t5", "architectures": ["T5ForConditionalGeneration"]}, "is an encoder-decoder"),
                (
                    {"model_type": "llama", "architectures": ["LlamaForSequenceClassification"]},
                    "its head is not a language-model head",
                ),
            )
        ],
        pytest.param(
            {"d.jsonl": QA, "m/config.json": json.dumps({"model_type": "llama"})},
            ["--data", "d.jsonl", "--model", "m", "--quantize", "4bit"],
            2,
            "--quantize 4bit (QLoRA) needs a CUDA GPU; this machine trains on cpu.",
            marks=pytest.mark.skipif(_has_cuda(), reason="QLoRA is refused only without a CUDA GPU"),
        ),
        (
            {"d.jsonl": '{"question": "q", "answer": "a"}\n', "llmc.toml": "compile_model = true\n"},
            ["--data", "d.jsonl", "--config", "llmc.toml"],
            2,
            "compile_model = True (from toml:llmc.toml): not available yet",
        ),
    ],
)
def test_bad_input_gets_one_message_and_no_traceback(llmc, tmp_path, files, args, code, message):
    for name, content in files.items():
        path = tmp_path / name
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(content) if isinstance(content, bytes) else path.write_text(content)
    result = llmc("train", *args, cwd=tmp_path, timeout=120)
    assert result.returncode == code, result.stderr
    assert message in " ".join(result.stderr.split())
    assert "Traceback" not in result.stderr + result.stdout
    assert not (tmp_path / "runs").is_dir()  # nothing is created for a run that cannot start


def test_hub_failure_is_fast_even_when_online_checks_are_allowed(llmc_command, tmp_path):
    (tmp_path / "d.jsonl").write_text('{"question": "q", "answer": "a"}\n')
    env = {k: v for k, v in os.environ.items() if k != "HF_HUB_OFFLINE"}
    started = time.monotonic()
    result = subprocess.run(
        [*llmc_command, "train", "--data", "d.jsonl", "--model", "qwen"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 4 and "--model ./model" in result.stderr
    assert time.monotonic() - started < 60  # seconds of reachability check, never a hang


def test_sigterm_leaves_a_loadable_adapter(llmc_command, llmc, tmp_path, tiny_model_dir, gsm8k_train):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    proc = subprocess.Popen(
        [
            *llmc_command,
            "train",
            "--data",
            str(gsm8k_train),
            "--model",
            str(tiny_model_dir),
            "--max-steps",
            "500",
            "--limit",
            "200",
            "--max-length",
            "256",
        ],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    for line in proc.stdout:
        if line.startswith("step "):
            proc.send_signal(signal.SIGTERM)
            break
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 130, err
    assert "Training stopped by SIGTERM" in " ".join(err.split()) and "Traceback" not in err
    run_dir = tmp_path / "runs" / "run-1"
    assert json.loads((run_dir / "summary.json").read_text())["status"] == "interrupted"
    (checkpoint,) = (run_dir / "checkpoints").iterdir()  # the interrupt checkpoint, in PEFT format
    assert f"llmc resume {run_dir.relative_to(tmp_path)}" in " ".join(err.split())
    PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir), checkpoint)


def test_demo_runs_with_nothing_downloaded(llmc, tmp_path):
    result = llmc("train", "--demo", "--max-steps", "2", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "training complete" in result.stdout
    assert (tmp_path / "runs" / "run-1" / "final" / "adapter_model.safetensors").is_file()


def test_presets_commands(llmc, tmp_path):
    listed = llmc("presets", "list", cwd=tmp_path)
    assert listed.returncode == 0 and "bestaccuracy" in listed.stdout and "mistral" in listed.stdout
    data = Path(__file__).resolve().parents[1] / "fixtures" / "gsm8k" / "train_sample.jsonl"
    shown = llmc(
        "presets", "show", "highspeed", "--model", "tinyllama", "--data", data, cwd=tmp_path, env={"LLMC_LORA_R": "4"}
    )
    assert shown.returncode == 0, shown.stderr
    rows = {
        line.split("│")[1].strip(): [c.strip() for c in line.split("│")[2:4]]
        for line in shown.stdout.splitlines()
        if line.count("│") >= 4
    }
    assert rows["lr"] == ["0.001", "preset:tinyllama/highspeed/small"]
    assert rows["lora_r"] == ["4", "env:LLMC_LORA_R"]


def test_shipped_bash_completion_completes_commands_and_choices(tmp_path):
    """completions/llmc.bash sourced in a real bash, calling the installed llmc command."""
    script = Path(__file__).resolve().parents[2] / "completions" / "llmc.bash"
    bin_dir = Path(sys.executable).parent  # the venv's bin, where pip put the llmc entry point
    assert (bin_dir / "llmc").is_file(), "llmc is not installed next to this Python"
    probe = (
        f"source {script}; "
        'COMP_WORDS=(llmc train --preset ""); COMP_CWORD=3; _llmc_completion llmc; echo "${COMPREPLY[*]}"; '
        'COMP_WORDS=(llmc pre); COMP_CWORD=1; _llmc_completion llmc; echo "${COMPREPLY[*]}"'
    )
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}", "LLMC_PRESETS": str(tmp_path)}
    result = subprocess.run(["bash", "-c", probe], capture_output=True, text=True, timeout=120, cwd=tmp_path, env=env)
    assert result.stdout.splitlines() == ["highspeed quality bestaccuracy", "prepare presets"], result.stderr


def test_a_tokenizer_larger_than_the_embedding_is_refused_before_training(llmc, tmp_path, tiny_model_dir, gsm8k_train):
    model = tmp_path / "small-vocab"
    model.mkdir()
    for path in tiny_model_dir.iterdir():
        if path.suffix == ".json" and path.name != "config.json":  # the tokenizer files; no weights needed
            (model / path.name).write_bytes(path.read_bytes())
    config = json.loads((tiny_model_dir / "config.json").read_text())
    config["vocab_size"] = 100
    (model / "config.json").write_text(json.dumps(config))
    result = llmc("train", "--data", gsm8k_train, "--model", model, "--limit", "8", cwd=tmp_path, timeout=120)
    assert result.returncode == 4, result.stderr
    said = " ".join(result.stderr.split())
    assert "tokens but the model embeds only 100" in said and "resize_token_embeddings" in said
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    ("output", "message"),
    [
        ("afile", "afile is a file, not a folder"),
        ("afile/runs", "afile is a file, not a folder"),
        ("/proc/llmc-runs", "Cannot create the run folder under --output /proc/llmc-runs"),
    ],
    ids=["file", "under-a-file", "uncreatable"],
)
def test_an_unusable_output_is_refused_before_the_model_loads(llmc, tmp_path, tiny_model_dir, output, message):
    (tmp_path / "afile").write_text("keep me")
    (tmp_path / "d.jsonl").write_text(QA)
    result = llmc("train", "--data", "d.jsonl", "--model", tiny_model_dir, "--output", output, cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert message in " ".join(result.stderr.split()) and "Traceback" not in result.stderr
    assert (tmp_path / "afile").read_text() == "keep me"


def test_prepare_builds_reuses_lists_and_cleans_the_data_cache(llmc, tmp_path, tiny_model_dir):
    cache = tmp_path / "prepared"
    sample = Path(__file__).resolve().parents[1] / "fixtures" / "gsm8k" / "train_sample.jsonl"
    args = ["prepare", "--data", sample, "--model", tiny_model_dir, "--max-length", "256", "--data-cache", cache]
    first = llmc(*args, cwd=tmp_path, timeout=300)
    assert first.returncode == 0, first.stderr + first.stdout
    assert "Prepared data (tokenise): 100%" in first.stdout and f"Prepared {cache}/" in first.stdout
    (key,) = [p.name for p in cache.glob("*/manifest.json") for p in [p.parent]]
    again = llmc(*args, cwd=tmp_path, timeout=300)
    assert again.returncode == 0 and f"Reused {cache / key}" in again.stdout
    listed = llmc("prepare", "--list", "--data-cache", cache, cwd=tmp_path)
    assert key in listed.stdout and "train_sample.jsonl" in listed.stdout
    cleaned = llmc("prepare", "--clean", "--data-cache", cache, cwd=tmp_path)
    assert cleaned.returncode == 0 and "freed" in cleaned.stdout and not (cache / key).exists()
    assert "No prepared data" in llmc("prepare", "--list", "--data-cache", cache, cwd=tmp_path).stdout
    bad = tmp_path / "bad.jsonl.gz"
    bad.write_bytes(b"not gzip at all")
    failed = llmc("prepare", "--data", bad, "--model", tiny_model_dir, "--data-cache", cache, cwd=tmp_path)
    assert failed.returncode == 3 and "bad.jsonl.gz: cannot be read" in " ".join(failed.stderr.split())
    assert "Traceback" not in failed.stderr


def test_doctor_reports_the_machine_and_its_implications_as_text_and_json(llmc, tmp_path):
    text = llmc("doctor", "--output", tmp_path / "runs", cwd=tmp_path, timeout=120)
    assert text.returncode == 0, text.stderr
    assert "This machine" in text.stdout and "What it implies" in text.stdout and "precision" in text.stdout
    result = llmc("doctor", "--json", cwd=tmp_path, timeout=120)
    payload = json.loads(result.stdout)
    assert payload["machine"]["cpu_cores"] >= 1 and payload["machine"]["ram_total_bytes"] > 0
    topics = {item["topic"]: item for item in payload["advice"]}
    assert topics["precision"]["answer"] in ("bf16", "fp16", "fp32") and topics["precision"]["why"]
    assert not payload["machine"]["gpus"] or topics["QLoRA (--quantize 4bit)"]["answer"]
    families = payload["families"]  # every family x preset against this machine's budget
    assert families["budget_bytes"] > 0 and len(families["fits"]) == 12
    largest = topics["largest family and preset that fit"]["answer"]
    fitting = [f for f in families["fits"] if f["fits"]]
    assert (largest == "none of the families") if not fitting else largest.startswith(fitting[-1]["family"])
    assert "Which model fits" in text.stdout and "tinyllama 1.1B" in text.stdout


def test_dry_run_plans_steps_and_checkpoint_size_that_a_real_run_matches(llmc, tmp_path, tiny_model_dir):
    sample = Path(__file__).resolve().parents[1] / "fixtures" / "gsm8k" / "train_sample.jsonl"
    args = ["--data", sample, "--model", tiny_model_dir, "--limit", "80", "--max-length", "128", "--batch-size", "2",
            "--grad-accum", "2", "--epochs", "1", "--checkpoint-interval", "4", "--lora-r", "4"]  # fmt: skip
    before = json.loads(llmc("train", *args, "--dry-run", "--json", cwd=tmp_path).stdout)
    assert before["data"]["prepared"] is False and before["steps"]["exact"] is False
    estimated = before["steps"]["total_steps"]  # from a tokenised sample of the data (all 80 here)
    assert before["config"]["lora_r"] == {"value": 4, "source": "cli"}
    assert before["model"]["trainable_params"] > 0 and not (tmp_path / "runs").exists()
    assert before["time"]["per_step_s"] > 0 and "a sample of the data" in before["time"]["basis"]
    assert llmc("prepare", *args[:-12], "--max-length", "128", "--limit", "80", cwd=tmp_path).returncode == 0
    plan = json.loads(llmc("train", *args, "--dry-run", "--json", cwd=tmp_path).stdout)
    assert plan["data"]["prepared"] is True and plan["steps"]["exact"] is True
    assert abs(estimated - plan["steps"]["total_steps"]) <= 0.2 * plan["steps"]["total_steps"], (estimated, plan)
    memory = plan["memory"]
    assert memory["total_bytes"] == sum(memory["parts"].values()) > memory["parts"]["weights"] > 0
    assert (memory["micro_batch"], memory["seq_len"], memory["approximate"]) == (2, 128, False)
    why = {row["key"]: row for row in plan["why"]}
    assert why["micro_batch"]["value"] == 2 and "fits" in why["micro_batch"]["rule"]  # the user's 2 is a ceiling
    assert plan["config"]["batch_size"] == {"value": 2, "source": "cli"}
    # the prepared data's own token counts: below the upper bound of full rows that are all targets
    assert "prepared data" in plan["time"]["basis"] and 0 < plan["time"]["step_flops"] < before["time"]["step_flops"]
    assert plan["time"]["total_s"] == pytest.approx(plan["time"]["per_step_s"] * plan["steps"]["total_steps"])
    from rich.console import Console

    from llmc_cli.cli.train import show_plan

    console = Console(width=200, record=True, force_terminal=False)
    show_plan(console, plan, as_json=False)  # the tables `--dry-run` prints, from the same plan
    text = console.export_text()
    assert "Configuration (each value and the layer that set it)" in text and "trainable" in text
    assert "estimated peak" in text and "Why (the rule behind each chosen value" in text and "s a step" in text
    result = llmc("train", *args, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    run_dir = tmp_path / "runs" / "run-1"
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["steps"] == plan["steps"]["total_steps"]
    recorded = json.loads((run_dir / "config.json").read_text())
    assert recorded["memory"]["total_bytes"] == memory["total_bytes"]
    # the same choices; the budget in the rule follows the RAM free at that moment
    assert [(r["key"], r["value"]) for r in recorded["why"]] == [(r["key"], r["value"]) for r in plan["why"]]
    assert summary["trainable_params"] == plan["model"]["trainable_params"]
    checkpoint = sorted((run_dir / "checkpoints").glob("step-*"))[-1]
    size = sum(p.stat().st_size for p in checkpoint.rglob("*") if p.is_file())
    assert abs(size - plan["disk"]["bytes_per_checkpoint"]) / size < 0.1, (size, plan["disk"])
