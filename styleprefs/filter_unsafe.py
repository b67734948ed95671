"""``styleprefs filter-unsafe``: move unsafe rows of a finished dataset to ``quarantine.parquet``.

Backends: the keyword lists (always) OR the shipped caption model (``styleprefs.safety.caption``), optionally
a Hugging Face text classifier and an image checker (open_nsfw by default, offline; or the SD safety checker),
their scores stored as columns. The new shards, quarantine and manifest are prepared in ``.filter-tmp/``,
counts are checked (kept + quarantined = rows before), then swapped in, the replaced files going to
``.filter-old/``; replacing ``manifest.json`` is the commit. The card is written and both folders are
deleted after it, ``.filter-old/`` last: the next run (of any settings) rolls an uncommitted swap back
and finishes a committed one. ``--out`` works the same way into an empty folder, so it resumes too.
The dataset (and ``--out``) are locked for the whole run.
"""

from __future__ import annotations

import json
import math
import shutil
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterator

import pyarrow as pa

from styleprefs.errors import StyleprefsError
from styleprefs.images import decode
from styleprefs.inspect import FILTER_BACKUP, read_manifest, read_verified_manifest, shard_paths
from styleprefs.io import check_separate, write_json, write_parquet
from styleprefs.lock import LOCK_NAME, folder_lock
from styleprefs.progress import pair_progress
from styleprefs.safety.caption import MODEL_CATEGORY, CaptionCheck
from styleprefs.safety.learned import PromptModel
from styleprefs.safety.nsfw_image import OPEN_NSFW, OpenNsfwChecker
from styleprefs.safety.report import safety_summary
from styleprefs.safety.text import TextFilter
from styleprefs.schema import DATASET_SCHEMA, QUARANTINE_SCHEMA
from styleprefs.shards import read_table, write_shards
from styleprefs.swap import Swap

TMP, OLD = ".filter-tmp", FILTER_BACKUP
IMAGE_BATCH = 32
SWAP = Swap(TMP, OLD)


@dataclass(frozen=True)
class SafetyOptions:
    blocklists: tuple[str, ...] = ()
    allowlists: tuple[str, ...] = ()
    replace_default_lists: bool = False
    text_model: str | None = None  # sequence classifier id or path
    text_labels: tuple[str, ...] = ()  # the classifier's unsafe label names (default: by pattern)
    text_threshold: float = 0.5
    learned_text: bool = True  # the shipped caption model, beside the lists
    learned_text_threshold: float | None = None  # None: the one shipped with the model
    images: bool = False  # the command line turns it on (open_nsfw, offline, about 27 images/s on one core)
    image_model: str = OPEN_NSFW  # open_nsfw (offline, onnxruntime), or an SD safety checker id or path
    image_threshold: float | None = None  # None: the backend's own (open_nsfw 0.8; SD checker 0, its own rule)
    device: str = "cpu"

    def __post_init__(self) -> None:
        if not 0 <= self.text_threshold <= 1:  # also refuses NaN
            raise StyleprefsError(f"--text-threshold is a probability between 0 and 1, got {self.text_threshold}")
        if self.image_threshold is not None and not math.isfinite(self.image_threshold):
            raise StyleprefsError(f"--image-threshold must be a finite number, got {self.image_threshold}")


@dataclass
class FilterReport:
    dataset: Path
    rows_before: int
    quarantined: list[dict] = field(default_factory=list)
    status: str = "filtered"  # "filtered" | "no-op"

    def by_category(self) -> dict[str, int]:
        return safety_summary([], self.quarantined)["quarantined_by_category"]


