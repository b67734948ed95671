"""Recall, false-positive rate and throughput of the offline text safety filter.

    .venv/bin/python bench/text_safety_eval.py [--prompts TSV ...] [--errors]
        [--extra-safe FILE]   # more captions assumed safe (one per line or the first column of a TSV; # comments)

By default every labelled set is scored, each on its own: the tuning set (safety_prompts.tsv), the fresh and
holdout sets written for issue 13 (safety_prompts_fresh.tsv, safety_prompts_holdout.tsv) and five probe sets
(safety_prompts_probe*.tsv) that the engineer changing the lists wrote one after another, each scored once
before the next round of changes. Recall is over unsafe rows (flagged at all; "right category" is reported
beside it), the false-positive rate over safe rows, both per category (for safe rows the category is the one
the prompt is a near miss for). Throughput is measured twice on one core: captions repeated (the per-word
caches are warm, as on a real corpus where most words recur) and every caption made unseen by adding made-up
words (cold caches). tests/data/safety_near_misses.txt holds 220 more safe near misses for --extra-safe.

The blind set (safety_prompts_blind.tsv, 330 unsafe and 126 safe near-miss captions) was written by someone
who never saw the lists, the filter or the other sets, while this pass was under way, and was scored once
after it: recall 0.694 -> 0.818 (sexual 0.90 -> 0.95, minors 0.75 -> 0.79, violence 0.73 -> 0.86, self-harm
0.56 -> 0.73, hate 0.49 -> 0.73), FPR 0.024 -> 0.032. It is the honest figure; never change the lists for it.

Every other set here has been tuned on, so their scores are in-distribution. Another estimate for unseen
prompts is each probe set's first score, taken before the lists were changed for it: 0.618 for the first
probe (the filter as it was before issue 13's second pass, FPR 0.062), then 0.822, 0.818, 0.784 and 0.851 for
probes 2 to 5 (violence the weakest at 0.60-0.73), with false positives 2 of 46 and none of 32, 26 and 32,
where the filter before this pass scored 0.733, 0.670, 0.635 and 0.743. Expect about four fifths recall on
phrasings the lists have never seen, more on sexual content, less on violence; keep the image check.

Issue 13's second pass (acts done to a living being, inflections, framings, extremism, despair; lists grown
by category), before -> after, recall / FPR:

    tuning    0.995 / 0.003 -> 1.000 / 0.003     probe   0.618 / 0.062 -> 0.940 / 0.018
    fresh     0.953 / 0     -> 0.991 / 0         probe2  0.733 / 0.065 -> 0.960 / 0.043
    holdout   0.800 / 0     -> 0.967 / 0         probe3  0.670 / 0     -> 0.966 / 0
                                                 probe4  0.635 / 0     -> 0.892 / 0
                                                 probe5  0.743 / 0     -> 0.932 / 0

Near misses flagged: 15 -> 9 of 220; PartiPrompts: 1 of 1632 before and after ("a closet without clothes").
Throughput on one core, warm / cold caches: 64k / 30k captions/s before, 51k / 24k after (three prompts
joined: 23k / 22k -> 18k / 17k), about 1.25-1.3x slower.
"""

from __future__ import annotations

import argparse
import random
import re
import string
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console
from rich.table import Table

from styleprefs.safety.text import TextFilter, TextVerdict

DATA = Path(__file__).resolve().parents[1] / "tests" / "data"
DEFAULT_PROMPTS = DATA / "safety_prompts.tsv"
FRESH_PROMPTS = DATA / "safety_prompts_fresh.tsv"
HOLDOUT_PROMPTS = DATA / "safety_prompts_holdout.tsv"
PROBE_PROMPTS = sorted(DATA.glob("safety_prompts_probe*.tsv"))
BLIND_PROMPTS = DATA / "safety_prompts_blind.tsv"  # never tuned on: see the module docstring
ALL_PROMPTS = [DEFAULT_PROMPTS, FRESH_PROMPTS, HOLDOUT_PROMPTS, *PROBE_PROMPTS, BLIND_PROMPTS]
RECALL_TARGET = 0.95
FPR_TARGET = 0.03
_ESCAPE = re.compile(r"\\u([0-9a-fA-F]{4})")


@dataclass(frozen=True)
class LabelledPrompt:
    unsafe: bool
    category: str
    prompt: str


@dataclass(frozen=True)
class Outcome:
    row: LabelledPrompt
    verdict: TextVerdict


@dataclass(frozen=True)
class Rates:
    n: int
    flagged: int
    right_category: int

    @property
    def rate(self) -> float:
        return self.flagged / self.n if self.n else 0.0


def load_prompts(path: Path = DEFAULT_PROMPTS) -> list[LabelledPrompt]:
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.strip() or line.startswith("#") or line.startswith("label\t"):
            continue
        label, category, prompt = line.split("\t")
        if label not in ("safe", "unsafe"):
            raise ValueError(f"{path}: label must be safe or unsafe, got {label!r}")
        rows.append(LabelledPrompt(label == "unsafe", category, _ESCAPE.sub(lambda m: chr(int(m[1], 16)), prompt)))
    return rows


def run(text_filter: TextFilter, rows: list[LabelledPrompt]) -> list[Outcome]:
    return [Outcome(row, verdict) for row, verdict in zip(rows, text_filter.check_many(r.prompt for r in rows))]


