"""Recall, false-positive rate and throughput of the offline caption check: the word lists alone (the baseline)
and the lists OR the shipped caption model (what `build` and `filter-unsafe` run).

    .venv/bin/python bench/text_safety_eval.py [--prompts TSV ...] [--errors]
        [--extra-safe FILE]   # more captions assumed safe (one per line or the first column of a TSV; # comments)
        [--nibbler-r4 JSON ...] [--i2p CSV] [--coco CSV] [--unlearndiff CSV ...]   # held-out public sets

Held-out public sets (never trained or tuned on; the caption model's trainer refuses them): Adversarial Nibbler
round 4 (`round4/submitted/{train,dev}.json` of google-research-datasets/adversarial-nibbler; prompts most
annotators judged text-unsafe, and the false positives on those they judged safe), I2P (`prompts/i2p.csv` of
OPTML-Group/Diffusion-MU-Attack; distinct prompts whose images were at least 80% inappropriate), the UnlearnDiff
subsets cut from it (`prompts/{nudity,violence,illegal}.csv`, every prompt), and COCO captions
(`prompts/coco_10k.csv`, false positives). They are scored beside the blind set, with the issue's goals.

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
import string
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console
from rich.table import Table

from styleprefs.safety import corpora
from styleprefs.safety.caption import CaptionCheck
from styleprefs.safety.corpora import LabelledPrompt
from styleprefs.safety.learned import PromptModel
from styleprefs.safety.text import TextFilter

DATA = Path(__file__).resolve().parents[1] / "tests" / "data"
DEFAULT_PROMPTS = DATA / "safety_prompts.tsv"
FRESH_PROMPTS = DATA / "safety_prompts_fresh.tsv"
HOLDOUT_PROMPTS = DATA / "safety_prompts_holdout.tsv"
PROBE_PROMPTS = sorted(DATA.glob("safety_prompts_probe*.tsv"))
BLIND_PROMPTS = DATA / "safety_prompts_blind.tsv"  # never tuned on: see the module docstring
ALL_PROMPTS = [DEFAULT_PROMPTS, FRESH_PROMPTS, HOLDOUT_PROMPTS, *PROBE_PROMPTS, BLIND_PROMPTS]
RECALL_TARGET = 0.95
FPR_TARGET = 0.03
I2P_MIN_INAPPROPRIATE = 80.0
THROUGHPUT_GOAL = 5000


@dataclass(frozen=True)
class Outcome:
    row: LabelledPrompt
    verdict: object  # anything with .unsafe and .category (TextVerdict, CaptionVerdict)


@dataclass(frozen=True)
class Rates:
    n: int
    flagged: int
    right_category: int

    @property
    def rate(self) -> float:
        return self.flagged / self.n if self.n else 0.0


def load_prompts(path: Path = DEFAULT_PROMPTS) -> list[LabelledPrompt]:
    return corpora.read_labelled(path)


def run(checker, rows: list[LabelledPrompt]) -> list[Outcome]:
    """``checker``: a TextFilter or a CaptionCheck."""
    return [Outcome(row, verdict) for row, verdict in zip(rows, checker.check_many(r.prompt for r in rows))]


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


def throughput(checker, captions: list[str], total: int = 20_000) -> float:
    """Captions per CPU second over ``total`` checks (CPU time, so other processes on the machine do not count)."""
    stream = (captions * (total // len(captions) + 1))[:total]
    start = time.process_time()
    checker.check_many(stream)
    return total / (time.process_time() - start)


def unseen(captions: list[str], total: int = 20_000, seed: int = 0) -> list[str]:
    """``total`` captions, each with three made-up words so that no caption repeats a cached word set."""
    rng = random.Random(seed)
    words = lambda: " ".join("".join(rng.choices(string.ascii_lowercase, k=rng.randint(4, 9))) for _ in range(3))
    return [f"{captions[i % len(captions)]}, {words()}" for i in range(total)]


def joined(captions: list[str], n: int = 3) -> list[str]:
    """Longer captions, ``n`` prompts each (Pick-a-Pic prompts are often long)."""
    return [", ".join(captions[(i + k * 97) % len(captions)] for k in range(n)) for i in range(len(captions))]


def throughput_table(checkers: dict[str, object], captions: list[str]) -> Table:
    """Each checker's captions per second on one core; the first checker is the baseline of the ratio."""
    table = Table(title=f"throughput, one core (CPU time; goal >= {THROUGHPUT_GOAL:,}/s)")
    for column in ("check", "captions", "words per caption", "repeated (warm caches)", "every caption unseen",
                   "unseen vs baseline"):
        table.add_column(column, justify="left" if column in ("check", "captions") else "right")
    for name, sample in (("labelled prompts", captions), ("three prompts joined", joined(captions))):
        words = sum(len(c.split()) for c in sample) / len(sample)
        cold_sample = unseen(sample)
        baseline = None
        for check_name, checker in checkers.items():
            warm, cold = throughput(checker, sample), throughput(checker, cold_sample)
            baseline = baseline or cold
            table.add_row(check_name, name, f"{words:.0f}", f"{warm:,.0f}/s", f"{cold:,.0f}/s",
                          f"{cold / baseline:.2f}")
    return table


def read_extra(path: Path) -> list[str]:
    lines = path.read_text(encoding="utf-8").splitlines()
    return [line.split("\t")[0] for line in lines if line.strip() and not line.startswith("#")]


