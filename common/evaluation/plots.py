"""The one plotting helper: every PNG twinlora writes (loss.png, compare.png, sweep.png, study.png,
bench's longseq.png) gets its figure, its style and its bytes here, so they look alike and are made
the same way.

matplotlib's object API without pyplot: no global backend to select and no figure registry
shared between runs (a long sweep leaks no figures). matplotlib is imported when a plot is drawn,
never at import time.
"""
from __future__ import annotations

import io
from pathlib import Path

DPI = 100
GRID_ALPHA = 0.3
LEGEND_SIZE = 8


def figure(width: float, height: float, panels: int = 1):
    """A figure of `panels` side-by-side axes: (fig, [ax, ...])."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height))
    FigureCanvasAgg(fig)
    return fig, [fig.add_subplot(1, panels, i + 1) for i in range(panels)]


def style(ax, *, title: str | None = None, xlabel: str | None = None, ylabel: str | None = None,
          zero: bool = False, legend: bool = True, grid: bool = True) -> None:
    """The house style of one panel; `zero`: the y axis starts at zero (a zoomed axis makes a 1%
    difference look like a factor of two)."""
    if title is not None:
        ax.set_title(title)
    if xlabel is not None:
        ax.set_xlabel(xlabel)
    if ylabel is not None:
        ax.set_ylabel(ylabel)
    if zero:
        ax.set_ylim(bottom=0)
    if grid:
        ax.grid(alpha=GRID_ALPHA)
    if legend and ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=LEGEND_SIZE)


def png(fig) -> bytes:
    """The figure laid out and rendered as PNG bytes."""
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI)
    return buf.getvalue()


def save(fig, path: str | Path) -> Path:
    """Write the figure's PNG atomically (a reader never sees half a file)."""
    from common.runs.io import write_bytes
    write_bytes(path, png(fig))
    return Path(path)
