"""`llmc analyze` on runs whose records are written here with known pathologies (the format a run
writes: config.json, metrics.jsonl, events.jsonl, summary.json); real runs are judged in
benchmarks/analyze_labelled.py and tests/e2e/test_analyze_cli.py."""

import json
import math

import pytest

from llmc_cli.analyze import analyze_run
from llmc_cli.analyze.findings import KINDS, PATHOLOGIES
from llmc_cli.errors import ConfigError


def decay(n, start=2.0, floor=1.2, tau=25.0):
    return {s: floor + (start - floor) * math.exp(-s / tau) for s in range(1, n + 1)}


def pathologies(analysis):
    return [f.kind for f in analysis.findings if f.kind in PATHOLOGIES]


def test_a_healthy_run_has_no_pathology(tmp_path, make_run):
    evals = [(0, 2.0)] + [(s, 1.25 + 0.7 * math.exp(-s / 25)) for s in range(10, 101, 10)]
    analysis = analyze_run(make_run(tmp_path / "run", decay(100), evals))
    assert pathologies(analysis) == []
    assert [c for c in analysis.to_json()["cannot_judge"] if not c.startswith("no data report")] == []


def test_overfitting_names_the_step_where_the_eval_loss_turned(tmp_path, make_run):
    evals = [(0, 2.0)] + [(s, 1.3 + 0.0004 * (s - 60) ** 2) for s in range(10, 121, 10)]
    analysis = analyze_run(make_run(tmp_path / "run", decay(120, floor=0.6), evals))
    top = analysis.findings[0]
    assert top.kind == "overfitting"
    assert "step 60" in top.summary
    assert top.fix.startswith("--max-steps 60")
    section = next(s for s in analysis.sections if s.name == "overfitting")
    assert section.figures["best_eval_step"] == 60


def test_a_rate_that_made_the_model_worse_is_too_high_with_a_lower_rate_as_the_fix(tmp_path, make_run):
    train = {s: 2.0 + 0.6 * (1 - math.exp(-s / 20)) for s in range(1, 81)}
    evals = [(0, 2.0)] + [(s, 2.0 + 0.5 * (1 - math.exp(-s / 20))) for s in range(10, 81, 10)]
    analysis = analyze_run(make_run(tmp_path / "run", train, evals, ratio=5e-2))
    top = analysis.findings[0]
    assert top.kind == "lr_too_high"
    assert top.fix == "--lr 2e-05"
    assert top.confidence >= 0.8


def test_tiny_updates_and_a_flat_loss_mean_the_rate_is_too_low(tmp_path, make_run):
    train = {s: 2.0 - 0.0002 * s for s in range(1, 81)}
    evals = [(0, 2.0)] + [(s, 2.0 - 0.0001 * s) for s in range(10, 81, 10)]
    analysis = analyze_run(make_run(tmp_path / "run", train, evals, ratio=5e-5))
    top = analysis.findings[0]
    assert (top.kind, top.fix) == ("lr_too_low", "--lr 0.002")
    assert "lr_too_high" not in pathologies(analysis)


def test_the_same_flat_loss_with_normal_updates_is_underfitting_not_a_low_rate(tmp_path, make_run):
    train = {s: 2.0 - 0.0002 * s for s in range(1, 81)}
    evals = [(0, 2.0)] + [(s, 2.0 - 0.0001 * s) for s in range(10, 81, 10)]
    analysis = analyze_run(make_run(tmp_path / "run", train, evals, ratio=5e-3))
    assert pathologies(analysis)[0] == "underfitting"
    assert "lr_too_low" not in pathologies(analysis)


def test_a_loss_still_falling_at_the_end_asks_for_more_steps(tmp_path, make_run):
    evals = [(0, 2.0)] + [(s, 1.0 + math.exp(-s / 80)) for s in range(10, 61, 10)]
    analysis = analyze_run(make_run(tmp_path / "run", decay(60, floor=1.0, tau=80), evals))
    top = analysis.findings[0]
    assert (top.kind, top.fix) == ("too_few_steps", "--max-steps 120")


def test_a_run_that_stopped_improving_early_is_a_plateau(tmp_path, make_run):
    evals = [(0, 2.0)] + [(s, 1.2 + 0.8 * math.exp(-s / 8)) for s in range(25, 301, 25)]
    analysis = analyze_run(make_run(tmp_path / "run", decay(300, tau=8), evals, config={"scheduler": "constant"}))
    top = analysis.findings[0]
    assert top.kind == "plateau"
    assert top.fix.startswith("--max-steps ")


