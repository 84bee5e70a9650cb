"""``llmc tune`` as users run it: a study from a space file, ``tune show --json``, the best trial's
settings as an llmc.toml that ``llmc train --config`` reads, and bad spaces refused with the key."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time


def test_tune_runs_a_study_shows_it_and_writes_the_best_as_a_config(llmc, tmp_path, tiny_model_dir, gsm8k_train):
    space = tmp_path / "space.toml"
    space.write_text("[lr]\nlow = 1e-4\nhigh = 3e-3\nlog = true\n\n[lora_r]\nchoices = [4, 8]\n")
    runs = tmp_path / "runs"
    common = ["--data", str(gsm8k_train), "--model", str(tiny_model_dir), "--preset", "highspeed", "--limit", "40"]
    env = {"HYPERPARAMETER_TRIALS": "2"}  # the specification's name for --trials
    done = llmc("tune", *common, "--method", "random", "--budget-steps", "2", "--space", str(space),
                "--output", str(runs), cwd=tmp_path, env=env)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "Study tune-1" in done.stdout and "Best: trial" in done.stdout

    shown = llmc("tune", "show", "tune-1", "--output", str(runs), "--json", cwd=tmp_path)
    assert shown.returncode == 0, shown.stderr
    study = json.loads(shown.stdout)
    assert [t["state"] for t in study["trials"]] == ["COMPLETE", "COMPLETE"]
    assert study["best"]["value"] == min(t["value"] for t in study["trials"])
    trial = json.loads((runs / "tune-1" / "trials" / "trial-0" / "config.json").read_text())
    assert trial["config"]["training"]["eval_every"] == 1 and trial["sources"]["eval_every"] == "cli"  # for the pruner

    rank = study["best"]["params"]["lora_r"]
    best = runs / "tune-1" / "best.toml"  # self-contained: model, preset and limit with the values
    planned = llmc("train", "--data", str(gsm8k_train), "--config", str(best), "--dry-run", "--json",
                   "--output", str(runs), cwd=tmp_path)  # fmt: skip
    assert planned.returncode == 0, planned.stderr
    config = json.loads(planned.stdout)["config"]
    assert config["lora_r"] == {"value": rank, "source": f"toml:{best}"}
    assert config["lora_alpha"]["value"] == 2 * rank and config["limit"]["value"] == 40  # alpha as the trial had it

    # The full run with the best trial: the study's data, model, preset and limit, not its 2-step budget.
    again = llmc("train", "--from-study", "tune-1", "--output", str(runs), "--dry-run", "--json", cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    config = json.loads(again.stdout)["config"]
    label = f"study:tune-1#{study['best']['number']}"
    assert config["lora_r"] == {"value": rank, "source": label} and config["lora_alpha"]["value"] == 2 * rank
    assert config["data"]["source"] == label and config["limit"]["value"] == 40 and config["max_steps"]["value"] != 2

    exported = tmp_path / "mine.toml"
    shown = llmc("tune", "best", "tune-1", "--output", str(runs), "--export", str(exported), cwd=tmp_path)
    settings = lambda path: [line for line in path.read_text().splitlines() if not line.startswith("#")]  # noqa: E731
    assert shown.returncode == 0 and f"lora_r = {rank}" in shown.stdout and settings(exported) == settings(best)
    refused = llmc("tune", "best", "tune-1", "--output", str(runs), "--export", str(exported), cwd=tmp_path)
    assert refused.returncode != 0 and "already exists" in refused.stderr and "Traceback" not in refused.stderr

    # As a named preset: the study's preset (highspeed) with the best values on top, kept by the data rules.
    env = {"LLMC_PRESETS": str(tmp_path / "presets")}
    saved = llmc("tune", "best", "tune-1", "--output", str(runs), "--export", "gsm", cwd=tmp_path, env=env)
    assert saved.returncode == 0 and "--preset tuned:gsm" in saved.stdout, saved.stderr
    planned = llmc("train", *common[:4], "--preset", "tuned:gsm", "--dry-run", "--json", cwd=tmp_path, env=env)
    assert planned.returncode == 0, planned.stderr
    config = json.loads(planned.stdout)["config"]
    assert config["lora_r"] == {"value": rank, "source": "tuned:gsm"} and config["lr"]["source"] == "tuned:gsm"
    # An untuned key comes from the base preset, or from the data rules for this data's size (the 160-example
    # sample gets the small-data dropout; the larger shared GSM8K file keeps the preset's).
    assert config["lora_dropout"]["source"].startswith(("preset:", "optimize_for_data"))
    assert config["limit"]["source"] == "default"


def test_a_bad_search_space_is_refused_with_its_key_and_the_fix(llmc, tmp_path, tiny_model_dir, gsm8k_train):
    space = tmp_path / "space.toml"
    space.write_text("[lora_r]\nlow = 0\nhigh = 8\n")
    done = llmc("tune", "--data", str(gsm8k_train), "--model", str(tiny_model_dir), "--space", str(space),
                "--output", str(tmp_path / "runs"), cwd=tmp_path)  # fmt: skip
    assert done.returncode == 2 and "[lora_r]" in done.stderr and "Fix:" in done.stderr, done.stderr
    space.write_text("[learning_rate]\nlow = 1e-5\nhigh = 1e-3\n")
    done = llmc("tune", "--data", str(gsm8k_train), "--model", str(tiny_model_dir), "--space", str(space),
                "--output", str(tmp_path / "runs"), cwd=tmp_path)  # fmt: skip
    assert done.returncode == 2 and "not an llmc config key" in done.stderr, done.stderr
    assert not (tmp_path / "runs").exists()  # nothing was started


def test_a_killed_worker_s_trial_is_queued_again_once_and_the_study_completes(
    llmc_command, tmp_path, tiny_model_dir, gsm8k_train
):
    import optuna

    from llmc_cli.tune.study import finished, load_study

    space = tmp_path / "space.toml"
    space.write_text("[lr]\nchoices = [1e-3, 2e-3, 3e-3, 4e-3]\n")
    runs = tmp_path / "runs"
    main = subprocess.Popen(
        [*llmc_command, "tune", "--data", gsm8k_train, "--model", tiny_model_dir, "--preset", "highspeed",
         "--limit", "40", "--trials", "4", "--method", "random", "--pruner", "none", "--budget-steps", "6",
         "--space", space, "--workers", "2", "--study", "s", "--output", runs],
        cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    killed = None
    deadline = time.monotonic() + 300
    while killed is None and time.monotonic() < deadline and main.poll() is None:
        time.sleep(0.2)
        if not (runs / "s" / "journal.log").exists():
            continue
        for trial in load_study(runs / "s", "s", None).trials:
            worker = trial.user_attrs.get("worker")
            # after its first evaluation, before its end (once it had to be between the first and the second,
            # one step apart, and a fast machine slipped through the polls)
            mid_trial = len(trial.intermediate_values) >= 1
            if trial.state.name == "RUNNING" and worker and worker["pid"] != main.pid and mid_trial:
                os.kill(worker["pid"], signal.SIGKILL)  # the other worker, in the middle of a trial
                killed = trial.number
                break
    output, _ = main.communicate(timeout=600)
    assert main.returncode == 0, output
    assert killed is not None, output

    study = load_study(runs / "s", "s", None)
    trials = {t.number: t for t in study.trials}
    stale = trials[killed]
    assert stale.state.name == "FAIL" and "died" in stale.user_attrs["stale"]
    reruns = [t for t in trials.values() if t.user_attrs.get("rerun_of") == killed]
    assert len(reruns) == 1 and reruns[0].state.name == "COMPLETE" and reruns[0].params == stale.params
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in trials.values() if t.number != killed)
    # Each worker may start a trial when one is left, and the re-run may come after the 4th.
    assert 4 <= finished(study) <= 6
