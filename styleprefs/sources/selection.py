"""Which source rows a build reads, and in which order (``build --models/--has-label/--max-per-prompt/
--unique-captions/--sample``).

Filters, each optional; a row is used when it passes them all (rows that do not are skipped and counted
by reason, and are not part of read = kept + rejected + quarantined):

- ``models``: both ``model_0`` and ``model_1`` must match. A shell-style glob matched against the whole
  name (``*dream*``), or with the prefix ``re:`` a regular expression searched in it (``re:^dreamlike``);
  case is ignored either way. Diffusion-DPO's Dreamlike-only subset is ``--models '*dream*'``.
- ``has_label``: ``label_0`` must be 0 or 1, which drops ties (0.5) and unlabelled rows.
- ``max_per_prompt`` (``--unique-captions`` is 1): at most N rows per caption (case and spacing ignored),
  the first ones in selection order.

Order: ``sequential`` reads the source in its own order (files sorted, rows in file order), as builds
always have. ``random`` needs Parquet (local files or a Hub dataset): the row groups of every file are
counted from the Parquet footers alone, shuffled from ``(seed, SAMPLE_STREAM)``, and the rows inside each
group shuffled from ``(seed, SAMPLE_STREAM, group)``. A group's filter columns are read first, and only
those; its images only if a row of it passes. Reading one row costs its whole row group (Parquet's unit of
reading), so the sample is one of row groups: what a build reads grows with the rows it keeps, not with
the source's size, and the rows come from groups spread over every shard. The plan is a function of the
seed and the footers, so a resumed build reads the same rows; the footers' fingerprint is part of the
build's identity.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import math
import re
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import numpy as np
import pyarrow.parquet as pq

from styleprefs.errors import StyleprefsError, one_line
from styleprefs.parallel import prefetch
from styleprefs.sources.base import DeferredPair, Source, SourcePair, source_rows
from styleprefs.sources.pickapic import PickapicSource, check_parquet_schema, pickapic_pair

SAMPLES = ("sequential", "random")
SAMPLE_STREAM = 7  # rng stream of the random plan, apart from every per-row stream
DUPLICATE = "duplicate_caption"  # the skip reason the manifest has always counted (skipped_duplicate_captions)


@dataclass(frozen=True)
class SelectionConfig:
    sample: str = "sequential"
    models: str | None = None
    has_label: bool = False
    max_per_prompt: int | None = None

    @property
    def is_default(self) -> bool:
        return self == SelectionConfig()

    def check(self, unique_captions: bool) -> None:
        if self.sample not in SAMPLES:
            raise StyleprefsError(f"--sample must be {' or '.join(SAMPLES)}, got {self.sample!r}")
        if self.max_per_prompt is not None and self.max_per_prompt < 1:
            raise StyleprefsError(f"--max-per-prompt must be at least 1, got {self.max_per_prompt}")
        if unique_captions and self.max_per_prompt is not None:
            raise StyleprefsError("--unique-captions is --max-per-prompt 1: give one of them")
        if self.models is not None:
            _model_matcher(self.models)


def _model_matcher(pattern: str) -> Callable[[str], bool]:
    if pattern.startswith("re:"):
        try:
            compiled = re.compile(pattern[3:], re.IGNORECASE)
        except re.error as exc:
            raise StyleprefsError(f"--models {pattern!r} is not a regular expression: {exc}") from None
        return lambda name: compiled.search(name) is not None
    glob = re.compile(fnmatch.translate(pattern), re.IGNORECASE)
    return lambda name: glob.match(name) is not None


class RowFilter:
    """Decides row by row, in selection order, whether a row is used; the reason when it is not."""

    def __init__(self, cfg: SelectionConfig, unique_captions: bool):
        self.models = _model_matcher(cfg.models) if cfg.models is not None else None
        self.has_label = cfg.has_label
        self.limit = 1 if unique_captions else cfg.max_per_prompt
        self.per_prompt: Counter[str] = Counter()

    @property
    def columns(self) -> list[str]:
        """The source columns the filters read."""
        return ((["model_0", "model_1"] if self.models else []) + (["label_0"] if self.has_label else [])
                + (["caption"] if self.limit else []))

    def reason(self, caption: str, model_0: str, model_1: str, label_0: float) -> str | None:
        if self.models and not (self.models(model_0) and self.models(model_1)):
            return "model"
        if self.has_label and label_0 not in (0.0, 1.0):
            return "no_label"
        if self.limit:
            prompt = " ".join(caption.casefold().split())
            if self.per_prompt[prompt] >= self.limit:
                return DUPLICATE
            self.per_prompt[prompt] += 1
        return None

    @property
    def needs_pairs(self) -> bool:
        """Whether the filters read more than a row's caption (a deferred row has only its key and caption)."""
        return self.models is not None or self.has_label

    def reason_for_pair(self, item: SourcePair | DeferredPair) -> str | None:
        if isinstance(item, DeferredPair):
            return self.reason(item.caption, "", "", math.nan)
        return self.reason(item.caption, item.model_0, item.model_1, item.label_0)

    def reason_for_row(self, row: dict[str, Any]) -> str | None:
        """``reason`` for a row of a Parquet file (only ``columns`` need be present)."""
        label = row.get("label_0")
        return self.reason(row.get("caption") or "", str(row.get("model_0") or ""), str(row.get("model_1") or ""),
                           math.nan if label is None else float(label))


