"""`styleprefs filter-unsafe`: accounting, atomicity, recovery, no-op re-runs."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from styleprefs import filter_unsafe as fu
from styleprefs.build import BuildConfig, build_dataset
from styleprefs.errors import StyleprefsError
from styleprefs.filter_unsafe import SafetyOptions, filter_unsafe
from styleprefs.inspect import inspect_dataset


@pytest.fixture
def unfiltered(pickapic_dir: Path, tmp_path: Path) -> Path:
    """A dataset built without the caption filter: the fixture's unsafe caption is still in it."""
    out = tmp_path / "ds"
    build_dataset(BuildConfig(source=str(pickapic_dir), num_pairs=100, shard_size=5, safety=False), out,
                  show_progress=False)
    return out


def _snapshot(dataset: Path) -> dict[str, bytes]:
    return {str(p.relative_to(dataset)): p.read_bytes() for p in sorted(dataset.rglob("*")) if p.is_file()}


def _blocklist(tmp_path: Path, *terms: str) -> str:
    path = tmp_path / "block.txt"
    path.write_text("".join(f"{t}\n" for t in terms))
    return str(path)


def test_quarantine_accounting(unfiltered, tmp_path):
    before = json.loads((unfiltered / "manifest.json").read_text())
    options = SafetyOptions(blocklists=(_blocklist(tmp_path, "ramen"),), learned_text=False)
    report = filter_unsafe(unfiltered, options, show_progress=False)
    after = json.loads((unfiltered / "manifest.json").read_text())
    quarantine = pq.read_table(unfiltered / "quarantine.parquet").to_pylist()
    assert {(q["category"], q["matched"], q["backend"]) for q in quarantine} == {
        ("sexual", "nude*", "text-lists"), ("custom", "ramen", "text-lists")}
    assert len(quarantine) == len(report.quarantined) == 5  # ramen: rows 4, 13, 22; nude: rows 8, 17
    assert after["counts"]["kept"] + len(quarantine) == before["counts"]["kept"] == 20
    assert after["counts"]["quarantined"] == 5
    assert after["safety"]["quarantined_by_category"] == {"custom": 3, "sexual": 2}
    rows = pq.read_table(unfiltered / "data").to_pylist()
    assert len(rows) == 15 and not any("ramen" in r["caption"] or "n.u.d.e" in r["caption"] for r in rows)
    assert [s["rows"] for s in after["shards"]] == [5, 5, 5]
    assert inspect_dataset(unfiltered).problems == []
    assert "sexual" in (unfiltered / "README.md").read_text()
    assert not (unfiltered / fu.TMP).exists() and not (unfiltered / fu.OLD).exists()


def test_rerun_is_a_no_op(unfiltered):
    filter_unsafe(unfiltered, show_progress=False)
    snapshot = _snapshot(unfiltered)
    assert filter_unsafe(unfiltered, show_progress=False).status == "no-op"
    assert _snapshot(unfiltered) == snapshot


def test_failure_while_staging_leaves_the_dataset_intact(unfiltered, monkeypatch):
    snapshot = _snapshot(unfiltered)

    def fail(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(fu, "write_json", fail)  # after the new shards are staged
    with pytest.raises(OSError):
        filter_unsafe(unfiltered, show_progress=False)
    monkeypatch.undo()
    fu.SWAP.recover(unfiltered, fresh=False)
    assert _snapshot(unfiltered) == snapshot


def test_crash_in_the_middle_of_the_swap_is_rolled_back(unfiltered, monkeypatch):
    snapshot = _snapshot(unfiltered)
    real_replace = os.replace

    def crash_mid_swap(src, dst):
        if Path(src).parent.name == fu.TMP and Path(src).name == "quarantine.parquet":
            raise KeyboardInterrupt  # old data and quarantine backed up, new data in place, quarantine not yet
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", crash_mid_swap)
    with pytest.raises(KeyboardInterrupt):
        filter_unsafe(unfiltered, show_progress=False)
    monkeypatch.undo()
    assert (unfiltered / fu.OLD).exists()  # a half-done swap is on disk ...
    report = filter_unsafe(unfiltered, show_progress=False)  # ... and the next run rolls it back first
    assert len(report.quarantined) == 2
    assert inspect_dataset(unfiltered).problems == []
    fu.SWAP.recover(unfiltered, fresh=False)
    assert set(_snapshot(unfiltered)) == set(snapshot)


def test_out_writes_a_filtered_copy(unfiltered, tmp_path):
    snapshot = _snapshot(unfiltered)
    copy = tmp_path / "copy"
    filter_unsafe(unfiltered, out=copy, show_progress=False)
    assert _snapshot(unfiltered) == snapshot
    assert inspect_dataset(copy).problems == []
    assert json.loads((copy / "manifest.json").read_text())["counts"]["kept"] == 18
    assert (copy / "rejects.parquet").exists() and (copy / "README.md").exists()
    assert filter_unsafe(unfiltered, out=copy, show_progress=False).status == "no-op"  # the same run: done
    with pytest.raises(StyleprefsError, match="not empty"):
        filter_unsafe(unfiltered, SafetyOptions(text_threshold=0.9), out=copy, show_progress=False)


def test_bad_inputs(unfiltered, tmp_path):
    with pytest.raises(StyleprefsError, match="no manifest.json"):
        filter_unsafe(tmp_path, show_progress=False)
    with pytest.raises(StyleprefsError, match="nowhere.txt"):
        filter_unsafe(unfiltered, SafetyOptions(blocklists=(str(tmp_path / "nowhere.txt"),)), show_progress=False)


def test_model_backends_store_scores_and_quarantine(unfiltered):
    """Tiny text classifier (flags 'nude', 'nsfw', ...) and tiny SD safety checker (flags bright images)."""

    from styleprefs.images import decode
    from styleprefs.safety.classifier import TextSafetyClassifier
    from styleprefs.safety.image import ImageSafetyChecker
    from styleprefs.resolve import offline_or_path

    before = pq.read_table(unfiltered / "data").to_pylist()
    checker = ImageSafetyChecker(offline_or_path("tiny-safety-checker"))
    classifier = TextSafetyClassifier(offline_or_path("tiny-text-classifier"))
    worst = {r["source"]: max(checker.scores([decode(r["jpg_0"]), decode(r["jpg_1"])])) for r in before}
    threshold = sorted(worst.values())[len(worst) // 2]  # flag about half, so both outcomes are exercised
    image_flagged = {source for source, score in worst.items() if score > threshold}
    text_flagged = {r["source"] for r, s in zip(before, classifier.scores([r["caption"] for r in before])) if s >= 0.5}
    assert image_flagged and len(image_flagged | text_flagged) < len(before)

    options = SafetyOptions(text_model="tiny-text-classifier", images=True, image_model="tiny-safety-checker",
                            image_threshold=threshold, replace_default_lists=True, learned_text=False)
    report = filter_unsafe(unfiltered, options, show_progress=False)
    assert {q["source"] for q in report.quarantined} == image_flagged | text_flagged
    kept = pq.read_table(unfiltered / "data").to_pylist()
    assert len(kept) + len(report.quarantined) == len(before)
    for row in kept:
        assert max(row["safety_image_score_0"], row["safety_image_score_1"]) <= threshold
        assert 0 <= row["safety_text_score"] < 0.5
    manifest = json.loads((unfiltered / "manifest.json").read_text())
    assert manifest["safety"]["backends"] == ["text-lists", "text-classifier:tiny-text-classifier",
                                              "image-checker:tiny-safety-checker"]
