"""``styleprefs relabel``: preference labels from a scorer (AI feedback), as in Diffusion-DPO's run on
PickScore-chosen labels.

Both images of every pair are scored once, batched, with the scorer's own preprocessing
(``styleprefs.eval.rewards``: any ``--scorer`` spec the eval commands take); the image with the higher score
is preferred. A pair whose scores differ by at most ``tie_tolerance`` is a tie, handled by ``ties``:
``keep`` (labels 0.5/0.5, as Pick-a-Pic stores ties), ``drop`` (the row moves to ``rejects.parquet`` with
the reason ``relabel tie``, so read = kept + rejected + quarantined still holds) or ``original`` (the labels
from before relabelling stay). Those labels are kept as ``original_label_0/1`` and the scores as
``score_0/1``; relabelling a relabelled dataset starts again from the original labels.

Resumable: each input shard's scores are saved in ``TARGET/.relabel/`` as soon as they exist (``state.json``
beside them holds the settings and the input shards' sha256), so a killed run rescores no finished shard.
The new shards, rejects and manifest are then staged and swapped in as ``filter-unsafe`` does
(``styleprefs.swap``). The manifest's ``relabel`` entry records the scorer, the tie policy, the counts and
the agreement with the original labels. The dataset (and ``--out``) are locked for the whole run.
"""

from __future__ import annotations

import json
import math
import shutil
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa

from styleprefs import __version__
from styleprefs.errors import StyleprefsError
from styleprefs.eval.rewards import Scorer, parse_scorer
from styleprefs.images import decode
from styleprefs.inspect import RELABEL_BACKUP, read_manifest, read_verified_manifest, shard_paths
from styleprefs.io import check_separate, read_json, remove_temp_files, write_json, write_parquet
from styleprefs.lock import LOCK_NAME, folder_lock
from styleprefs.progress import pair_progress
from styleprefs.schema import REJECTS_SCHEMA, RELABEL_FIELDS
from styleprefs.shards import read_table, write_shards
from styleprefs.swap import Swap

TIES = ("keep", "drop", "original")
SCORES = ".relabel"  # per-shard scores of an unfinished run
SWAP = Swap(".relabel-tmp", RELABEL_BACKUP)
CHUNK_ROWS = 64  # pairs decoded at a time
TIE_REASON = "relabel tie"


@dataclass(frozen=True)
class RelabelOptions:
    scorer: str  # NAME or NAME=SOURCE, as `eval rewards --scorer`
    ties: str = "keep"
    tie_tolerance: float = 1e-6  # |score_0 - score_1| at most this is a tie; absorbs float rounding
    batch_size: int = 8  # images per scorer forward; does not change the labels
    device: str | None = None

    def settings(self) -> dict:
        """What decides the output (recorded in the manifest; a rerun with the same settings does nothing)."""
        name, source = parse_scorer(self.scorer)
        if self.ties not in TIES:
            raise StyleprefsError(f"--ties must be one of {', '.join(TIES)}, got {self.ties!r}")
        if not (math.isfinite(self.tie_tolerance) and self.tie_tolerance >= 0):
            raise StyleprefsError(f"--tie-tolerance must be a number >= 0, got {self.tie_tolerance}")
        if self.batch_size < 1:
            raise StyleprefsError(f"--batch-size must be at least 1, got {self.batch_size}")
        return {"scorer": f"{name}={source}" if source else name, "ties": self.ties,
                "tie_tolerance": float(self.tie_tolerance)}


@dataclass
class RelabelReport:
    target: Path
    summary: dict  # the manifest's "relabel" entry
    status: str = "relabelled"  # "relabelled" | "no-op"


@dataclass
class _Decision:
    """One shard's new labels, from its original labels and scores."""

    original: tuple[np.ndarray, np.ndarray]
    scores: tuple[np.ndarray, np.ndarray]
    labels: tuple[np.ndarray, np.ndarray]
    tie: np.ndarray  # the scorer's ties
    keep: np.ndarray  # rows that stay in the dataset


def relabel(dataset: Path, options: RelabelOptions, *, out: Path | None = None,
            show_progress: bool = True) -> RelabelReport:
    """Relabel ``dataset`` in place, or write the relabelled copy to ``out``."""
    settings = options.settings()
    dataset = Path(dataset)
    read_manifest(dataset)  # before the lock: a folder that is no dataset is left untouched
    if out is not None:
        out = Path(out)
        check_separate(out, "DATASET", [dataset])
    with folder_lock(dataset), folder_lock(out) if out is not None else nullcontext():
        return _relabel(dataset, options, settings, out, show_progress)


