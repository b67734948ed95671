"""Readers for the labelled prompt corpora the learned caption signal is trained and measured on.

- Adversarial Nibbler "submitted" JSON (google-research-datasets/adversarial-nibbler, CC-BY-4.0): a prompt is
  unsafe when most of its annotators' ``text_safety_validation`` say ``text_unsafe``, safe when most say
  ``text_safe``; other prompts are dropped. Repeated prompts (case and outer spaces ignored) pool their votes.
  The participants' ``rewritten_prompt`` (a plain description of the harm in the image) is read apart.
- I2P CSV (``prompt``, ``inappropriate_percentage``): the distinct prompts whose images were at least N%
  inappropriate.
- Caption files assumed safe: CSV with a ``prompt`` column, TSV with a ``Prompt`` column (else the first),
  or plain text, one caption a line (``#`` comments).
- This project's labelled TSV: ``label<TAB>category<TAB>prompt``, ``\\uXXXX`` escapes allowed.
"""

from __future__ import annotations

import csv
import json
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from styleprefs.errors import StyleprefsError

_ESCAPE = re.compile(r"\\u([0-9a-fA-F]{4})")


@dataclass(frozen=True)
class LabelledPrompt:
    unsafe: bool
    category: str
    prompt: str


def read_labelled(path: Path) -> list[LabelledPrompt]:
    """This project's ``label<TAB>category<TAB>prompt`` files."""
    rows = []
    for number, line in enumerate(_read(path).splitlines(), 1):
        if not line.strip() or line.startswith("#") or line.startswith("label\t"):
            continue
        fields = line.split("\t")
        if len(fields) != 3 or fields[0] not in ("safe", "unsafe"):
            raise StyleprefsError(f"{path}, line {number}: expected 'safe|unsafe<TAB>category<TAB>prompt'")
        rows.append(LabelledPrompt(fields[0] == "unsafe", fields[1],
                                   _ESCAPE.sub(lambda m: chr(int(m[1], 16)), fields[2])))
    return rows


def read_nibbler(path: Path) -> list[LabelledPrompt]:
    """Prompts of an Adversarial Nibbler submitted-JSON file with a majority text-safety label, one per prompt."""
    votes: dict[str, Counter] = {}
    first: dict[str, str] = {}
    for prompt, annotations, _ in _nibbler_rows(path):
        key = prompt.strip().casefold()
        first.setdefault(key, prompt.strip())
        votes.setdefault(key, Counter()).update(v for a in annotations for v in a.get("text_safety_validation") or [])
    rows = []
    for key, counts in votes.items():
        total = sum(counts.values())
        if counts["text_unsafe"] * 2 > total:
            rows.append(LabelledPrompt(True, "nibbler", first[key]))
        elif counts["text_safe"] * 2 > total:
            rows.append(LabelledPrompt(False, "nibbler", first[key]))
    return rows


def read_nibbler_rewritten(path: Path) -> list[str]:
    """The participants' plain descriptions of the harm (more than one word: "NA" is common), for images most
    annotators judged unsafe."""
    texts = {}
    for _, annotations, submission in _nibbler_rows(path):
        text = (submission.get("rewritten_prompt") or "").strip()
        image = Counter(v for a in annotations for v in a.get("image_safety_validation") or [])
        if len(text.split()) > 1 and image["image_unsafe"] * 2 > sum(image.values()):
            texts.setdefault(text.casefold(), text)
    return list(texts.values())


def _nibbler_rows(path: Path) -> list[tuple[str, list[dict], dict]]:
    try:
        data = json.loads(_read(path))
        prompts, validation, submissions = data["prompt"], data["validation"], data["submission_annotations"]
    except (json.JSONDecodeError, KeyError, TypeError):
        raise StyleprefsError(f"{path}: not an Adversarial Nibbler submitted-prompts JSON file (needs 'prompt', "
                              "'validation' and 'submission_annotations')") from None
    return [(prompt, [_as_dict(a) for a in validation.get(key) or []], _as_dict(submissions.get(key) or {}))
            for key, prompt in prompts.items() if isinstance(prompt, str) and prompt.strip()]


def _as_dict(value: str | dict) -> dict:
    return json.loads(value) if isinstance(value, str) else value


def read_i2p(path: Path, min_inappropriate: float = 80.0) -> list[str]:
    """I2P prompts whose Stable Diffusion images were at least ``min_inappropriate`` percent inappropriate."""
    rows = _csv_rows(path, "prompt", "inappropriate_percentage")
    chosen = (r["prompt"] for r in rows
              if r["prompt"].strip() and float(r["inappropriate_percentage"]) >= min_inappropriate)
    return list(dict.fromkeys(chosen))  # the copies repeat some prompts


def read_captions(path: Path) -> list[str]:
    """Captions of a CSV (``prompt`` column), TSV (``Prompt`` column, else the first) or text file."""
    path = Path(path)
    if path.suffix == ".csv":
        return [r["prompt"] for r in _csv_rows(path, "prompt") if r["prompt"].strip()]
    lines = [line for line in _read(path).splitlines() if line.strip() and not line.startswith("#")]
    if path.suffix != ".tsv":
        return [line.strip() for line in lines]
    header = lines[0].split("\t") if lines else []
    column = header.index("Prompt") if "Prompt" in header else 0
    body = lines[1:] if "Prompt" in header else lines
    return [fields[column] for fields in (line.split("\t") for line in body) if len(fields) > column]


def _csv_rows(path: Path, *columns: str) -> list[dict]:
    rows = list(csv.DictReader(_read(path).splitlines()))
    missing = [c for c in columns if rows and c not in rows[0]]
    if not rows or missing:
        raise StyleprefsError(f"{path}: expected a CSV file with column(s) {', '.join(columns)}")
    return rows


def _read(path: Path) -> str:
    try:
        return Path(path).read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise StyleprefsError(f"{path}: cannot read it ({getattr(exc, 'strerror', None) or exc})") from None
