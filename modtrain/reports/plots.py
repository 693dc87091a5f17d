"""Figures: matplotlib without a display, seaborn's look, atomic PNG writes."""
from __future__ import annotations

from pathlib import Path

from modtrain.io import atomic_path


def pyplot():
    """matplotlib.pyplot on the Agg backend, with seaborn's theme."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import seaborn as sns

    sns.set_theme(style="whitegrid", context="notebook")
    return plt


def save_figure(figure, path: str | Path, dpi: int = 100) -> Path:
    """Write a figure as PNG (atomically) and close it."""
    path = Path(path)
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png", dpi=dpi)
    import matplotlib.pyplot as plt

    plt.close(figure)
    return path
