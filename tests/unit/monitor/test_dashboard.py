"""The dashboard's pure pieces (the live view itself is tested in a pseudo-terminal, tests/e2e)."""


def test_sparkline_scales_the_recent_curve():
    from llmc_cli.monitor.dashboard import sparkline

    assert sparkline([1.0]) == ""
    assert sparkline([3.0, 2.0, 1.0]) == "█▅▁"
    assert sparkline([5.0, float("nan"), 5.0]) == "▁▁"  # flat, and non-finite values skipped
    assert len(sparkline(list(range(100)), width=40)) == 40