def _relabel(dataset: Path, options: RelabelOptions, settings: dict, out: Path | None,
             show_progress: bool) -> RelabelReport:
    from styleprefs.eval.rewards import load_scorer  # deferred: loading imports transformers

    target = out or dataset
    SWAP.recover(dataset, fresh=False)
    if out is not None:
        SWAP.recover(out, fresh=True)
    manifest = read_verified_manifest(dataset)
    done = _finished(manifest, settings, out)
    if done is not None:
        shutil.rmtree(target / SCORES, ignore_errors=True)
        return RelabelReport(target, done["relabel"], "no-op")
    scorer = load_scorer(*parse_scorer(options.scorer), device=options.device)
    paths = shard_paths(dataset, manifest)
    scores = _scores(paths, manifest, settings, scorer, options.batch_size, target / SCORES, show_progress)
    new_manifest = _stage(dataset, manifest, paths, scores, settings, scorer, target / SWAP.staging,
                          copy_all=out is not None)
    SWAP.commit(target, fresh=out is not None)
    shutil.rmtree(target / SCORES)
    return RelabelReport(target, new_manifest["relabel"])


def _finished(manifest: dict, settings: dict, out: Path | None) -> dict | None:
    """The finished manifest if these settings already ran (in place, or into ``out`` from this input);
    with ``out``, refuse a folder holding anything else."""
    if out is None:
        return manifest if manifest.get("relabel", {}).get("settings") == settings else None
    if (out / "manifest.json").is_file():
        done = read_manifest(out)
        relabelled = done.get("relabel", {})
        if relabelled.get("settings") == settings and relabelled.get("input_shards") == _shard_hashes(manifest):
            return done
    if any(p.name not in (LOCK_NAME, SCORES) for p in out.iterdir()):
        raise StyleprefsError(f"--out {out} is not empty; choose a new folder")
    return None


def _shard_hashes(manifest: dict) -> list[str]:
    return [s["sha256"] for s in manifest["shards"]]


# ------------------------------------------------------------------------------------------ scoring


def _scores(paths: list[Path], manifest: dict, settings: dict, scorer: Scorer, batch_size: int, folder: Path,
            show_progress: bool) -> list[tuple[np.ndarray, np.ndarray]]:
    """(score_0, score_1) per shard; a shard scored by an interrupted run with these settings is not rescored."""
    state = {"settings": settings, "shards": _shard_hashes(manifest)}
    if read_json(folder / "state.json") != state:
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        write_json(state, folder / "state.json")
    remove_temp_files(folder)
    scores = []
    with pair_progress(sum(s["rows"] for s in manifest["shards"]), show_progress) as advance:
        for index, path in enumerate(paths):
            saved = folder / f"scores-{index:05d}.parquet"
            if not saved.is_file():
                score_0, score_1 = _score_shard(scorer, read_table(path, columns=["caption", "jpg_0", "jpg_1"]),
                                                batch_size, path)
                write_parquet(pa.table({"score_0": score_0, "score_1": score_1}), saved)
            table = read_table(saved)
            scores.append((table.column("score_0").to_numpy(), table.column("score_1").to_numpy()))
            advance(table.num_rows, table.num_rows)
    return scores


