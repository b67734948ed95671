"""Prompt lists for generation: dataset captions, text/TSV/JSON files, PartiPrompts, the HPSv2 benchmark.

``load_prompts(source)`` accepts

- ``parti`` (also ``partiprompts``, ``nateraw/parti-prompts``): PartiPrompts, 1,632 prompts, from the Hub
  dataset ``nateraw/parti-prompts`` (columns Prompt, Category, Challenge, Note). Offline, pass a local copy
  (e.g. the project's ``PartiPrompts.tsv``) as a path instead.
- ``hpsv2`` (also ``zhwang/HPDv2``): the HPSv2 benchmark, 3,200 prompts = 800 each of anime, concept-art,
  paintings and photo, from ``benchmark/<style>.json`` in the Hub dataset ``zhwang/HPDv2``. Offline, pass
  the folder holding those four files (or one of them).
- a styleprefs dataset folder, or Pick-a-Pic-schema Parquet file/folder/glob: its captions, in row order.
- a ``.txt`` file (one prompt per line), ``.tsv``/``.csv`` (column Prompt/prompt/caption/text, else the first;
  a Category/category/style column is kept), ``.json`` (a list of strings or of objects with a prompt
  field, or an object mapping a category to such a list), ``.jsonl``, or ``.parquet`` with a caption/prompt column.
- a folder of ``*.json`` prompt files (each file's stem is the category, as in the HPSv2 benchmark).

Prompts are stripped; blank ones are skipped and repeats kept once (first occurrence), so a prompt's text
identifies it. Each prompt's noise seeds come from its text (see ``generate.image_seed``), so two
models, or two prompt lists sharing prompts, are compared on the same noise.
"""

from __future__ import annotations

import csv
import glob
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from styleprefs.errors import StyleprefsError

PARTI_NAMES = ("parti", "partiprompts", "parti-prompts", "nateraw/parti-prompts")
PARTI_REPO = "nateraw/parti-prompts"
HPSV2_NAMES = ("hpsv2", "hpdv2", "zhwang/hpdv2")
HPSV2_REPO = "zhwang/HPDv2"
HPSV2_STYLES = ("anime", "concept-art", "paintings", "photo")
PROMPT_FIELDS = ("prompt", "caption", "text")
CATEGORY_FIELDS = ("category", "style")


@dataclass(frozen=True)
class PromptItem:
    """One prompt; ``category`` is the PartiPrompts category, HPSv2 style or "" when the source has none."""

    prompt: str
    category: str = ""


def load_prompts(source: str, *, limit: int | None = None) -> list[PromptItem]:
    """The prompts of ``source`` (see the module docstring), first ``limit`` only if given."""
    if limit is not None and limit < 1:
        raise StyleprefsError(f"--limit must be at least 1, got {limit}")
    items = _dedupe(_read(source))
    if not items:
        raise StyleprefsError(f"prompt source {source} holds no prompts")
    return items[:limit] if limit else items


def describe(source: str) -> str:
    """A canonical name for ``source``: the Hub id of a named benchmark, else the path or string as given."""
    low = source.lower()
    if low in PARTI_NAMES:
        return PARTI_REPO
    if low in HPSV2_NAMES:
        return f"{HPSV2_REPO}/benchmark"
    return source


def _read(source: str) -> list[PromptItem]:
    low = source.lower()
    path = Path(source).expanduser()
    if low in PARTI_NAMES and not path.exists():
        return _parti_from_hub()
    if low in HPSV2_NAMES and not path.exists():
        return _hpsv2_from_hub()
    if glob.has_magic(source) or (path.is_dir() and _is_dataset_folder(path)):
        return _dataset_captions(source)
    if (path / "model_index.json").is_file():
        raise StyleprefsError(f"--prompts {source} is a model (pipeline) folder, not prompts: give a dataset, a prompt "
                              "file or folder, parti or hpsv2 (the model goes in --model)")
    if path.is_dir():
        files = sorted(path.glob("*.json"))
        if not files:
            raise StyleprefsError(f"prompt folder {source} holds no .json prompt files, no Parquet files and "
                                  "no styleprefs dataset")
        return [item for f in files for item in _read_json(f, category=f.stem)]
    if path.is_file():
        return _read_file(path)
    raise StyleprefsError(f"prompt source {source!r} does not exist: give a file, a folder, a dataset, "
                          f"or one of parti, hpsv2")


def _is_dataset_folder(path: Path) -> bool:
    return (path / "manifest.json").is_file() or any(path.rglob("*.parquet"))