def report(outcomes: list[Outcome], console: Console, name: str = "labelled prompts") -> bool:
    recall, fpr = rates(outcomes, unsafe=True), rates(outcomes, unsafe=False)
    table = Table(title=f"caption check: {name}")
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
            console.print(f"[{kind}] expected {o.row.category}, got {o.verdict.category} ({o.verdict.matched}): "
                          f"{o.row.prompt}", markup=False)


@dataclass(frozen=True)
class HeldOut:
    """One line of the held-out table: the share of ``texts`` flagged, to be at least / at most ``goal``."""

    name: str
    texts: list[str]
    goal: float | None
    at_least: bool  # recall (True) or false-positive rate (False)


def held_out_sets(args: argparse.Namespace) -> list[HeldOut]:
    sets = []
    if args.nibbler_r4:
        rows = [r for path in args.nibbler_r4 for r in corpora.read_nibbler(path)]
        unsafe, safe = [r.prompt for r in rows if r.unsafe], [r.prompt for r in rows if not r.unsafe]
        sets.append(HeldOut("Nibbler r4, text judged unsafe (recall)", unsafe, 0.50, True))
        sets.append(HeldOut("Nibbler r4, text judged safe (FPR)", safe, 0.20, False))
    if args.i2p:
        sets.append(HeldOut(f"I2P, >= {I2P_MIN_INAPPROPRIATE:.0f}% inappropriate images (flagged)",
                            corpora.read_i2p(args.i2p, I2P_MIN_INAPPROPRIATE), 0.35, True))
    for path in args.unlearndiff:
        sets.append(HeldOut(f"UnlearnDiff {path.stem} (flagged)", corpora.read_i2p(path, 0.0), None, True))
    if args.coco:
        sets.append(HeldOut("COCO captions (FPR)", corpora.read_captions(args.coco), 0.01, False))
    blind = load_prompts(BLIND_PROMPTS)
    sets.append(HeldOut("blind set, unsafe (recall)", [r.prompt for r in blind if r.unsafe], 0.85, True))
    sets.append(HeldOut("blind set, safe near misses (FPR)", [r.prompt for r in blind if not r.unsafe], 0.05, False))
    return sets


def held_out_table(sets: list[HeldOut], rules: CaptionCheck, combined: CaptionCheck) -> Table:
    table = Table(title="held-out sets: share flagged, word lists alone vs lists OR caption model")
    for column in ("set", "n", "lists", "lists OR model", "model alone", "ratio", "goal", "met"):
        table.add_column(column, justify="left" if column == "set" else "right")
    for held in sets:
        base = _share(rules.check_many(held.texts))
        verdicts = combined.check_many(held.texts)
        both = _share(verdicts)
        model = sum(v.score >= combined.threshold for v in verdicts) / len(verdicts)
        reached = held.goal is not None and (both >= held.goal if held.at_least else both <= held.goal)
        met = "-" if held.goal is None else "yes" if reached else "NO"
        goal = "-" if held.goal is None else f"{'>=' if held.at_least else '<='} {held.goal}"
        table.add_row(held.name, str(len(held.texts)), f"{base:.3f}", f"{both:.3f}", f"{model:.3f}",
                      f"{both / base:.2f}" if base else "-", goal, met)
    return table


def _share(verdicts: list) -> float:
    return sum(v.unsafe for v in verdicts) / len(verdicts) if verdicts else 0.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=Path, nargs="+", default=ALL_PROMPTS)
    parser.add_argument("--extra-safe", type=Path, help="captions assumed safe; flagged ones are listed")
    parser.add_argument("--errors", action="store_true", help="list misses, false positives, wrong categories")
    parser.add_argument("--nibbler-r4", type=Path, nargs="+", default=[], help="Nibbler round 4 submitted JSON")
    parser.add_argument("--i2p", type=Path, help="I2P CSV (prompt, inappropriate_percentage)")
    parser.add_argument("--unlearndiff", type=Path, nargs="+", default=[], help="UnlearnDiff subsets of I2P (CSV)")
    parser.add_argument("--coco", type=Path, help="COCO captions CSV (prompt column)")
    args = parser.parse_args()
    console = Console()

    start = time.perf_counter()
    rules = CaptionCheck(TextFilter())
    combined = CaptionCheck(TextFilter(), PromptModel())
    console.print(f"lists and caption model loaded in {time.perf_counter() - start:.3f} s; model "
                  f"{combined.model.name}, threshold {combined.threshold}")
    for path in args.prompts:
        rows = load_prompts(path)
        report(run(rules, rows), console, f"{path.name}, word lists alone")
        outcomes = run(combined, rows)
        report(outcomes, console, f"{path.name}, lists OR caption model")
        if args.errors:
            print_errors(outcomes, console)
    if args.extra_safe:
        extra = read_extra(args.extra_safe)
        flagged = [(c, v) for c, v in zip(extra, combined.check_many(extra)) if v.unsafe]
        console.print(f"{args.extra_safe}: {len(flagged)} of {len(extra)} flagged")
        for caption, verdict in flagged:
            console.print(f"  {verdict.category} ({verdict.matched}): {caption}", markup=False)
    console.print(held_out_table(held_out_sets(args), rules, combined))
    captions = [r.prompt for r in load_prompts(args.prompts[0])]
    console.print(throughput_table({"word lists alone (baseline)": rules, "lists OR caption model": combined},
                                   captions))


if __name__ == "__main__":
    main()
