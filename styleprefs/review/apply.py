"""``styleprefs review DATASET --apply``: the review log's new decisions written into the dataset.

Dropped pairs move to ``rejects.parquet`` (reason ``review``); flipped pairs swap ``label_0``/``label_1``,
``best_image_uid`` follows, and ``original_label_0/1`` (added if missing) keep the labels from before the
first change. The new shards, rejects and manifest are staged and swapped in by ``styleprefs.swap``, as
``filter-unsafe`` and ``relabel`` do, under the folder lock. The manifest's ``review`` entry records how many
bytes of the log are applied (and their sha256) and the counts the card shows; a second apply does nothing.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc

from styleprefs.errors import StyleprefsError
from styleprefs.inspect import REVIEW_BACKUP, read_finished_manifest, read_manifest
from styleprefs.io import write_json, write_parquet
from styleprefs.lock import folder_lock
from styleprefs.review.decisions import LOG_NAME, Decision, latest, pair_key, read_log, tally
from styleprefs.review.reader import checked_shards
from styleprefs.schema import REJECTS_SCHEMA
from styleprefs.shards import read_table, write_shards
from styleprefs.swap import Swap

SWAP = Swap(".review-tmp", REVIEW_BACKUP)
REASON = "review"


@dataclass
class ApplyReport:
    dataset: Path
    counts: dict  # the manifest's review counts: judged, dropped, flipped, kept (all applies so far)
    lines: int  # log lines applied by this run
    status: str = "applied"  # "applied" | "no-op"


def apply_review(dataset: Path) -> ApplyReport:
    """Apply the decisions ``DATASET/review.jsonl`` gained since the last apply."""
    dataset = Path(dataset)
    read_manifest(dataset)  # before the lock: a folder that is no dataset is left untouched
    with folder_lock(dataset):
        SWAP.recover(dataset, fresh=False)
        manifest = read_finished_manifest(dataset)
        paths = checked_shards(dataset, manifest)
        data, decisions = read_log(dataset)
        state = manifest.get("review", {})
        applied = _applied_bytes(data, state, dataset)
        new = [d for d in decisions if d.end > applied]
        if not new:
            return ApplyReport(dataset, state.get("counts", tally([], [])), 0, "no-op")
        keys = [_keys(read_table(path, columns=["image_0_uid", "image_1_uid"])) for path in paths]
        _check_known(new, {k for shard in keys for k in shard}, latest([d for d in decisions if d.end <= applied]),
                     dataset)
        final = latest(new)
        drop = {p for p, d in final.items() if d.action == "drop"}
        flip = {p for p, d in final.items() if d.action == "flip"}
        ends = [*state.get("batch_ends", []), len(data)]
        counts = tally(decisions, ends)
        staging = dataset / SWAP.staging
        new_manifest = json.loads(json.dumps(manifest))
        if drop or flip:
            _stage_rows(dataset, manifest, new_manifest, paths, keys, drop, flip, staging)
        new_manifest["review"] = {"applied_bytes": len(data), "applied_sha256": hashlib.sha256(data).hexdigest(),
                                  "batch_ends": ends, "counts": counts}
        write_json(new_manifest, staging / "manifest.json")
        SWAP.commit(dataset, fresh=False)
        return ApplyReport(dataset, counts, len(new))


def _applied_bytes(data: bytes, state: dict, dataset: Path) -> int:
    """How much of the log earlier applies took; the log must still start with exactly those bytes."""
    applied = state.get("applied_bytes", 0)
    if applied and hashlib.sha256(data[:applied]).hexdigest() != state.get("applied_sha256"):
        raise StyleprefsError(f"{dataset / LOG_NAME} no longer starts with the {applied} bytes of decisions already "
                              "applied (it was edited or replaced): restore those lines; add new decisions only at "
                              "the end")
    return applied


def _keys(table: pa.Table) -> list[str]:
    return [pair_key(a, b) for a, b in zip(*(table.column(f"image_{s}_uid").to_pylist() for s in (0, 1)))]


def _check_known(new: list[Decision], known: set[str], earlier: dict[str, Decision], dataset: Path) -> None:
    """Every new line names a pair of the dataset (``earlier``: each pair's last decision already applied)."""
    for d in new:
        if d.pair not in known:
            dropped = d.pair in earlier and earlier[d.pair].action == "drop"
            why = "an earlier --apply dropped it" if dropped else "no pair of the dataset has these image uids"
            raise StyleprefsError(f"{dataset / LOG_NAME} line {d.line} names pair {d.pair!r}, which is not in the "
                                  f"dataset ({why}): delete that line; nothing was applied")


def _stage_rows(dataset: Path, manifest: dict, new_manifest: dict, paths: list[Path], keys: list[list[str]],
                drop: set[str], flip: set[str], staging: Path) -> None:
    """New shards (dropped rows out, flipped labels swapped) and rejects in ``staging``; counts updated."""
    rejects: list[dict] = []

    def tables():
        for path, shard_keys in zip(paths, keys):
            table, dropped = _decide(read_table(path), shard_keys, drop, flip)
            rejects.extend(dropped)
            yield table

    kept = manifest["counts"]["kept"] - sum(k in drop for shard in keys for k in shard)
    new_manifest["shards"] = write_shards(tables(), kept, staging / "data", manifest["config"]["build"]["shard_size"])
    if sum(s["rows"] for s in new_manifest["shards"]) + len(rejects) != manifest["counts"]["kept"]:
        raise StyleprefsError("review --apply lost rows (kept + dropped != rows before); nothing was changed")
    old = dataset / "rejects.parquet"
    before = read_table(old, schema=REJECTS_SCHEMA) if old.is_file() else REJECTS_SCHEMA.empty_table()
    write_parquet(pa.concat_tables([before, pa.Table.from_pylist(rejects, schema=REJECTS_SCHEMA)]),
                  staging / "rejects.parquet")
    counts = new_manifest["counts"]
    counts["kept"], counts["rejected"] = kept, counts["rejected"] + len(rejects)
    if rejects:
        reasons = new_manifest.setdefault("reject_reasons", {})
        reasons[REASON] = reasons.get(REASON, 0) + len(rejects)


def _decide(table: pa.Table, keys: list[str], drop: set[str], flip: set[str]) -> tuple[pa.Table, list[dict]]:
    """``table`` with flipped rows' labels swapped and dropped rows removed; a reject record per dropped row."""
    flipped = pa.array([k in flip for k in keys])
    labels = [table.column(f"label_{s}") for s in (0, 1)]
    for slot in (0, 1):
        name = f"original_label_{slot}"
        if name not in table.schema.names:
            table = table.append_column(pa.field(name, pa.float64()), labels[slot])
    new = [pc.if_else(flipped, labels[1 - s], labels[s]) for s in (0, 1)]
    uids = [table.column(f"image_{s}_uid") for s in (0, 1)]
    best = pc.if_else(pc.greater(new[0], new[1]), uids[0], pc.if_else(pc.greater(new[1], new[0]), uids[1],
                                                                         pa.scalar(None, pa.string())))
    best = pc.if_else(flipped, best, table.column("best_image_uid"))  # unflipped rows keep theirs exactly
    for name, values in (("label_0", new[0]), ("label_1", new[1]), ("best_image_uid", best)):
        table = table.set_column(table.schema.get_field_index(name), table.schema.field(name), values)
    dropped = pa.array([k in drop for k in keys])
    rejects = [{"source": r["source"], "caption": r["caption"], "reason": REASON}
               for r in table.filter(dropped).select(["source", "caption"]).to_pylist()]
    return table.filter(pc.invert(dropped)), rejects