class _Checkers:
    """The backends ``options`` asks for, loaded once."""

    def __init__(self, options: SafetyOptions):
        self.options = options
        lists = TextFilter(options.blocklists, options.allowlists, options.replace_default_lists)
        self.captions = CaptionCheck(lists, PromptModel() if options.learned_text else None,
                                     options.learned_text_threshold)
        self.text_model = self.image_model = None
        if options.text_model:
            from styleprefs.resolve import offline_or_path
            from styleprefs.safety.classifier import TextSafetyClassifier  # deferred: imports torch and transformers

            self.text_model = TextSafetyClassifier(offline_or_path(options.text_model), device=options.device,
                                                   unsafe_labels=options.text_labels or None)
        if options.images:
            self.image_model = _image_checker(options)
        self.image_threshold = options.image_threshold if options.image_threshold is not None else \
            getattr(self.image_model, "DEFAULT_THRESHOLD", None)

    @property
    def backends(self) -> list[str]:
        names = self.captions.backends
        if self.text_model:
            names.append(f"text-classifier:{self.options.text_model}")
        if self.image_model:
            names.append(f"image-checker:{self.options.image_model}")
        return names

    def judge(self, table: pa.Table) -> tuple[dict[str, list[float]], list[dict | None]]:
        """Score columns to store, and per row a quarantine record or None."""
        captions = table.column("caption").to_pylist()
        scores: dict[str, list[float]] = {}
        verdicts: list[dict | None] = [None] * table.num_rows
        if self.image_model:
            for slot in (0, 1):
                column = scores[f"safety_image_score_{slot}"] = self._image_scores(table.column(f"jpg_{slot}"))
                for i, score in enumerate(column):
                    if score > self.image_threshold and verdicts[i] is None:
                        verdicts[i] = _record(table, i, "sexual", f"jpg_{slot} score {score:.3f}", self.backends[-1])
        if self.text_model:
            column = scores["safety_text_score"] = self.text_model.scores(captions)
            for i, score in enumerate(column):
                if score >= self.options.text_threshold:
                    verdicts[i] = _record(table, i, "text-classifier", f"score {score:.3f}",
                                          f"text-classifier:{self.options.text_model}")
        for i, verdict in enumerate(self.captions.check_many(captions)):
            # the lists name a category, so they win over a bare score; the caption model's bare score does not
            if verdict.unsafe and (verdict.category != MODEL_CATEGORY or verdicts[i] is None):
                verdicts[i] = _record(table, i, verdict.category, verdict.matched, verdict.backend)
        return scores, verdicts

    def _image_scores(self, blobs: pa.ChunkedArray) -> list[float]:
        """Scores of encoded images, decoded a batch at a time: a shard's decoded images may not fit in memory."""
        return [score for start in range(0, len(blobs), IMAGE_BATCH)
                for score in self.image_model.scores([decode(b) for b in blobs[start:start + IMAGE_BATCH].to_pylist()])]


def _image_checker(options: SafetyOptions):
    """open_nsfw (offline) by default; any other name is an SD safety checker id or folder."""
    if options.image_model == OPEN_NSFW:
        return OpenNsfwChecker()
    from styleprefs.resolve import offline_or_path
    from styleprefs.safety.image import ImageSafetyChecker  # deferred: imports torch and diffusers

    return ImageSafetyChecker(offline_or_path(options.image_model), device=options.device)


def filter_unsafe(dataset: Path, options: SafetyOptions = SafetyOptions(), *, out: Path | None = None,
                  show_progress: bool = True) -> FilterReport:
    """Quarantine unsafe rows of ``dataset`` in place, or write the filtered copy to ``out``."""
    dataset = Path(dataset)
    read_manifest(dataset)  # before the lock: a folder that is no dataset is left untouched
    if out is not None:
        check_separate(Path(out), "DATASET", [dataset])
    with folder_lock(dataset), folder_lock(Path(out)) if out is not None else nullcontext():
        return _filter(dataset, options, Path(out) if out is not None else None, show_progress)


