"""The dashboard's pure pieces (the live view itself is tested in a pseudo-terminal, tests/e2e)."""


def test_sparkline_scales_the_recent_curve():
    from llmc_cli.monitor.dashboard import sparkline

    assert sparkline([1.0]) == ""
    assert sparkline([3.0, 2.0, 1.0]) == "█▅▁"
    assert sparkline([5.0, float("nan"), 5.0]) == "▁▁"  # flat, and non-finite values skipped
    assert len(sparkline(list(range(100)), width=40)) == 40


def test_the_latest_sample_answer_is_shown_on_one_line_with_its_scores():
    from rich.console import Console

    from llmc_cli.events import SamplesGenerated
    from llmc_cli.monitor.dashboard import Dashboard
    from llmc_cli.monitor.progress import describe_samples

    answer = "Natalia sold 48 clips in April\nand half as many in May.\n#### 72 " + "x" * 200
    event = SamplesGenerated(12, 0.5, 0.75, 4, 1.25, [{"prompt": "p", "reference": "r", "output": answer}])
    line = describe_samples(event, width=60)
    assert line.startswith("samples step     12  exact match 2/4  format 75%  (1.2 s)  first: Natalia sold 48")
    assert "\n" not in line and line.endswith("…") and len(line.split("first: ")[1]) == 60
    plain = SamplesGenerated(3, None, None, 0, 0.5, [{"prompt": "p", "reference": "", "output": ""}])
    assert "no references to score against" in describe_samples(plain) and "(empty)" in describe_samples(plain)
    free = SamplesGenerated(3, None, None, 0, 0.5, [{"prompt": "p", "reference": "r", "output": "o"}], 0.25, 31.0, 1)
    assert "  ROUGE-L 0.25  chrF 31.0 (1 free-text)  (0.5 s)" in describe_samples(free)

    console = Console(width=140, record=True, force_terminal=False)
    board = Dashboard(console)
    board(event)
    console.print(board.render())
    assert "exact match 2/4" in console.export_text()
