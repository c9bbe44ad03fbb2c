"""matplotlib figures rendered to inline SVG, one look for every report.

The Agg backend is chosen before pyplot is imported (no display, no GUI toolkit: works on a server or a
Dask worker). SVG text is kept as text (``svg.fonttype = none``) so numbers in charts are searchable and
the file stays small; ids get a per-chart prefix so several charts can share one page.
"""

from __future__ import annotations

import io
import itertools
import re
import threading
from typing import Any

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
from markupsafe import Markup

#: Indicator colours used by every report (CDS Hooks card indicators).
INDICATOR_COLOURS = {"critical": "#b3261e", "warning": "#e8a317", "info": "#2c6fbb"}
_counter = itertools.count(1)
_lock = threading.Lock()  # pyplot's figure registry is process-global


def figure(width: float = 7.5, height: float = 3.2) -> tuple[Any, Any]:
    """A new figure and axes with the reports' style."""
    with _lock:
        fig, ax = plt.subplots(figsize=(width, height), dpi=96)
    ax.spines[["top", "right"]].set_visible(False)
    ax.grid(axis="y", alpha=0.3)
    return fig, ax


def svg(fig: Any, title: str) -> Markup:
    """The figure as an inline ``<svg>`` element with an accessible title; the figure is closed."""
    buffer = io.StringIO()
    with matplotlib.rc_context({"svg.fonttype": "none", "svg.hashsalt": "kbladder"}):
        fig.savefig(buffer, format="svg", bbox_inches="tight")
    with _lock:
        plt.close(fig)
    text = buffer.getvalue()
    text = text[text.index("<svg"):]
    prefix = f"c{next(_counter)}-"
    text = re.sub(r'id="([^"]+)"', lambda m: f'id="{prefix}{m.group(1)}"', text)
    text = re.sub(r'(xlink:href|href)="#([^"]+)"', lambda m: f'{m.group(1)}="#{prefix}{m.group(2)}"', text)
    text = re.sub(r"url\(#([^)]+)\)", lambda m: f"url(#{prefix}{m.group(1)})", text)
    escaped = Markup.escape(title)
    text = text.replace("<svg ", f'<svg role="img" aria-label="{escaped}" class="chart" ', 1)
    return Markup(text)
