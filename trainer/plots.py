"""Pictures of a run: training curves from metrics.jsonl and validation image grids."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
from PIL import Image

from styleprefs.io import atomic_path

CURVES = (("loss", "loss"), ("implicit_acc", "implicit accuracy"), ("reward_margin", "reward margin"))
SMOOTHING = 20  # steps in the running mean drawn over each noisy per-step curve


def matplotlib_available() -> bool:
    return importlib.util.find_spec("matplotlib") is not None


def plot_curves(metrics_path: Path, out_png: Path) -> bool:
    """Plot loss, implicit accuracy and reward margin per step, with a running mean, into ``out_png``; skipped steps
    and missing values are left out, and so is a curve the run does not log (SFT has no implicit accuracy).

    Returns False, writing nothing, when matplotlib is not installed.
    """
    if not matplotlib_available():
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [json.loads(line) for line in Path(metrics_path).read_text(encoding="utf-8").splitlines() if line.strip()]
    rows = [r for r in rows if not r.get("skipped")]
    curves = [(key, title) for key, title in CURVES if any(r.get(key) is not None for r in rows)] or CURVES[:1]
    fig, axes = plt.subplots(1, len(curves), figsize=(4 * len(curves), 3.2), constrained_layout=True, squeeze=False)
    for ax, (key, title) in zip(axes[0], curves):
        shown = [r for r in rows if r.get(key) is not None]  # sft logs no implicit accuracy or margin
        steps, values = [r["step"] for r in shown], [r[key] for r in shown]
        ax.plot(steps, values, lw=1, alpha=0.4 if len(values) > SMOOTHING else 1.0)
        if len(values) > SMOOTHING:
            ax.plot(steps[SMOOTHING - 1:], running_mean(values, SMOOTHING), lw=1.5, label=f"mean of {SMOOTHING}")
            ax.legend(loc="best", fontsize="small")
        ax.set_title(title)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    with atomic_path(Path(out_png)) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)
    return True


def running_mean(values: list[float], window: int) -> np.ndarray:
    """The mean of every ``window`` consecutive values (``len(values) - window + 1`` of them)."""
    return np.convolve(values, np.ones(window) / window, mode="valid")


def save_grid(images: list[Image.Image], path: Path) -> None:
    """Save ``images`` side by side (one row, in prompt order) as a PNG."""
    width, height = images[0].size
    grid = Image.new("RGB", (width * len(images), height))
    for i, image in enumerate(images):
        grid.paste(image.convert("RGB"), (i * width, 0))
    with atomic_path(Path(path)) as tmp:
        grid.save(tmp, format="PNG")
