"""How much the mini models know, on held-out scenes (house colour x time of day never seen in training).

    python bench/mini_quality.py                      # the shipped mini / mini-clip, 200 scenes
    python bench/mini_quality.py --trained DIR        # a folder written by `python -m styleprefs.mini train`
    python bench/mini_quality.py --card               # also write the figures into the shipped model card

Prints a table: mini-clip zero-shot accuracy on real held-out images (house colour, time of day, winter edit
vs original), the same reading of mini's generations from held-out captions against chance, and FID on
mini-clip features (mini FID: comparable only within the miniature) of the generations against real images,
next to the FID of two disjoint real sets (the floor).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from styleprefs.mini.quality import GUIDANCE, measure, render_table  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trained", type=Path, help="folder with mini/ and mini-clip/ (default: the shipped ones)")
    parser.add_argument("--scenes", type=int, default=200, help="held-out scenes (and generations)")
    parser.add_argument("--steps", type=int, default=25, help="DDIM steps per generation")
    parser.add_argument("--guidance", type=float, default=GUIDANCE, help="classifier-free guidance of the generations")
    parser.add_argument("--card", action="store_true", help="write the figures into the model card")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    model = str(args.trained / "mini") if args.trained else "mini"
    clip = str(args.trained / "mini-clip") if args.trained else "mini-clip"
    figures = measure(model, clip, scenes=args.scenes, steps=args.steps, guidance=args.guidance)
    print(render_table(figures))
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2) + "\n", encoding="utf-8")
    if args.card:
        from styleprefs.mini.card import write_card

        print(f"card: {write_card(figures, args.trained)}")


if __name__ == "__main__":
    main()
