"""``styleprefs build``: source pairs -> edited style preference pairs -> Parquet shards.

Work is cut into *parts* of at most ``PART_ROWS`` selected source rows. Each finished part is written to
``OUT/.build/`` (kept rows as Parquet, then a JSON summary that marks it complete), so an
interrupted build resumes at the first missing part. When ``num_pairs`` rows are kept (or the
source runs out), the parts are merged, in order, into ``data/train-XXXXX-of-YYYYY.parquet`` shards, then
rejects, quarantine, ``manifest.json`` and the card are written. Renaming ``.build/`` away is the commit:
until then a rerun redoes the merge, so a build killed at any step finishes on the next run. Shard bytes
depend only on the arguments, never on batch size or interruptions. One process at a time writes ``OUT``
(``folder_lock``).
"""

from __future__ import annotations

import json
import os
import shutil
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Callable

import pyarrow as pa
import pyarrow.parquet as pq
from threadpoolctl import threadpool_limits

from styleprefs import __version__
from styleprefs.card import write_card
from styleprefs.distributed import Processes, processes
from styleprefs.editors import Editor, edit_with_flags, load_editor
from styleprefs.errors import StyleprefsError
from styleprefs.gpu import editor_batch_size
from styleprefs.inspect import BUILD_STATE
from styleprefs.io import check_separate, read_json, remove_temp_files, write_json, write_parquet
from styleprefs.lock import folder_lock
from styleprefs.parallel import WorkerPool, auto_workers, thread_map
from styleprefs.progress import pair_progress
from styleprefs.review.decisions import LOG_NAME as REVIEW_LOG
from styleprefs.rows import RowEditor, RowMaker, prepare
from styleprefs.safety.caption import CaptionCheck, CaptionVerdict
from styleprefs.safety.learned import PromptModel
from styleprefs.safety.report import safety_summary
from styleprefs.safety.text import TextFilter
from styleprefs.schema import DATASET_SCHEMA, QUARANTINE_SCHEMA, REJECTS_SCHEMA
from styleprefs.shards import write_shards
from styleprefs.sources import Source, SourcePair, open_source
from styleprefs.sources.base import DeferredPair
from styleprefs.sources.selection import DUPLICATE, Selection, SelectionConfig
from styleprefs.style import StyleSpec, load_style

PART_ROWS = 128
FORMAT_VERSION = 1
BUILD_DONE = ".build-done"  # .build/ after the commit, until it is deleted
MAX_SEED = 2**63 - 1


@dataclass(frozen=True)
class BuildConfig:
    """Everything that determines a dataset's content."""

    style: str = "winter"
    source: str = "sample"
    editor: str = "classic"
    num_pairs: int = 10000
    seed: int = 0
    split: str | None = None
    unique_captions: bool = False
    selection: SelectionConfig = SelectionConfig()  # --models, --has-label, --max-per-prompt, --sample
    shard_size: int = 1000  # rows per output shard
    safety: bool = True  # quarantine captions the built-in lists or the shipped caption model flag, before editing
    editor_model: str | None = None  # neural editors: Hub id, local folder or "tiny" (default: the paper's model)
    editor_steps: int | None = None  # neural editors: overrides the style's step count
    quality_gate: bool | None = None  # CLIP gate; None = on for the neural editors, off for classic
    clip_model: str = "openai/clip-vit-large-patch14"
    min_direction: float = 0.2
    min_image: float = 0.7
    min_text: float = 0.2  # each image against its caption (edit vs styled caption, original vs caption)
    max_tries: int = 3  # edits that fail the gate are retried with the next seed


@dataclass
class BuildResult:
    out: Path
    status: str  # "built" | "complete"
    manifest: dict = field(default_factory=dict)


@dataclass
class _Part:
    index: int
    outcomes: list[str]  # per selected input row, in order: "kept" | "rejected" | "quarantined"
    rejects: list[dict]
    quarantine: list[dict]
    skipped: int  # rows skipped by selection (duplicate captions) while filling this part
    start: int = 0  # position of the part's first row in the selection
    table: pa.Table | None = None  # kept rows; None for a part loaded from disk
    ready: list = field(default_factory=list)  # (position, rows.prepare's result for the editor, or a worker's row)
    reject_positions: list[int] = field(default_factory=list)  # of the rejects found before editing

    @property
    def kept(self) -> int:
        return self.outcomes.count("kept")