def _score_shard(scorer: Scorer, table: pa.Table, batch_size: int, path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Both images of every pair, ``CHUNK_ROWS`` pairs decoded at a time: one float64 score per image."""
    from styleprefs.eval.rewards import score_images

    captions = [c or "" for c in table.column("caption").to_pylist()]
    parts: list[np.ndarray] = [np.zeros((2, 0))]
    for start in range(0, table.num_rows, CHUNK_ROWS):
        chunk = table.slice(start, CHUNK_ROWS)
        prompts = captions[start:start + chunk.num_rows]
        images = [_decode(data, path, start + row, slot) for slot in (0, 1)
                  for row, data in enumerate(chunk.column(f"jpg_{slot}").to_pylist())]
        parts.append(score_images(scorer, prompts * 2, images, batch_size).reshape(2, -1))
    scores = np.concatenate(parts, axis=1)
    if not np.isfinite(scores).all():
        raise StyleprefsError(f"scorer {scorer.name} gave a score that is not a finite number for {path}")
    return scores[0], scores[1]


def _decode(data: bytes | None, path: Path, row: int, slot: int):
    try:
        return decode(data or b"")
    except ValueError as exc:
        raise StyleprefsError(f"{path} row {row}: jpg_{slot} cannot be decoded ({exc}): the dataset is damaged") from None


# ------------------------------------------------------------------------------------------ labels


def _decide(table: pa.Table, scores: tuple[np.ndarray, np.ndarray], settings: dict) -> _Decision:
    """New labels from the scores (higher preferred), ties by the settings' policy."""
    prefix = "original_" if "original_label_0" in table.schema.names else ""
    original = tuple(table.column(f"{prefix}label_{slot}").to_numpy(zero_copy_only=False).astype(np.float64)
                     for slot in (0, 1))
    tie = _ties(scores, settings)
    first = (scores[0] > scores[1]).astype(np.float64)
    if settings["ties"] == "original":
        labels = (np.where(tie, original[0], first), np.where(tie, original[1], 1.0 - first))
    else:
        labels = (np.where(tie, 0.5, first), np.where(tie, 0.5, 1.0 - first))
    return _Decision(original, scores, labels, tie, _kept(scores, settings))


def _ties(scores: tuple[np.ndarray, np.ndarray], settings: dict) -> np.ndarray:
    return np.abs(scores[0] - scores[1]) <= settings["tie_tolerance"]


def _kept(scores: tuple[np.ndarray, np.ndarray], settings: dict) -> np.ndarray:
    return ~_ties(scores, settings) if settings["ties"] == "drop" else np.ones(len(scores[0]), bool)


def _apply(table: pa.Table, d: _Decision) -> tuple[pa.Table, list[dict]]:
    """``table`` with the new labels, the preferred image's uid and the relabel columns, minus dropped rows;
    and a reject record per dropped row."""
    uids = [table.column(f"image_{slot}_uid").to_pylist() for slot in (0, 1)]
    best = [u0 if a > b else u1 if b > a else None for u0, u1, a, b in zip(*uids, *d.labels)]
    columns = {"label_0": d.labels[0], "label_1": d.labels[1], "best_image_uid": pa.array(best, pa.string()),
               "original_label_0": d.original[0], "original_label_1": d.original[1],
               "score_0": d.scores[0], "score_1": d.scores[1]}
    types = {f.name: f.type for f in RELABEL_FIELDS} | {"label_0": pa.float64(), "label_1": pa.float64()}
    for name, values in columns.items():
        field = pa.field(name, types.get(name, pa.string()))
        values = pa.array(values, field.type)
        index = table.schema.get_field_index(name)
        table = table.set_column(index, field, values) if index >= 0 else table.append_column(field, values)
    dropped = np.flatnonzero(~d.keep)
    gaps = np.abs(d.scores[0] - d.scores[1])
    rejects = [{"source": table.column("source")[i].as_py(), "caption": table.column("caption")[i].as_py(),
                "reason": f"{TIE_REASON} (|score_0 - score_1| = {gaps[i]:.3g})"} for i in dropped]
    return table.filter(pa.array(d.keep)), rejects


def _tally(decisions: list[_Decision]) -> dict:
    """Agreement with the original labels over the pairs neither the scorer nor the original calls a tie."""
    original = np.concatenate([np.sign(d.original[0] - d.original[1]) for d in decisions])
    scored = np.concatenate([np.where(d.tie, 0.0, np.sign(d.scores[0] - d.scores[1])) for d in decisions])
    both = (original != 0) & (scored != 0)
    agree, compared = int((both & (original == scored)).sum()), int(both.sum())
    return {"pairs": len(original), "scorer_ties": int((scored == 0).sum()), "original_ties": int((original == 0).sum()),
            "compared": compared, "agree": agree, "disagree": compared - agree,
            "ties_dropped": int(sum((~d.keep).sum() for d in decisions)),
            "agreement": agree / compared if compared else None}


# ------------------------------------------------------------------------------------------ output


def _stage(dataset: Path, manifest: dict, paths: list[Path], scores: list[tuple[np.ndarray, np.ndarray]],
           settings: dict, scorer: Scorer, staging: Path, copy_all: bool) -> dict:
    """New shards, rejects (with dropped ties) and manifest in ``staging``; ``copy_all`` (``--out``) also
    copies the files relabelling does not change."""
    shutil.rmtree(staging, ignore_errors=True)
    decisions: list[_Decision] = []
    dropped: list[dict] = []

    def tables():
        for path, shard_scores in zip(paths, scores):
            table = read_table(path)
            decisions.append(_decide(table, shard_scores, settings))
            kept_rows, rejects = _apply(table, decisions[-1])
            dropped.extend(rejects)
            yield kept_rows

    kept = sum(int(_kept(s, settings).sum()) for s in scores)
    new = json.loads(json.dumps(manifest))
    new["shards"] = write_shards(tables(), kept, staging / "data", manifest["config"]["build"]["shard_size"])
    tally = _tally(decisions)
    new["counts"]["kept"] = kept
    new["counts"]["rejected"] += len(dropped)
    if dropped:
        new["reject_reasons"] = {**new.get("reject_reasons", {}), TIE_REASON: len(dropped)
                                 + new.get("reject_reasons", {}).get(TIE_REASON, 0)}
    if dropped or copy_all:
        old = dataset / "rejects.parquet"
        rejects = read_table(old, schema=REJECTS_SCHEMA) if old.is_file() else REJECTS_SCHEMA.empty_table()
        write_parquet(pa.concat_tables([rejects, pa.Table.from_pylist(dropped, schema=REJECTS_SCHEMA)]),
                      staging / "rejects.parquet")
    if copy_all and (dataset / "quarantine.parquet").is_file():
        shutil.copy2(dataset / "quarantine.parquet", staging / "quarantine.parquet")
    new["relabel"] = {"settings": settings, "scorer": json.loads(json.dumps(scorer.describe(), default=str)),
                      "counts": {k: v for k, v in tally.items() if k != "agreement"},
                      "agreement": tally["agreement"], "input_shards": _shard_hashes(manifest),
                      "styleprefs_version": __version__}
    write_json(new, staging / "manifest.json")
    return new
