"""How much the mini models know, on held-out scenes (house colour x time of day never seen in training).

    python bench/mini_quality.py                      # the shipped mini, mini-flow and mini-clip, 200 scenes
    python bench/mini_quality.py --trained DIR        # a folder written by `python -m styleprefs.mini train`
    python bench/mini_quality.py --card               # also write the figures into the shipped model card

Prints, for mini and for mini-flow, a table: mini-clip zero-shot accuracy on real held-out images (house colour,
time of day, winter edit vs original), the same reading of the model's generations from held-out captions
against chance, and FID on mini-clip features (mini FID: comparable only within the miniature) of the
generations against real images, next to the FID of two disjoint real sets (the floor). Then mini-flow against
mini, the baseline measured in the same run, on mini-flow's floors: mini FID at most 1.2x mini's, house colour
read by mini-clip at least mini's.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from styleprefs.mini.quality import (FLOW_GUIDANCE, FLOW_STEPS, GUIDANCE, measure, render_comparison,  # noqa: E402
                                     render_table)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trained", type=Path,
                        help="folder with mini/, mini-flow/ and mini-clip/ (default: the shipped ones)")
    parser.add_argument("--scenes", type=int, default=200, help="held-out scenes (and generations)")
    parser.add_argument("--steps", type=int, default=25, help="mini's DDIM steps per generation")
    parser.add_argument("--guidance", type=float, default=GUIDANCE, help="mini's classifier-free guidance")
    parser.add_argument("--flow-steps", type=int, default=FLOW_STEPS, help="mini-flow's Euler steps per generation")
    parser.add_argument("--flow-guidance", type=float, default=FLOW_GUIDANCE, help="mini-flow's guidance")
    parser.add_argument("--only", choices=("mini", "mini-flow"), help="measure one model (no comparison)")
    parser.add_argument("--card", action="store_true", help="write the figures into the model card")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    clip = str(args.trained / "mini-clip") if args.trained else "mini-clip"
    settings = {"mini": (args.steps, args.guidance), "mini-flow": (args.flow_steps, args.flow_guidance)}
    figures = {}
    for name, (steps, guidance) in settings.items():
        if args.only in (None, name):
            model = str(args.trained / name) if args.trained else name
            figures[name] = measure(model, clip, scenes=args.scenes, steps=steps, guidance=guidance)
            print(f"{name} ({steps} steps, guidance {guidance}):\n{render_table(figures[name], name)}\n", flush=True)
    if len(figures) == 2:
        print(f"mini-flow against mini (same run):\n{render_comparison(figures['mini'], figures['mini-flow'])}")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2) + "\n", encoding="utf-8")
    if args.card:
        from styleprefs.mini.card import write_card

        print(f"card: {write_card(figures, args.trained)}")


if __name__ == "__main__":
    main()