class _Job:
    """A build's resolved inputs: style, source, editor and the identity recorded in the manifest."""

    def __init__(self, cfg: BuildConfig, device: str | None = None, dtype: str | None = None,
                 editor_options: dict | None = None):
        _check_config(cfg)
        self.cfg = cfg
        self.style: StyleSpec = load_style(cfg.style)
        self.source: Source = open_source(cfg.source, cfg.split)
        self.selection = Selection(self.source, cfg.selection, cfg.unique_captions, cfg.seed, 2 * PART_ROWS)
        options = {"steps": cfg.editor_steps} if cfg.editor_steps and cfg.editor != "classic" else {}
        options |= editor_options or {}
        self.editor: Editor = load_editor(cfg.editor, self.style, model=cfg.editor_model, device=device,
                                          dtype=dtype, **options)
        self.captions = CaptionCheck(TextFilter(), PromptModel()) if cfg.safety else None
        gate_on = cfg.quality_gate if cfg.quality_gate is not None else cfg.editor != "classic"
        self.gate = _load_gate(cfg, device) if gate_on else None
        build = {k: v for k, v in asdict(cfg).items() if k != "selection"}  # recorded apart, when not the default
        identity = {
            "format_version": FORMAT_VERSION,
            "build": {**build, "style": self.style.name, "quality_gate": gate_on},
            "style_spec": self.style.to_dict(),
            "source": self.source.describe(),
            "editor": {"name": self.editor.name, "model": self.editor.model_id, "params": self.editor.params()},
        }
        if not cfg.selection.is_default:
            identity["selection"] = self.selection.describe()
        self.identity = json.loads(json.dumps(identity, default=str))
        self.rows = RowMaker(self.source.name, self.style.name, self.editor.name, self.editor.model_id,
                             self.editor.params())


def _check_config(cfg: BuildConfig) -> None:
    if cfg.num_pairs < 1 or cfg.shard_size < 1 or cfg.max_tries < 1:
        raise StyleprefsError("--num-pairs, --shard-size and --max-tries must be at least 1")
    if not 0 <= cfg.seed <= MAX_SEED:
        raise StyleprefsError(f"--seed must be between 0 and {MAX_SEED}, got {cfg.seed}")
    for flag, value in (("--min-direction", cfg.min_direction), ("--min-image", cfg.min_image),
                        ("--min-text", cfg.min_text)):
        if not -1.0 <= value <= 1.0:  # also refuses NaN
            raise StyleprefsError(f"{flag} is a cosine similarity between -1 and 1, got {value}")
    if cfg.editor_steps is not None and not 1 <= cfg.editor_steps <= 1000:
        raise StyleprefsError(f"--editor-steps must be between 1 and 1000, got {cfg.editor_steps}")


def _load_gate(cfg: BuildConfig, device: str | None):
    """The CLIP gate, in fp32 whatever the editor's dtype (as InstructPix2Pix's filter computes it)."""
    from styleprefs.quality import ClipGate, Thresholds  # deferred: it imports torch and transformers

    return ClipGate(cfg.clip_model, device=device, thresholds=Thresholds(cfg.min_direction, cfg.min_image, cfg.min_text))


def build_dataset(cfg: BuildConfig, out: Path, *, batch_size: int | str = 8, overwrite: bool = False,
                  show_progress: bool = True, device: str | None = None, dtype: str | None = None,
                  editor_options: dict | None = None, workers: int | None = None) -> BuildResult:
    """Build (or resume, or confirm) the dataset described by ``cfg`` in ``out``.

    ``device`` (neural editors and the CLIP gate) and ``dtype`` (neural editors; None = CUDA with fp16 if
    available; the gate always computes in fp32)
    and ``batch_size`` (``auto``: ``styleprefs.gpu.editor_batch_size``) do not enter the dataset's identity; ``editor_options`` (further editor options, e.g. the
    improve editor's guidance) do, through the editor's params. The ``classic`` editor's shards are
    byte-identical whatever the batch size; batched diffusion is not bitwise batch-invariant, so a
    neural editor's are reproducible for the same batch size and hardware. ``workers`` (None: one per core,
    ``parallel.auto_workers``; 0 or 1: none) processes edit the rows of the ``classic`` editor without the gate,
    each row whole (drawing a ``sample`` pair, decoding, editing, encoding); the shards are the same bytes
    whatever their number. Neural editors and the gate run in this process.
    """
    job = _Job(cfg, device, dtype, editor_options)
    batch_size = editor_batch_size(batch_size, job.editor)
    out = Path(out)
    check_separate(out, "--source", job.source.local_paths())
    procs = processes()
    with folder_lock(out) if procs.is_main else nullcontext():
        if procs.is_main:
            shutil.rmtree(out / BUILD_DONE, ignore_errors=True)  # the leftover of a committed build
            if overwrite:
                _remove_outputs(out)
        if overwrite or not _check_existing(out, job.identity):
            _build(job, out, batch_size, show_progress, procs, auto_workers() if workers is None else workers)
            status = "built"
        else:
            status = "complete"
    return BuildResult(out, status, read_json(out / "manifest.json"))