def _read_file(path: Path) -> list[PromptItem]:
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        return _dataset_captions(str(path))
    if suffix == ".json":
        return _read_json(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise StyleprefsError(f"cannot read prompt file {path}: {exc}") from None
    if suffix == ".jsonl":
        try:
            return _from_json([json.loads(line) for line in text.splitlines() if line.strip()], "", path)
        except json.JSONDecodeError as exc:
            raise StyleprefsError(f"prompt file {path} is not valid JSON Lines: {exc}") from None
    if suffix in (".tsv", ".csv"):
        return _read_table(text, "\t" if suffix == ".tsv" else ",", path)
    return [PromptItem(line) for line in text.splitlines()]


def _read_table(text: str, delimiter: str, path: Path) -> list[PromptItem]:
    rows = list(csv.reader(text.splitlines(), delimiter=delimiter))
    if not rows:
        return []
    header = [h.strip().lower() for h in rows[0]]
    prompt_col = next((header.index(f) for f in PROMPT_FIELDS if f in header), None)
    if prompt_col is None:  # no header: every row is data, first column the prompt
        prompt_col, category_col, data = 0, None, rows
    else:
        category_col = next((header.index(f) for f in CATEGORY_FIELDS if f in header), None)
        data = rows[1:]
    return [PromptItem(row[prompt_col], row[category_col] if category_col is not None and category_col < len(row)
                       else "") for row in data if len(row) > prompt_col]


def _read_json(path: Path, category: str = "") -> list[PromptItem]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise StyleprefsError(f"cannot read prompt file {path}: {exc}") from None
    return _from_json(data, category, path)


def _from_json(data, category: str, path: Path) -> list[PromptItem]:
    if isinstance(data, dict):
        if any(key in data for key in PROMPT_FIELDS):
            data = [data]
        else:  # {category: [prompts]}
            return [item for key, value in data.items() for item in _from_json(value, str(key), path)]
    if not isinstance(data, list):
        raise StyleprefsError(f"prompt file {path} must hold a list of prompts or a mapping category -> list")
    items = []
    for entry in data:
        if isinstance(entry, str):
            items.append(PromptItem(entry, category))
        elif isinstance(entry, dict):
            lowered = {str(k).lower(): v for k, v in entry.items()}
            text = next((lowered[f] for f in PROMPT_FIELDS if f in lowered), None)
            if not isinstance(text, str):
                raise StyleprefsError(f"prompt file {path}: an entry has no prompt/caption/text string field")
            cat = next((str(lowered[f]) for f in CATEGORY_FIELDS if f in lowered), category)
            items.append(PromptItem(text, cat))
        else:
            raise StyleprefsError(f"prompt file {path}: entries must be strings or objects, got {type(entry).__name__}")
    return items


def _dataset_captions(source: str) -> list[PromptItem]:
    import pyarrow.parquet as pq

    from styleprefs.trainer.data import dataset_files

    items = []
    for file in dataset_files(source):
        try:
            names = pq.read_schema(file).names
            column = next((c for c in ("caption", "prompt", "Prompt") if c in names), None)
            if column is None:
                raise StyleprefsError(f"{file} has no caption or prompt column")
            items += [PromptItem(c or "") for c in pq.read_table(file, columns=[column]).column(column).to_pylist()]
        except OSError as exc:
            raise StyleprefsError(f"cannot read Parquet file {file}: {exc}") from None
    return items


def _parti_from_hub() -> list[PromptItem]:
    try:
        from datasets import load_dataset

        table = load_dataset(PARTI_REPO, split="train")
        return [PromptItem(row["Prompt"], row.get("Category") or "") for row in table]
    except Exception as exc:  # offline, missing package data, changed repo: one message
        raise StyleprefsError(
            f"cannot load PartiPrompts from the Hub ({PARTI_REPO}): {_first_line(exc)}; offline, pass a local copy "
            "(PartiPrompts.tsv with columns Prompt, Category, ...) as --prompts PATH") from None


def _hpsv2_from_hub() -> list[PromptItem]:
    from huggingface_hub import hf_hub_download

    items = []
    for style in HPSV2_STYLES:
        try:
            path = hf_hub_download(HPSV2_REPO, f"{style}.json", subfolder="benchmark", repo_type="dataset")
        except Exception as exc:
            raise StyleprefsError(
                f"cannot download the HPSv2 benchmark prompts ({HPSV2_REPO} benchmark/{style}.json): {_first_line(exc)}; "
                "offline, pass a folder holding anime.json, concept-art.json, paintings.json and photo.json "
                "as --prompts PATH") from None
        items += _read_json(Path(path), category=style)
    return items


def _dedupe(items: Iterable[PromptItem]) -> list[PromptItem]:
    seen: set[str] = set()
    out = []
    for item in items:
        text = " ".join(item.prompt.split()) if item.prompt else ""
        if text and text not in seen:
            seen.add(text)
            out.append(PromptItem(text, item.category.strip()))
    return out


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