def test_spikes_and_a_rollback_are_instability_not_a_bad_rate(tmp_path, make_run):
    evals = [(0, 2.0)] + [(s, 1.25 + 0.7 * math.exp(-s / 25)) for s in range(10, 101, 10)]
    events = [
        {"event": "Adjustment", "step": 30, "cause": "spike", "action": "lowered-lr", "message": "spike"},
        {"event": "Adjustment", "step": 55, "cause": "spike", "action": "rolled-back", "message": "spike"},
        {"event": "RolledBack", "step": 50, "from_step": 55, "source": "checkpoint-50"},
    ]
    analysis = analyze_run(make_run(tmp_path / "run", decay(100), evals, events=events))
    assert pathologies(analysis) == ["instability"]
    assert "rolled back from step 55 to step 50" in analysis.findings[0].evidence


def test_a_resumed_run_is_read_from_the_records_that_count(tmp_path, make_run):
    evals = [(0, 2.0)] + [(s, 1.25 + 0.7 * math.exp(-s / 25)) for s in range(10, 101, 10)]
    run = make_run(tmp_path / "run", decay(100), evals, resume_at=40)
    analysis = analyze_run(run)
    assert [r["step"] for r in analysis.records.steps] == list(range(1, 101))
    assert pathologies(analysis) == []


def test_a_run_without_evaluations_says_what_it_cannot_judge(tmp_path, make_run):
    analysis = analyze_run(make_run(tmp_path / "run", decay(100)))
    cannot = analysis.to_json()["cannot_judge"]
    assert any("no evaluations: cannot judge overfitting" in c for c in cannot)
    assert pathologies(analysis) == []


def test_json_findings_use_the_documented_vocabulary(tmp_path, make_run):
    evals = [(0, 2.0)] + [(s, 1.3 + 0.0004 * (s - 60) ** 2) for s in range(10, 121, 10)]
    data = analyze_run(make_run(tmp_path / "run", decay(120, floor=0.6), evals)).to_json()
    json.dumps(data)
    assert data["findings"]
    for finding in data["findings"]:
        assert finding["kind"] in KINDS
        assert {"kind", "evidence", "fix", "confidence"} <= finding.keys()
        assert 0 <= finding["confidence"] <= 1


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda root: None, "No run 'run'"),
        (lambda root: (root / "run").mkdir(), "is not a run directory (no config.json)"),
        (lambda root: _config_only(root / "run", ""), "has no readable step or evaluation"),
        (lambda root: _config_only(root / "run", '{"type": "train", "step": 1, "lo'), "has no readable step"),
        (lambda root: _config_only(root / "run", None), "has not logged a step yet"),
    ],
)
def test_bad_runs_are_refused_with_one_clear_message(tmp_path, make, message, make_run):
    make(tmp_path)
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        analyze_run("run", tmp_path)


def _config_only(folder, metrics):
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"config": {"training": {"lr": 1e-4}}, "sources": {}}))
    if metrics is not None:
        (folder / "metrics.jsonl").write_text(metrics)


@pytest.mark.parametrize("steps", [8, 9, 10, 11, 30])
def test_short_runs_are_analysed_whatever_their_length(tmp_path, make_run, steps):
    analysis = analyze_run(make_run(tmp_path / "run", decay(steps), [(0, 2.0), (steps, 1.9)]))
    assert analysis.sections[0].judged


def test_a_finetuner_without_a_run_has_nothing_to_analyse():
    from llmc_cli import FineTuner

    with pytest.raises(ConfigError, match="no run to analyse yet"):
        FineTuner("data.jsonl").analyze()


def test_examples_cut_at_max_length_ask_for_a_length_that_keeps_them(tmp_path, make_run):
    evals = [(0, 2.0)] + [(s, 1.25 + 0.7 * math.exp(-s / 25)) for s in range(10, 101, 10)]
    data = {"train": {"examples": 800, "kept": 677, "truncated": 707, "dropped_no_target": 123}}
    run = make_run(tmp_path / "run", decay(100), evals, summary={"data": data}, config={"max_length": 128})
    config = json.loads((run / "config.json").read_text())
    config["data_profile"] = {"lengths": {"p50": 199, "p95": 366, "p99": 468, "max": 628}}
    (run / "config.json").write_text(json.dumps(config))
    analysis = analyze_run(run)
    (finding,) = [f for f in analysis.findings if f.kind == "truncation"]
    assert finding.fix.startswith("--max-length 512")
    assert "88%" in finding.summary and "707 of 800 cut" in finding.evidence
    assert pathologies(analysis) == []