def _build(job: _Job, out: Path, batch_size: int, show_progress: bool, procs: Processes, workers: int) -> None:
    if procs.is_main:
        _prepare_state_dir(out, job.identity)
    procs.wait()
    state = out / BUILD_STATE
    # Rows run in parallel (threads or worker processes, which inherit the limit): numpy's BLAS threads on top of
    # them only spin, and cost the classic editor a third of its CPU time.
    with threadpool_limits(limits=1, user_api="blas"), _worker_pool(job, workers) as pool:
        parts = _run_parts(job, state, max(1, min(batch_size, PART_ROWS)), show_progress, procs, pool)
    _refuse_empty(job, out, parts, procs)
    if procs.is_main:
        _finalize(job, out, parts)
        os.replace(state, out / BUILD_DONE)  # the commit
        shutil.rmtree(out / BUILD_DONE)
    procs.wait()


def _refuse_empty(job: _Job, out: Path, parts: list[_Part], procs: Processes) -> None:
    """A build that kept no pair is an error, and leaves no state that would block the corrected command."""
    tally = _tally(job, _cut(parts, job.cfg.num_pairs))
    if tally["counts"]["kept"]:
        return
    procs.wait()
    if procs.is_main:
        shutil.rmtree(out / BUILD_STATE, ignore_errors=True)
    raise StyleprefsError(f"{out}: {shortfall(tally)}; no dataset was written: change the selection "
                          "(--models, --has-label, --max-per-prompt, --unique-captions) or the --source")


def shortfall(manifest: dict) -> str | None:
    """One line for a build that kept fewer pairs than asked for (the source ran out): where its rows went."""
    counts = manifest["counts"]
    if counts["kept"] >= counts["requested"] or "relabel" in manifest or manifest.get("safety", {}).get("runs"):
        return None  # not short; or filter-unsafe or relabel has changed the counts since the build
    skipped = manifest.get("selection", {}).get("skipped") or {}
    if not skipped and counts["skipped_duplicate_captions"]:
        skipped = {DUPLICATE: counts["skipped_duplicate_captions"]}
    outcomes = [_by_reason(sum(skipped.values()), "skipped by the selection", skipped),
                _by_reason(counts["rejected"], "rejected", manifest["reject_reasons"]),
                _by_reason(counts["quarantined"], "quarantined as unsafe", {})]
    outcomes = [text for text in outcomes if text]
    total = counts["read"] + sum(skipped.values())
    ran_out = f"the source ran out after {total} rows" if total else "the source has no rows"
    return f"kept {counts['kept']} of the {counts['requested']} pairs asked for: {ran_out}" + "".join(
        f"; {text}" for text in outcomes)


def _by_reason(n: int, what: str, reasons: dict[str, int]) -> str:
    if not n:
        return ""
    detail = ", ".join(f"{reason}: {count}" for reason, count in sorted(reasons.items()))
    return f"{n} {what}" + (f" ({detail})" if detail else "")


