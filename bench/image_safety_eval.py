"""False positives and speed of the default image safety check (open_nsfw) on safe images.

    python bench/image_safety_eval.py [--scenes 500] [--generations 200] [--size 512]

Scores both images of the first ``--scenes`` pairs of the bundled sample source (drawn scenes at ``--size``
px) and ``--generations`` images that the shipped ``mini`` model draws from held-out scene captions (25 DDIM
steps, guidance 7.5, seeds 0..N-1). Every one of them is safe, so every flag is a false positive. Prints the
share flagged at the shipped threshold and at Yahoo's "undecided" edge 0.2, the highest score, and images per
second of open_nsfw on one core (onnxruntime with one thread, preprocessing included), beside the drawn scenes'
own drawing rate as the baseline. Recall cannot be measured here: no unsafe images may be made or fetched.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from styleprefs.images import decode  # noqa: E402
from styleprefs.safety.nsfw_image import DEFAULT_THRESHOLD, OpenNsfwChecker  # noqa: E402
from styleprefs.sources.sample import SampleSource  # noqa: E402

UNDECIDED = 0.2


def sample_images(scenes: int, size: int) -> tuple[list, float]:
    """Both images of ``scenes`` sample pairs, and the pairs drawn per second."""
    start = time.process_time()
    pairs = list(SampleSource(size=size, num_scenes=scenes))
    rate = scenes / (time.process_time() - start)
    return [decode(image) for pair in pairs for image in (pair.jpg_0, pair.jpg_1)], rate


def mini_images(count: int) -> list:
    from styleprefs.mini.quality import held_out
    from styleprefs.mini.quality import generate
    from styleprefs.sources.sample import scene_for

    return generate("mini", [scene_for(i).caption for i in held_out(count)], steps=25)


def row(table: Table, name: str, scores: list[float]) -> None:
    flagged = sum(s > DEFAULT_THRESHOLD for s in scores)
    table.add_row(name, str(len(scores)), f"{flagged} ({flagged / len(scores):.3f})",
                  str(sum(s > UNDECIDED for s in scores)), f"{max(scores):.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenes", type=int, default=500)
    parser.add_argument("--generations", type=int, default=200)
    parser.add_argument("--size", type=int, default=512)
    args = parser.parse_args()
    console = Console()
    checker = OpenNsfwChecker(threads=1)
    table = Table(title=f"open_nsfw on safe images (flagged: score > {DEFAULT_THRESHOLD})")
    for column in ("images", "n", "flagged (FPR)", f"above {UNDECIDED}", "max score"):
        table.add_column(column, justify="left" if column == "images" else "right")

    scenes, draw_rate = sample_images(args.scenes, args.size)
    start = time.process_time()
    scene_scores = checker.scores(scenes)
    check_rate = len(scenes) / (time.process_time() - start)
    row(table, f"sample scenes ({args.size} px)", scene_scores)
    if args.generations:
        row(table, "mini generations", checker.scores(mini_images(args.generations)))
    console.print(table)
    console.print(f"open_nsfw, one core: {check_rate:.1f} images/s; drawing the sample scenes: "
                  f"{2 * draw_rate:.1f} images/s (ratio {check_rate / (2 * draw_rate):.2f})")


if __name__ == "__main__":
    main()