def test_live_and_failed_runs_are_read_as_far_as_they_got(tmp_path, make_run):
    evals = [(0, 2.0)] + [(s, 1.25 + 0.7 * math.exp(-s / 25)) for s in range(10, 41, 10)]
    live = analyze_run(make_run(tmp_path / "live", decay(40), evals, total=100))
    assert (live.to_json()["status"], live.to_json()["steps"], live.to_json()["total_steps"]) == ("running", 40, 100)
    failed = make_run(tmp_path / "failed", decay(40), evals, total=100)
    (failed / "failure.json").write_text(json.dumps({"cause": "oom-cpu"}))
    assert analyze_run(failed).to_json()["status"] == "failed"


def test_a_step_with_a_non_finite_loss_does_not_break_the_analysis(tmp_path, make_run):
    evals = [(0, 2.0)] + [(s, 1.25 + 0.7 * math.exp(-s / 25)) for s in range(10, 101, 10)]
    run = make_run(tmp_path / "run", decay(100), evals)
    lines = (run / "metrics.jsonl").read_text().splitlines()
    for i, line in enumerate(lines):
        if '"step": 2,' in line and '"train"' in line:
            lines[i] = line.replace('"loss": ', '"loss": NaN, "was": ', 1)
    (run / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    analysis = analyze_run(run)
    assert len(analysis.records.series("loss")[0]) == 99 and len(analysis.records.series("lr")[0]) == 100
    assert all(s.verdict for s in analysis.sections)


def test_a_big_first_drop_then_a_late_gain_worth_having_is_not_a_plateau(tmp_path, make_run):
    """SmolLM2 at LR 2e-3: eval 1.415 -> 0.868 by step 18, then 0.815 at 48: 90 % of the gain came
    early, but the second half still took 5 % off the loss."""
    evals = [(0, 1.415), (6, 0.968), (12, 0.892), (18, 0.868), (24, 0.858), (30, 0.838), (36, 0.825),
             (42, 0.817), (48, 0.815)]  # fmt: skip
    train = {s: 0.7 + 0.5 * math.exp(-s / 8) for s in range(1, 49)}
    analysis = analyze_run(make_run(tmp_path / "run", train, evals, ratio=1.4e-2))
    assert pathologies(analysis) == []


def test_model_flops_are_set_against_the_peak_the_run_measured(tmp_path, make_run):
    evals = [(0, 2.0)] + [(s, 1.25 + 0.7 * math.exp(-s / 25)) for s in range(10, 101, 10)]
    facts = {"total_params": 100_000_000, "tokens_per_s": 500.0}
    plain = analyze_run(make_run(tmp_path / "plain", decay(100), evals, summary=facts))
    peaked = analyze_run(make_run(tmp_path / "peak", decay(100), evals,
                                  summary={**facts, "matmul_peak_flops_per_s": 8e11}))  # fmt: skip
    section = next(s for s in peaked.sections if s.name == "efficiency")
    assert section.figures["model_flops_per_s"] == 2e11 and section.figures["model_flops_share_of_peak"] == 0.25
    assert any("25% of this machine's measured matmul peak (800 GFLOP/s)" in line for line in section.evidence)
    assert "model_flops_share_of_peak" not in next(s for s in plain.sections if s.name == "efficiency").figures


def test_evaluation_and_saving_time_is_raised_only_where_the_run_was_long_enough_to_matter(tmp_path, make_run):
    evals = [(0, 2.0)] + [(s, 1.25 + 0.7 * math.exp(-s / 25)) for s in range(10, 101, 10)]

    def slow(name, train_s, eval_s, saved_s):
        times = {"train_time_s": train_s, "eval_time_s": eval_s, "checkpoint_time_s": saved_s}
        run = analyze_run(make_run(tmp_path / name, decay(100), evals, summary=times))
        return next(s for s in run.sections if s.name == "efficiency").findings

    long = slow("long", 200.0, 150.0, 80.0)  # 35 % evaluating, 19 % saving
    assert [f.fix for f in long] == ["--eval-every 30", "--checkpoint-interval 300"]
    assert slow("toy", 0.4, 0.3, 0.2) == []  # the same shares of under a second