def _check_existing(out: Path, identity: dict) -> bool:
    """True if ``out`` already holds this exact dataset, committed; an error if it holds another one.

    A build that stopped before it finished a part (an editor that failed to load) holds nothing to lose:
    another build may start afresh there."""
    state = out / BUILD_STATE
    marker = state / "state.json" if state.is_dir() else out / "manifest.json"  # .build/: not committed
    if marker.is_file():
        recorded = read_json(marker).get("config")
        if recorded != identity and marker.parent == state and _nothing_done(out):
            return False
        if recorded != identity:
            differences = _differences(recorded or {}, identity)
            what = ("from --source as it was then: the source has changed since"
                    if all(d.startswith("source.") for d in differences) else "with other arguments")
            raise StyleprefsError(f"{out} holds a dataset built {what} (differs in {', '.join(differences)}); pass "
                                  "--overwrite to replace it or choose another --out")
        return marker.name == "manifest.json"
    if (out / "data").exists():
        raise StyleprefsError(f"{out}/data exists but is not a styleprefs build; pass --overwrite or choose another --out")
    return False


def _differences(a: dict, b: dict) -> list[str]:
    keys = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
    nested = [f"{k}.{kk}" for k in keys if isinstance(a.get(k), dict) and isinstance(b.get(k), dict)
              for kk in sorted(set(a[k]) | set(b[k])) if a[k].get(kk) != b[k].get(kk)]
    return nested or keys


def _remove_outputs(out: Path) -> None:
    """Delete a dataset, its manifest first: a folder killed midway is never taken for a finished one. A review
    log is a person's work and names pairs of the old dataset: it is moved aside, not applied to the new one."""
    if (out / REVIEW_LOG).exists():
        os.replace(out / REVIEW_LOG, out / f"{REVIEW_LOG}.before-overwrite")
    for name in ("manifest.json", "README.md", "rejects.parquet", "quarantine.parquet"):
        (out / name).unlink(missing_ok=True)
    for name in ("data", BUILD_STATE):
        shutil.rmtree(out / name, ignore_errors=True)
    remove_temp_files(out)


def _nothing_done(out: Path) -> bool:
    """Whether ``out``'s unfinished build has not finished a part yet (nor started writing the dataset)."""
    return not any((out / BUILD_STATE).glob("part-*.json")) and not (out / "manifest.json").exists()


def _prepare_state_dir(out: Path, identity: dict) -> None:
    state = out / BUILD_STATE
    state.mkdir(exist_ok=True)
    if not (state / "state.json").is_file() or _nothing_done(out):
        write_json({"config": identity}, state / "state.json")


def _worker_pool(job: _Job, workers: int) -> WorkerPool | nullcontext:
    """Worker processes for whole rows (the ``classic`` editor without the gate), or none (``nullcontext``)."""
    if workers <= 1 or job.cfg.editor != "classic" or job.gate is not None:
        return nullcontext()
    return WorkerPool(RowEditor(job.editor, job.rows, job.cfg.seed), workers)