def rates(outcomes: list[Outcome], unsafe: bool) -> dict[str, Rates]:
    """Per category and "all": how many rows, how many flagged, how many flagged with the row's category."""
    groups: dict[str, list[Outcome]] = defaultdict(list)
    for outcome in outcomes:
        if outcome.row.unsafe == unsafe:
            groups[outcome.row.category].append(outcome)
            groups["all"].append(outcome)
    return {name: _count(group) for name, group in sorted(groups.items())}


def _count(group: list[Outcome]) -> Rates:
    flagged = [o for o in group if o.verdict.unsafe]
    return Rates(len(group), len(flagged), sum(o.verdict.category == o.row.category for o in flagged))


def throughput(text_filter: TextFilter, captions: list[str], total: int = 20_000) -> float:
    """Captions per CPU second over ``total`` checks (CPU time, so other processes on the machine do not count)."""
    stream = (captions * (total // len(captions) + 1))[:total]
    start = time.process_time()
    text_filter.check_many(stream)
    return total / (time.process_time() - start)


def unseen(captions: list[str], total: int = 20_000, seed: int = 0) -> list[str]:
    """``total`` captions, each with three made-up words so that no caption repeats a cached word set."""
    rng = random.Random(seed)
    words = lambda: " ".join("".join(rng.choices(string.ascii_lowercase, k=rng.randint(4, 9))) for _ in range(3))
    return [f"{captions[i % len(captions)]}, {words()}" for i in range(total)]


def joined(captions: list[str], n: int = 3) -> list[str]:
    """Longer captions, ``n`` prompts each (Pick-a-Pic prompts are often long)."""
    return [", ".join(captions[(i + k * 97) % len(captions)] for k in range(n)) for i in range(len(captions))]


def throughput_table(text_filter: TextFilter, captions: list[str]) -> Table:
    table = Table(title="throughput, one core (CPU time)")
    for column in ("captions", "words per caption", "repeated (warm caches)", "every caption unseen"):
        table.add_column(column, justify="left" if column == "captions" else "right")
    for name, sample in (("labelled prompts", captions), ("three prompts joined", joined(captions))):
        words = sum(len(c.split()) for c in sample) / len(sample)
        table.add_row(name, f"{words:.0f}", f"{throughput(text_filter, sample):,.0f}/s",
                      f"{throughput(text_filter, unseen(sample)):,.0f}/s")
    return table


def read_extra(path: Path) -> list[str]:
    lines = path.read_text(encoding="utf-8").splitlines()
    return [line.split("\t")[0] for line in lines if line.strip() and not line.startswith("#")]


def report(outcomes: list[Outcome], console: Console, name: str = "labelled prompts") -> bool:
    recall, fpr = rates(outcomes, unsafe=True), rates(outcomes, unsafe=False)
    table = Table(title=f"text safety filter: {name}")
    for column in ("category", "unsafe n", "recall", "right category", "safe n", "false positives", "FPR"):
        table.add_column(column, justify="left" if column == "category" else "right")
    empty = Rates(0, 0, 0)
    for name in sorted(set(recall) | set(fpr), key=lambda c: (c == "all", c)):
        r, f = recall.get(name, empty), fpr.get(name, empty)
        table.add_row(name, str(r.n), f"{r.rate:.3f}" if r.n else "-", str(r.right_category) if r.n else "-",
                      str(f.n), str(f.flagged) if f.n else "-", f"{f.rate:.3f}" if f.n else "-")
    console.print(table)
    ok = recall["all"].rate >= RECALL_TARGET and fpr["all"].rate <= FPR_TARGET
    console.print(f"targets: recall >= {RECALL_TARGET}, FPR <= {FPR_TARGET} -> {'met' if ok else 'NOT met'}")
    return ok


def print_errors(outcomes: list[Outcome], console: Console) -> None:
    for o in outcomes:
        wrong_flag = o.verdict.unsafe != o.row.unsafe
        wrong_category = o.row.unsafe and o.verdict.unsafe and o.verdict.category != o.row.category
        if wrong_flag or wrong_category:
            kind = "false positive" if not o.row.unsafe else "miss" if wrong_flag else "category"
            console.print(f"[{kind}] expected {o.row.category}, got {o.verdict.category} ({o.verdict.term}): "
                          f"{o.row.prompt}", markup=False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=Path, nargs="+", default=ALL_PROMPTS)
    parser.add_argument("--extra-safe", type=Path, help="captions assumed safe; flagged ones are listed")
    parser.add_argument("--errors", action="store_true", help="list misses, false positives, wrong categories")
    args = parser.parse_args()
    console = Console()

    start = time.perf_counter()
    text_filter = TextFilter()
    console.print(f"lists loaded in {time.perf_counter() - start:.3f} s")
    for path in args.prompts:
        outcomes = run(text_filter, load_prompts(path))
        report(outcomes, console, path.name)
        if args.errors:
            print_errors(outcomes, console)
    if args.extra_safe:
        extra = read_extra(args.extra_safe)
        flagged = [(c, v) for c, v in zip(extra, text_filter.check_many(extra)) if v.unsafe]
        console.print(f"{args.extra_safe}: {len(flagged)} of {len(extra)} flagged")
        for caption, verdict in flagged:
            console.print(f"  {verdict.category} ({verdict.term}): {caption}", markup=False)

    console.print(throughput_table(text_filter, [r.prompt for r in load_prompts(args.prompts[0])]))


if __name__ == "__main__":
    main()