def _filter(dataset: Path, options: SafetyOptions, out: Path | None, show_progress: bool) -> FilterReport:
    SWAP.recover(dataset, fresh=False)
    if out is not None:
        SWAP.recover(out, fresh=True)
    manifest = read_verified_manifest(dataset)
    settings = json.loads(json.dumps(asdict(options)))  # as the manifest stores it
    rows_before = manifest["counts"]["kept"]
    if _already_filtered(manifest, settings, out):
        return FilterReport(dataset, rows_before, status="no-op")
    checkers = _Checkers(options)
    target = out or dataset
    judged = _judge_shards(dataset, manifest, checkers, show_progress)
    quarantined = [v for _, _, verdicts in judged for v in verdicts if v is not None]
    kept = rows_before - len(quarantined)
    new_manifest = _updated_manifest(manifest, checkers.backends, settings, quarantined, kept)
    staging = target / TMP
    tables = _kept_tables(judged)
    new_manifest["shards"] = write_shards(tables, kept, staging / "data", manifest["config"]["build"]["shard_size"])
    written = sum(s["rows"] for s in new_manifest["shards"])
    if written + len(quarantined) != rows_before:
        shutil.rmtree(staging)
        raise StyleprefsError(f"safety filter lost rows ({written} kept + {len(quarantined)} quarantined != {rows_before}); nothing was changed")
    old_quarantine = read_table(dataset / "quarantine.parquet", schema=QUARANTINE_SCHEMA)
    write_parquet(pa.concat_tables([old_quarantine, pa.Table.from_pylist(quarantined, schema=QUARANTINE_SCHEMA)]),
                  staging / "quarantine.parquet")
    if out is not None:
        shutil.copy2(dataset / "rejects.parquet", staging / "rejects.parquet")
    write_json(new_manifest, staging / "manifest.json")
    SWAP.commit(target, fresh=out is not None)
    return FilterReport(dataset, rows_before, quarantined)


def _already_filtered(manifest: dict, settings: dict, out: Path | None) -> bool:
    """In place: these settings already ran. With ``out``: it holds this filter's finished output,
    else it must be empty."""
    runs = manifest.get("safety", {}).get("runs", [])
    if out is None:
        return settings in runs
    if (out / "manifest.json").is_file():
        done = read_manifest(out)
        if done["config"] == manifest["config"] and done.get("safety", {}).get("runs") == [*runs, settings]:
            return True
    if any(p.name != LOCK_NAME for p in out.iterdir()):
        raise StyleprefsError(f"--out {out} is not empty; choose a new folder")
    return False


def _judge_shards(dataset: Path, manifest: dict, checkers: _Checkers, show_progress: bool) -> list[tuple]:
    """Pass 1: per shard (path, score columns, verdicts); only captions and images are read."""
    judged = []
    with pair_progress(manifest["counts"]["kept"], show_progress) as advance:
        for path in shard_paths(dataset, manifest):
            table = read_table(path, columns=["caption", "source", "jpg_0", "jpg_1"])
            scores, verdicts = checkers.judge(table)
            judged.append((path, scores, verdicts))
            advance(sum(v is None for v in verdicts), table.num_rows)
    return judged


def _kept_tables(judged: list[tuple]) -> Iterator[pa.Table]:
    """Pass 2: each shard with its new score columns, unsafe rows removed; one shard in memory."""
    for path, scores, verdicts in judged:
        table = read_table(path, schema=DATASET_SCHEMA)
        for column, values in scores.items():
            table = table.set_column(table.schema.get_field_index(column), DATASET_SCHEMA.field(column),
                                     pa.array(values, pa.float64()))
        yield table.filter(pa.array([v is None for v in verdicts]))


def _updated_manifest(manifest: dict, backends: list[str], settings: dict, quarantined: list[dict], kept: int) -> dict:
    new = json.loads(json.dumps(manifest))
    new["counts"]["kept"] = kept
    new["counts"]["quarantined"] += len(quarantined)
    previous = manifest.get("safety")
    new["safety"] = safety_summary(backends, quarantined, previous)
    new["safety"]["runs"] = (previous or {}).get("runs", []) + [settings]
    return new


def _record(table: pa.Table, i: int, category: str, matched: str, backend: str) -> dict:
    return {"source": table.column("source")[i].as_py(), "caption": table.column("caption")[i].as_py(),
            "category": category, "matched": matched, "backend": backend,
            "jpg_0": table.column("jpg_0")[i].as_py(), "jpg_1": table.column("jpg_1")[i].as_py()}