def _run_parts(job: _Job, state: Path, batch_size: int, show_progress: bool, procs: Processes,
               pool: WorkerPool | None) -> list[_Part]:
    """Process (or load) parts until ``num_pairs`` rows are kept or the source runs out.

    Work goes in rounds of one part per process, each part holding at most the rows still needed
    divided among the processes, so small builds do little wasted work. Part sizes follow from
    earlier parts' outcomes alone, so every process (and a resumed build) cuts the source the
    same way; every process reads the whole selection (duplicate captions need it) but decodes
    and edits only its own parts.
    """
    parts: list[_Part] = []
    kept = start = 0
    selection = job.selection
    with pair_progress(job.cfg.num_pairs, show_progress and procs.is_main) as advance:
        while kept < job.cfg.num_pairs:
            size = min(PART_ROWS, -(-(job.cfg.num_pairs - kept) // procs.world))
            planned = []
            for slot in range(procs.world):
                skipped_before = selection.skipped
                rows = selection.take(size)
                if not rows:
                    break
                index = len(parts) + len(planned)
                if slot == procs.rank and _load_part(state, index, start, len(rows)) is None:
                    part = _process_part(job, index, rows, selection.skipped - skipped_before, batch_size, pool)
                    part.start = start
                    _save_part(state, part)
                planned.append((index, start, len(rows)))
                start += len(rows)
            if not planned:
                break
            procs.wait()
            for index, first, n in planned:
                part = _load_part(state, index, first, n)
                parts.append(part)
                kept += part.kept
                advance(part.kept, n)
    return parts


def _process_part(job: _Job, index: int, rows: list[SourcePair | DeferredPair], skipped: int, batch_size: int,
                  pool: WorkerPool | None) -> _Part:
    if pool is not None:  # the workers give finished rows
        part = _triage(job, index, rows, skipped, pool.map)
        part.table = pa.Table.from_pylist([row for _, row in part.ready], schema=DATASET_SCHEMA)
        return part
    part = _triage(job, index, rows, skipped, partial(thread_map, partial(prepare, seed=job.cfg.seed)))
    ready = part.ready
    table_rows: list[dict] = []
    gate_rejects: list[tuple[int, dict]] = []
    for start in range(0, len(ready), batch_size):
        kept, rejected = _edit_batch(job, ready[start:start + batch_size])
        table_rows += kept
        gate_rejects += rejected
    if gate_rejects:  # rejects stay in source order: positions of earlier rejects are in part.reject_positions
        for position, _ in gate_rejects:
            part.outcomes[position] = "rejected"
        merged = sorted([*zip(part.reject_positions, part.rejects), *gate_rejects], key=lambda r: r[0])
        part.rejects = [record for _, record in merged]
    part.table = pa.Table.from_pylist(table_rows, schema=DATASET_SCHEMA)
    return part


def _triage(job: _Job, index: int, rows: list[SourcePair | DeferredPair], skipped: int, process: Callable) -> _Part:
    """Quarantine unsafe captions, then ``process`` the others in order (``rows.prepare``, or whole rows in the
    workers): a ValueError rejects a row, anything else goes to ``part.ready``."""
    part = _Part(index, [], [], [], skipped)
    verdicts = job.captions.check_many(p.caption for p in rows) if job.captions else [CaptionVerdict(False)] * len(rows)
    prepared_rows = iter(process([p for p, v in zip(rows, verdicts) if not v.unsafe]))
    for position, (pair, verdict) in enumerate(zip(rows, verdicts)):
        source_id = f"{job.source.name}:{pair.key}"
        if verdict.unsafe:
            part.outcomes.append("quarantined")
            part.quarantine.append({"source": source_id, "caption": pair.caption, "category": verdict.category,
                                    "matched": verdict.matched, "backend": verdict.backend})
            continue
        prepared = next(prepared_rows)
        if isinstance(prepared, ValueError):
            part.outcomes.append("rejected")
            part.rejects.append({"source": source_id, "caption": pair.caption, "reason": str(prepared)})
            part.reject_positions.append(position)
        else:
            part.outcomes.append("kept")
            part.ready.append((position, prepared))
    return part


def _edit_batch(job: _Job, batch: list) -> tuple[list[dict], list[tuple[int, dict]]]:
    """Edit a batch; with the gate on, retry failing edits with the next seed up to ``max_tries``.

    Returns the kept rows in order and, for edits that never passed, (position, reject record).
    """
    edits = _gated_edits(job, batch)
    kept = thread_map(lambda item: job.rows.row(item[0][1], *item[1]),
                      [(row, edit) for row, edit in zip(batch, edits) if not isinstance(edit, str)])
    rejected = [(position, {"source": f"{job.source.name}:{pair.key}", "caption": pair.caption, "reason": edit})
                for (position, (pair, *_)), edit in zip(batch, edits) if isinstance(edit, str)]
    return kept, rejected


def _gated_edits(job: _Job, batch: list) -> list:
    """Per row (image, seed, nsfw flag, gate scores or None), or the reason it failed the gate."""
    results: list = [None] * len(batch)
    pending = list(range(len(batch)))
    tries = job.cfg.max_tries if job.gate else 1
    for attempt in range(tries):
        rows = [batch[i] for i in pending]
        originals = [image for _, (_, _, image, _) in rows]
        captions = [pair.caption for _, (pair, *_) in rows]
        seeds = [(plan.edit_seed + attempt) % (2**63 - 1) for _, (_, plan, _, _) in rows]  # "the next seed"
        edited = edit_with_flags(job.editor, originals, captions, seeds)
        scores = (job.gate.score(originals, edited.images, captions, [job.style.styled_caption(c) for c in captions])
                  if job.gate else [None] * len(rows))
        still = []
        for k, i in enumerate(pending):
            if scores[k] is None or job.gate.passes(scores[k]):
                results[i] = (edited.images[k], seeds[k], edited.nsfw[k], scores[k])
            else:
                results[i] = f"quality gate: {scores[k].describe()} ({job.gate.thresholds.describe()}) after {tries} tries"
                still.append(i)
        pending = still
        if not pending:
            break
    return results


def _part_paths(state: Path, index: int) -> tuple[Path, Path]:
    return state / f"part-{index:06d}.parquet", state / f"part-{index:06d}.json"


def _save_part(state: Path, part: _Part) -> None:
    table_path, summary_path = _part_paths(state, part.index)
    write_parquet(part.table, table_path)
    write_json({"start": part.start, "outcomes": part.outcomes, "rejects": part.rejects,
                "quarantine": part.quarantine, "skipped": part.skipped}, summary_path)


def _load_part(state: Path, index: int, start: int, rows: int) -> _Part | None:
    """A finished part covering exactly these rows, or None if it must be (re)done."""
    table_path, summary_path = _part_paths(state, index)
    if not (summary_path.is_file() and table_path.is_file()):
        return None
    summary = read_json(summary_path)
    if summary["start"] != start or len(summary["outcomes"]) != rows:
        return None  # an earlier run with another process count laid the parts out differently
    return _Part(index, summary["outcomes"], summary["rejects"], summary["quarantine"], summary["skipped"], start)


def _finalize(job: _Job, out: Path, parts: list[_Part]) -> dict:
    """Merge the parts, in order, into shards; write rejects, quarantine, the manifest and the card."""
    state = out / BUILD_STATE
    remove_temp_files(out)
    parts = _cut(parts, job.cfg.num_pairs)
    kept = sum(p.kept for p in parts)
    tables = (pq.read_table(_part_paths(state, p.index)[0], schema=DATASET_SCHEMA).slice(0, p.kept) for p in parts)
    rejects = [r for p in parts for r in p.rejects]
    quarantine = [q for p in parts for q in p.quarantine]
    shards = write_shards(tables, kept, out / "data", job.cfg.shard_size)
    write_parquet(pa.Table.from_pylist(rejects, schema=REJECTS_SCHEMA), out / "rejects.parquet")
    write_parquet(pa.Table.from_pylist(quarantine, schema=QUARANTINE_SCHEMA), out / "quarantine.parquet")
    manifest = {"config": job.identity, "styleprefs_version": __version__, **_tally(job, parts), "shards": shards}
    if job.captions is not None:
        manifest["safety"] = safety_summary(job.captions.backends, quarantine)
    write_json(manifest, out / "manifest.json")
    write_card(out)
    return manifest


def _tally(job: _Job, parts: list[_Part]) -> dict:
    """The manifest's counts, reject reasons and (for a selection other than the default) selection record."""
    rejects = [r for p in parts for r in p.rejects]
    read = sum(len(p.outcomes) for p in parts)
    tally = {
        "counts": {"read": read, "kept": sum(p.kept for p in parts), "rejected": len(rejects),
                   "quarantined": sum(len(p.quarantine) for p in parts),
                   "skipped_duplicate_captions": sum(p.skipped for p in parts), "requested": job.cfg.num_pairs},
        "reject_reasons": _reason_counts(rejects),
    }
    if not job.cfg.selection.is_default:
        tally["selection"] = job.selection.record(read)
    return tally


def _cut(parts: list[_Part], num_pairs: int) -> list[_Part]:
    """The parts up to the row that completes ``num_pairs`` (a round of several processes may overshoot)."""
    cut: list[_Part] = []
    remaining = num_pairs
    for part in parts:
        if remaining == 0:
            break
        n = len(part.outcomes)
        if part.kept >= remaining:  # stop right after the row that completes the quota
            n = [i for i, o in enumerate(part.outcomes) if o == "kept"][remaining - 1] + 1
        outcomes = part.outcomes[:n]
        cut.append(_Part(part.index, outcomes, part.rejects[:outcomes.count("rejected")],
                         part.quarantine[:outcomes.count("quarantined")], part.skipped, part.start))
        remaining -= cut[-1].kept
    return cut


def _reason_counts(rejects: list[dict]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for r in rejects:
        kind = r["reason"].split(" (")[0]
        counts[kind] = counts.get(kind, 0) + 1
    return counts