class Selection:
    """The rows a build uses, in order: ``take(n)`` gives the next ``n``; skipped rows are counted by reason."""

    def __init__(self, source: Source, cfg: SelectionConfig, unique_captions: bool, seed: int, depth: int):
        cfg.check(unique_captions)
        self.cfg, self.source = cfg, source
        self.filter = RowFilter(cfg, unique_captions)
        self.plan = RowGroupSample(source, seed) if cfg.sample == "random" else None
        self.skipped_by: Counter[str] = Counter()
        self.keys: list[str] = []  # of the rows taken, in order
        self.rows = prefetch(self._stream(), depth)  # starts reading on the first take

    @property
    def skipped(self) -> int:
        """Rows skipped as repeated captions (``skipped_duplicate_captions`` in the manifest)."""
        return self.skipped_by[DUPLICATE]

    def describe(self) -> dict:
        """The selection's part of the build's identity."""
        plan = self.plan.describe() if self.plan else {}
        return {**asdict(self.cfg), **plan}

    def record(self, read: int) -> dict:
        """The outcome for the manifest: skips by reason and the sha256 of the keys of the ``read`` rows used."""
        digest = hashlib.sha256("\n".join(self.keys[:read]).encode("utf-8")).hexdigest()
        return {"skipped": dict(sorted(self.skipped_by.items())), "rows": read, "rows_sha256": digest}

    def take(self, n: int) -> list[SourcePair | DeferredPair]:
        taken: list[SourcePair | DeferredPair] = []
        for item in self.rows:
            if isinstance(item, str):
                self.skipped_by[item] += 1
                continue
            taken.append(item)
            self.keys.append(item.key)
            if len(taken) == n:
                break
        return taken

    def _stream(self) -> Iterator[SourcePair | DeferredPair | str]:
        """Each source row in selection order: the pair, or the reason it is skipped."""
        if self.plan is not None:
            yield from self.plan.rows(self.filter)
            return
        for item in iter(self.source) if self.filter.needs_pairs else source_rows(self.source):
            yield self.filter.reason_for_pair(item) or item


@dataclass(frozen=True)
class _Group:
    file: int  # index into the plan's files
    index: int  # row group within the file
    rows: int
    first_row: int  # position of its first row in the source's own order


class RowGroupSample:
    """``--sample random``: a seeded order of the source's Parquet row groups, from the footers alone."""

    def __init__(self, source: Source, seed: int):
        if not isinstance(source, PickapicSource):
            raise StyleprefsError(f"--sample random reads Parquet row groups, and the {source.name} source has none "
                                  "(it is drawn scene by scene): use --sample sequential")
        self.files, self.filesystem = source.parquet_files()
        self.seed = seed
        self.footers: list[pq.FileMetaData] = []
        self.groups = self._groups()

    def _groups(self) -> list[_Group]:
        groups: list[_Group] = []
        first_row = 0
        for file_index, path in enumerate(self.files):
            parquet = self._open(file_index)
            check_parquet_schema(parquet.schema_arrow, path)
            metadata = parquet.metadata
            self.footers.append(metadata)
            for index in range(metadata.num_row_groups):
                rows = metadata.row_group(index).num_rows
                groups.append(_Group(file_index, index, rows, first_row))
                first_row += rows
        return groups

    def _open(self, file_index: int) -> pq.ParquetFile:
        """The file, its footer read once (later opens reuse it)."""
        path = self.files[file_index]
        footer = self.footers[file_index] if file_index < len(self.footers) else None
        try:
            return pq.ParquetFile(path, metadata=footer, filesystem=self.filesystem)
        except Exception as exc:  # pyarrow and remote filesystems raise several types
            raise StyleprefsError(f"cannot read Parquet file {path}: {one_line(exc)}") from None

    def describe(self) -> dict:
        layout = [[Path(f).name, [g.rows for g in self.groups if g.file == i]] for i, f in enumerate(self.files)]
        fingerprint = hashlib.sha256(json.dumps(layout).encode("utf-8")).hexdigest()
        return {"row_groups": len(self.groups), "source_rows": sum(g.rows for g in self.groups),
                "footers_sha256": fingerprint}

    def rows(self, row_filter: RowFilter) -> Iterator[SourcePair | str]:
        for position in np.random.default_rng([self.seed, SAMPLE_STREAM]).permutation(len(self.groups)):
            yield from self._group_rows(int(position), row_filter)

    def _group_rows(self, position: int, row_filter: RowFilter) -> Iterator[SourcePair | str]:
        group = self.groups[position]
        parquet = self._open(group.file)
        order = np.random.default_rng([self.seed, SAMPLE_STREAM, position]).permutation(group.rows)
        reasons = self._reasons(parquet, group, order, row_filter)
        records = parquet.read_row_group(group.index).to_pylist() if None in reasons else []
        for row, reason in zip(order, reasons):
            yield reason or pickapic_pair(records[row], group.first_row + int(row))

    def _reasons(self, parquet: pq.ParquetFile, group: _Group, order: Iterable[int],
                 row_filter: RowFilter) -> list[str | None]:
        """Per row in ``order``, why it is skipped (None: used), from the filter columns alone."""
        columns = row_filter.columns
        if not columns:
            return [None] * group.rows
        missing = [c for c in columns if c not in parquet.schema_arrow.names]
        if missing:
            raise StyleprefsError(f"{self.files[group.file]} has no column(s) {', '.join(missing)}, "
                                  "which the selection filters need")
        values = parquet.read_row_group(group.index, columns=columns).to_pylist()
        return [row_filter.reason_for_row(values[row]) for row in order]
