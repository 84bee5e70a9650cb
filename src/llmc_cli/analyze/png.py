"""``llmc analyze --png DIR``: the report's plots as PNG files, to share (matplotlib, an optional
dependency: ``pip install 'llmc[png]'``)."""

from __future__ import annotations

from pathlib import Path

from llmc_cli.analyze.charts import Chart, thin
from llmc_cli.durable import disk_errors
from llmc_cli.errors import ConfigError


def write_pngs(charts: list[Chart], folder: Path, prefix: str = "", log_scale: bool = False) -> list[Path]:
    """One PNG per chart in ``folder`` (created); returns the files written.

    Raises:
        ConfigError: matplotlib is not installed, or ``folder`` is a file.
        DiskFull: the disk filled while writing.
    """
    try:
        import matplotlib

        matplotlib.use("Agg")  # no display needed
        from matplotlib import pyplot as plt
    except ImportError:
        raise ConfigError(
            "--png needs matplotlib, which is not installed.",
            hint="pip install 'llmc[png]' (or pip install matplotlib), or leave out --png.",
        ) from None
    if folder.exists() and not folder.is_dir():
        raise ConfigError(f"--png {folder} is a file, not a folder.", hint="Pass a folder (it is created).")
    written = []
    with disk_errors("the plots", folder):
        folder.mkdir(parents=True, exist_ok=True)
        for chart in charts:
            series = [(name, *thin(xs, ys, limit=4000)) for name, xs, ys in chart.series if len(xs) >= 2]
            if not series:
                continue
            figure, axes = plt.subplots(figsize=(8, 4), dpi=120)
            for name, xs, ys in series:
                axes.plot(xs, ys, label=name, linewidth=1.2)
            if log_scale and chart.loss:
                axes.set_yscale("log")
            axes.set(title=chart.title, xlabel="step")
            axes.grid(alpha=0.3)
            axes.legend()
            figure.tight_layout()
            path = folder / f"{prefix}{chart.name}.png"
            figure.savefig(path)
            plt.close(figure)
            written.append(path)
    return written
