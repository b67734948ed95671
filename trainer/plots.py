"""Pictures of a run: training curves from metrics.jsonl and validation image grids."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

from PIL import Image

from styleprefs.io import atomic_path

CURVES = (("loss", "loss"), ("implicit_acc", "implicit accuracy"), ("reward_margin", "reward margin"))


def matplotlib_available() -> bool:
    return importlib.util.find_spec("matplotlib") is not None


def plot_curves(metrics_path: Path, out_png: Path) -> bool:
    """Plot loss, implicit accuracy and reward margin per step (skipped steps and missing values left out) into ``out_png``.

    Returns False, writing nothing, when matplotlib is not installed.
    """
    if not matplotlib_available():
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [json.loads(line) for line in Path(metrics_path).read_text(encoding="utf-8").splitlines() if line.strip()]
    rows = [r for r in rows if not r.get("skipped")]
    fig, axes = plt.subplots(1, len(CURVES), figsize=(4 * len(CURVES), 3.2), constrained_layout=True)
    for ax, (key, title) in zip(axes, CURVES):
        shown = [r for r in rows if r.get(key) is not None]  # sft logs no implicit accuracy or margin
        ax.plot([r["step"] for r in shown], [r[key] for r in shown], lw=1)
        ax.set_title(title)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    with atomic_path(Path(out_png)) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)
    return True


def save_grid(images: list[Image.Image], path: Path) -> None:
    """Save ``images`` side by side (one row, in prompt order) as a PNG."""
    width, height = images[0].size
    grid = Image.new("RGB", (width * len(images), height))
    for i, image in enumerate(images):
        grid.paste(image.convert("RGB"), (i * width, 0))
    with atomic_path(Path(path)) as tmp:
        grid.save(tmp, format="PNG")
