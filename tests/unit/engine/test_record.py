"""metrics.jsonl read back: after a resume the later records of a step win; torn lines are skipped."""

import json

from llmc_cli.engine.record import by_step, read_metrics


def test_resumed_run_keeps_the_records_after_the_resume_marker(tmp_path):
    lines = [
        {"type": "train", "step": 1, "loss": 3.0},
        {"type": "train", "step": 2, "loss": 2.5},
        {"type": "eval", "step": 2, "eval_loss": 2.6},
        {"type": "train", "step": 3, "loss": 9.9},  # logged by the attempt that was killed
        {"type": "resume", "step": 2},
        {"type": "train", "step": 3, "loss": 2.2},
        {"type": "train", "step": 4, "loss": 2.0},
    ]
    text = "\n".join(json.dumps(line) for line in lines) + '\n{"type": "train", "st'  # torn by a kill
    (tmp_path / "metrics.jsonl").write_text(text)
    assert {s: r["loss"] for s, r in by_step(tmp_path).items()} == {1: 3.0, 2: 2.5, 3: 2.2, 4: 2.0}
    assert list(by_step(tmp_path, "eval")) == [2]
    assert by_step(tmp_path / "missing") == {}


def test_recorder_starts_a_fresh_line_after_a_torn_one(tmp_path):
    from llmc_cli.engine.record import JsonlRecorder
    from llmc_cli.events import RunResumed

    (tmp_path / "metrics.jsonl").write_text('{"type": "train", "step": 3, "loss": 9.9}\n{"type": "tr')
    recorder = JsonlRecorder(tmp_path)
    recorder(RunResumed(step=2, checkpoint="c", skipped=[]))
    recorder.close()
    assert [r["type"] for r in read_metrics(tmp_path)] == ["train", "resume"]
    assert by_step(tmp_path) == {}


def test_a_line_cut_short_by_a_full_disk_is_removed_and_counted(tmp_path, monkeypatch):
    """A write that fits only part of a line (the disk filled mid-line) leaves no torn line behind."""
    import errno
    import os

    from llmc_cli.engine import record as module
    from llmc_cli.engine.record import JsonlRecorder
    from llmc_cli.events import RunResumed

    recorder = JsonlRecorder(tmp_path)
    recorder(RunResumed(step=1, checkpoint="c", skipped=[]))
    real_write, calls = os.write, []

    def full_disk(fd, data):
        calls.append(len(data))
        if len(calls) == 1:
            return real_write(fd, data[: len(data) // 2])  # half the line fits
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(module.os, "write", full_disk)
    recorder(RunResumed(step=2, checkpoint="c", skipped=[]))
    monkeypatch.setattr(module.os, "write", real_write)
    recorder(RunResumed(step=3, checkpoint="c", skipped=[]))  # space is back
    recorder.close()
    for name in ("events.jsonl", "metrics.jsonl"):  # events.jsonl got half a line, metrics.jsonl none
        lines = (tmp_path / name).read_text().splitlines()
        assert [json.loads(line)["step"] for line in lines] == [1, 3], name
    assert recorder.lost == 2
