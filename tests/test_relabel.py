"""`styleprefs relabel`: labels from a scorer, on the trained mini-clip; batch size, resume, ties, bad input."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from styleprefs import relabel as rl
from styleprefs.build import BuildConfig, build_dataset
from styleprefs.eval import rewards
from styleprefs.inspect import inspect_dataset
from styleprefs.relabel import RelabelOptions, relabel
from styleprefs.trainer.data import read_pairs
from test_battery import assert_error, run, snapshot
from test_loaders import _load, diffusion_dpo_rows, pickscore_batch

WINTER = "winter=mini-clip"
SHARD_SIZE = 5  # 16 pairs: 4 shards


@pytest.fixture(scope="module")
def winter(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """16 Winter pairs from the sample scenes: the preferred image is always the winter edit."""
    out = tmp_path_factory.mktemp("relabel") / "winter"
    build_dataset(BuildConfig(style="winter", source="sample", num_pairs=16, shard_size=SHARD_SIZE), out,
                  show_progress=False)
    return out


@pytest.fixture
def dataset(winter: Path, tmp_path: Path) -> Path:
    """A fresh copy to relabel in place."""
    return Path(shutil.copytree(winter, tmp_path / "ds"))


def _rows(dataset: Path) -> list[dict]:
    return pq.read_table(dataset / "data").drop_columns(["jpg_0", "jpg_1"]).to_pylist()


def _manifest(dataset: Path) -> dict:
    return json.loads((dataset / "manifest.json").read_text())


class _Opposite(rewards.Scorer):
    """The winter score turned around: prefers the image that looks least like winter."""

    def __init__(self, inner: rewards.Scorer):
        self.inner, self.name = inner, f"not-{inner.name}"

    def describe(self) -> dict:
        return {"model": "1 - " + self.inner.describe()["model"]}

    def score(self, prompts, images, batch_size=8):
        return 1.0 - self.inner.score(prompts, images, batch_size)


def test_winter_scorer_agrees_with_the_edits_and_its_opposite_does_not(winter, tmp_path, monkeypatch, capsys):
    before = _rows(winter)
    report = relabel(winter, RelabelOptions(WINTER), out=tmp_path / "out", show_progress=False)
    agreement = report.summary["agreement"]
    with capsys.disabled():
        print(f"\nmini-clip winter relabel: agreement {agreement:.3f} over {report.summary['counts']['compared']} pairs")
    assert agreement >= 0.9
    after = _rows(tmp_path / "out")
    assert [r["source"] for r in after] == [r["source"] for r in before]
    for old, new in zip(before, after):
        assert (new["original_label_0"], new["original_label_1"]) == (old["label_0"], old["label_1"])
        assert new["label_0"] == float(new["score_0"] > new["score_1"]) and new["label_0"] + new["label_1"] == 1.0
        assert new["best_image_uid"] == new[f"image_{0 if new['label_0'] == 1.0 else 1}_uid"]
    agree = sum(r["label_0"] == r["original_label_0"] for r in after)
    assert agree == report.summary["counts"]["agree"]
    assert _manifest(tmp_path / "out")["relabel"]["agreement"] == agreement
    assert inspect_dataset(tmp_path / "out").problems == []
    card = (tmp_path / "out" / "README.md").read_text()
    assert "Labels from a scorer" in card and "`winter=mini-clip`" in card and "| `score_0` | float64 |" in card

    real_load = rewards.load_scorer
    monkeypatch.setattr(rewards, "load_scorer", lambda *a, **k: _Opposite(real_load(*a, **k)))
    opposite = relabel(winter, RelabelOptions(WINTER), out=tmp_path / "opposite", show_progress=False)
    with capsys.disabled():
        print(f"its opposite: agreement {opposite.summary['agreement']:.3f}")
    assert opposite.summary["agreement"] <= 0.1
    assert opposite.summary["agreement"] == pytest.approx(1 - agreement)


def test_any_batch_size_gives_the_same_scores(winter, tmp_path):
    one = relabel(winter, RelabelOptions(WINTER, batch_size=1), out=tmp_path / "b1", show_progress=False)
    five = relabel(winter, RelabelOptions(WINTER, batch_size=5), out=tmp_path / "b5", show_progress=False)
    a, b = _rows(tmp_path / "b1"), _rows(tmp_path / "b5")
    for column in ("score_0", "score_1"):
        np.testing.assert_allclose([r[column] for r in a], [r[column] for r in b], rtol=0, atol=1e-6)
    assert [r["label_0"] for r in a] == [r["label_0"] for r in b]
    assert one.summary["counts"] == five.summary["counts"]


def test_a_killed_run_resumes_without_rescoring_finished_shards(winter, dataset, tmp_path, monkeypatch):
    expected = tmp_path / "expected"
    shutil.copytree(winter, expected)
    relabel(expected, RelabelOptions(WINTER), show_progress=False)
    real = rl._score_shard
    calls: list[Path] = []

    def die_after_the_first_shard(scorer, table, batch_size, path):
        if calls:
            raise KeyboardInterrupt
        calls.append(path)
        return real(scorer, table, batch_size, path)

    monkeypatch.setattr(rl, "_score_shard", die_after_the_first_shard)
    untouched = snapshot(dataset)
    with pytest.raises(KeyboardInterrupt):
        relabel(dataset, RelabelOptions(WINTER), show_progress=False)
    assert {k: v for k, v in snapshot(dataset).items() if not k.startswith(rl.SCORES)} == untouched
    assert (dataset / rl.SCORES / "scores-00000.parquet").is_file()

    def counting(scorer, table, batch_size, path):
        calls.append(path)
        return real(scorer, table, batch_size, path)

    calls.clear()
    monkeypatch.setattr(rl, "_score_shard", counting)
    relabel(dataset, RelabelOptions(WINTER), show_progress=False)
    assert [p.name for p in calls] == [p.name for p in sorted((winter / "data").glob("*.parquet"))[1:]]
    assert snapshot(dataset) == snapshot(expected)
    assert not (dataset / rl.SCORES).exists()


def test_rerun_is_a_no_op_and_other_settings_start_from_the_original_labels(dataset, capsys):
    before = _rows(dataset)
    assert relabel(dataset, RelabelOptions(WINTER), show_progress=False).status == "relabelled"
    done = snapshot(dataset)
    code, out, _ = run(["relabel", str(dataset), "--scorer", WINTER], capsys)
    assert code == 0 and "already relabelled with these settings" in out and "agreement" in out
    assert snapshot(dataset) == done
    # every pair a tie: back to 0.5/0.5 labels, yet the original labels stay the build's
    relabel(dataset, RelabelOptions(WINTER, tie_tolerance=1.0), show_progress=False)
    rows = _rows(dataset)
    assert all(r["label_0"] == r["label_1"] == 0.5 and r["best_image_uid"] is None for r in rows)
    assert [r["original_label_0"] for r in rows] == [r["label_0"] for r in before]
    assert _manifest(dataset)["relabel"]["agreement"] is None


def _median_gap_of(winter: Path, tmp_path: Path) -> float:
    """The median |score_0 - score_1| of the winter scorer on ``winter`` (relabelled into tmp_path/scored)."""
    relabel(winter, RelabelOptions(WINTER), out=tmp_path / "scored", show_progress=False)
    return float(np.median([abs(r["score_0"] - r["score_1"]) for r in _rows(tmp_path / "scored")]))


@pytest.mark.parametrize("ties", ["keep", "drop", "original"])
def test_tie_policies(winter, tmp_path, ties):
    tolerance = _median_gap_of(winter, tmp_path)  # about half the pairs become ties
    scored = tmp_path / "scored"
    out = tmp_path / ties
    report = relabel(winter, RelabelOptions(WINTER, ties=ties, tie_tolerance=tolerance), out=out, show_progress=False)
    everything = {r["source"]: r for r in _rows(scored)}
    tied = {s for s, r in everything.items() if abs(r["score_0"] - r["score_1"]) <= tolerance}
    assert 0 < len(tied) < 16 and report.summary["counts"]["scorer_ties"] == len(tied)
    rows = {r["source"]: r for r in _rows(out)}
    manifest = _manifest(out)
    counts = manifest["counts"]
    assert counts["read"] == counts["kept"] + counts["rejected"] + counts["quarantined"]
    if ties == "drop":
        assert set(rows) == set(everything) - tied and counts["rejected"] == len(tied)
        assert manifest["reject_reasons"] == {"relabel tie": len(tied)}
        rejects = pq.read_table(out / "rejects.parquet").to_pylist()
        assert {r["source"] for r in rejects} == tied and all(r["reason"].startswith("relabel tie (") for r in rejects)
    else:
        assert set(rows) == set(everything) and counts["rejected"] == 0
    for source, row in rows.items():
        if source not in tied:
            assert (row["label_0"], row["label_1"]) == (everything[source]["label_0"], everything[source]["label_1"])
        elif ties == "keep":
            assert row["label_0"] == row["label_1"] == 0.5 and row["best_image_uid"] is None
        else:
            assert (row["label_0"], row["label_1"]) == (row["original_label_0"], row["original_label_1"])
    assert inspect_dataset(out).problems == []


def test_relabelled_data_loads_in_the_pickapic_loaders_and_the_trainer(winter, tmp_path):
    out = tmp_path / "out"
    relabel(winter, RelabelOptions(WINTER, tie_tolerance=_median_gap_of(winter, tmp_path)), out=out,
            show_progress=False)
    labels = [r["label_0"] for r in _rows(out)]
    ties = labels.count(0.5)
    assert 0 < ties < 16
    dataset = _load(out)
    assert len(diffusion_dpo_rows(dataset)) == 16 - ties  # Diffusion-DPO drops the 0.5/0.5 pairs
    batch = pickscore_batch(dataset, keep_only_different=True, keep_only_with_label=True)
    assert batch["label_0"].tolist() == labels
    pairs, counts = read_pairs(out)
    assert counts == {"read": 16, "ties_dropped": ties, "kept": 16 - ties}
    by_index = {p.index: p for p in pairs}
    for index, row in enumerate(pq.read_table(out / "data").to_pylist()):
        if row["label_0"] != 0.5:
            assert by_index[index].winner == row[f"jpg_{0 if row['label_0'] == 1.0 else 1}"]


def test_cache_reads_a_relabelled_dataset(winter, tmp_path, capsys):
    out = tmp_path / "out"
    relabel(winter, RelabelOptions(WINTER), out=out, show_progress=False)
    code, stdout, err = run(["cache", str(out), "--model", "tiny", "--resolution", "32", "--clip-model", "none"], capsys)
    assert code == 0, err
    assert "cache ready" in stdout


@pytest.mark.parametrize("args,expected", [
    (["--scorer", "nosuch"], "unknown scorer 'nosuch'"),
    (["--scorer", WINTER, "--ties", "sometimes"], "--ties must be one of keep, drop, original"),
    (["--scorer", WINTER, "--tie-tolerance", "-1"], "--tie-tolerance"),
    (["--scorer", WINTER, "--batch-size", "0"], "--batch-size"),
    (["--scorer", WINTER, "--out", "{dataset}/data/inside"], "overlaps DATASET"),
    (["--scorer", "clip=/nowhere/clip"], "--scorer clip=/nowhere/clip: no such path /nowhere/clip"),
])
def test_bad_input_is_one_line(dataset, args, expected, capsys):
    before = snapshot(dataset)
    assert_error(run(["relabel", str(dataset), *[a.format(dataset=dataset) for a in args]], capsys), expected)
    assert snapshot(dataset) == before


def test_missing_dataset_is_one_line_and_creates_nothing(tmp_path, capsys):
    assert_error(run(["relabel", str(tmp_path / "nowhere"), "--scorer", WINTER], capsys), "has no manifest.json")
    assert not (tmp_path / "nowhere").exists()
