"""Dataset cards: YAML the Hub and `datasets` accept, a body with the build's facts, honest license text."""

from __future__ import annotations

import importlib.resources
import json
import shutil
from pathlib import Path

import datasets
import pytest
import yaml
from huggingface_hub import DatasetCard, DatasetCardData

from styleprefs.build import BuildConfig, build_dataset
from styleprefs.card import check_card, render_card, size_category, write_card
from styleprefs.errors import StyleprefsError


@pytest.fixture(scope="module")
def winter(tmp_path_factory) -> Path:
    from conftest import write_pickapic_parquet

    root = tmp_path_factory.mktemp("card")
    src = write_pickapic_parquet(root / "pickapic")
    out = root / "winter"
    build_dataset(BuildConfig(source=str(src), style="winter", num_pairs=10, shard_size=4), out, show_progress=False)
    return out


@pytest.fixture
def copy(winter, tmp_path) -> Path:
    """A private copy of the dataset, for tests that change it."""
    return Path(shutil.copytree(winter, tmp_path / "winter"))


def _yaml(text: str) -> dict:
    assert text.startswith("---\n")
    return yaml.safe_load(text.split("---\n")[1])


def _edit_manifest(dataset: Path, **changes) -> None:
    path = dataset / "manifest.json"
    manifest = json.loads(path.read_text())
    manifest.update(changes)
    path.write_text(json.dumps(manifest))


def test_template_ships_as_package_data():
    assert (importlib.resources.files("styleprefs.data_cards") / "style_dataset.md").is_file()


def test_card_yaml_parses_and_validates(winter):
    text = render_card(winter)
    meta = _yaml(text)
    card = DatasetCard(text)
    assert card.data.to_dict() == meta
    assert DatasetCardData(**meta).to_dict() == meta  # round trip through huggingface_hub's card data
    check_card(text)
    assert meta["task_categories"] == ["text-to-image"]
    assert meta["size_categories"] == ["n<1K"]
    assert meta["tags"] == ["preference", "dpo", "style-alignment", "pick-a-pic", "winter"]
    assert "source_datasets" not in meta  # local files: nothing verifiable to name
    assert meta["configs"] == [{"config_name": "winter", "data_files": [{"split": "train", "path": "data/train-*"}], "default": True}]


def test_dataset_info_is_what_datasets_writes(winter):
    info = _yaml(render_card(winter))["dataset_info"]
    features = {f["name"]: f["dtype"] for f in info["features"]}
    assert features["jpg_0"] == features["jpg_1"] == "binary"
    assert features["label_0"] == features["label_1"] == "float64"
    assert features["created_at"] == "timestamp[ns]"
    assert info["config_name"] == "winter"
    assert info["splits"][0]["name"] == "train" and info["splits"][0]["num_examples"] == 10
    assert info["dataset_size"] == info["splits"][0]["num_bytes"] > 0
    assert info["download_size"] == sum(p.stat().st_size for p in (winter / "data").glob("*.parquet"))


def test_no_license_means_no_key_and_says_so(winter):
    text = render_card(winter)
    assert "license" not in _yaml(text)
    assert "No license has been chosen for this dataset yet" in text


def test_license_goes_into_yaml(winter):
    text = render_card(winter, license="cc-by-nc-4.0")
    assert _yaml(text)["license"] == "cc-by-nc-4.0"
    assert "No license has been chosen" not in text and "released under `cc-by-nc-4.0`" in text


@pytest.mark.parametrize("bad", ["Apache 2.0", "MIT!", ""])
def test_malformed_license_is_refused(winter, bad):
    with pytest.raises(StyleprefsError, match="not a Hub license identifier"):
        render_card(winter, license=bad)


def test_body_has_build_parameters_and_counts(winter):
    text = render_card(winter)
    manifest = json.loads((winter / "manifest.json").read_text())
    counts = manifest["counts"]
    assert f"| {counts['read']} | {counts['kept']} | {counts['rejected']} | {counts['quarantined']} | 0 | 10 |" in text
    assert "| empty caption | 1 |" in text
    assert "| Seed | 0 " in text and "| Rows per shard | 4 |" in text
    assert "`classic`, model `styleprefs/classic`" in text
    assert json.dumps(manifest["config"]["editor"]["params"], indent=2, sort_keys=True) in text
    assert "2 local parquet files in Pick-a-Pic v2's schema" in text
    assert str(winter.parent) not in text  # no local paths in a card meant for publishing
    for shard in manifest["shards"]:
        assert f"| `{shard['path']}` | {shard['rows']} | `{shard['sha256']}` |" in text
    assert "Checked with: text-lists" in text
    for heading in ("## What the data is", "## How to load it", "## Schema", "## Known limitations", "## License"):
        assert heading in text
    assert "| `jpg_0` | binary |" in text and "| `label_0` | float64 |" in text


def test_safety_report_from_manifest(copy):
    _edit_manifest(copy, safety={"backends": ["text-wordlist"], "quarantined_by_category": {"sexual": 2, "hate": 1}})
    text = render_card(copy)
    assert "Checked with: text-wordlist." in text
    assert "| hate | 1 |" in text and "| sexual | 2 |" in text
    assert "No safety filter was run" not in text


@pytest.mark.parametrize("source, expected, shown", [
    ({"source": "pickapic", "location": "yuvalkirstain/pickapic_v2", "split": "train", "format": "hub", "files": []},
     ["yuvalkirstain/pickapic_v2"], "(https://huggingface.co/datasets/yuvalkirstain/pickapic_v2), split `train`"),
    ({"source": "sample", "size": 512, "num_scenes": 2000}, ["original"], "bundled synthetic scenes"),
])
def test_source_datasets(copy, source, expected, shown):
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["config"]["source"] = source
    (copy / "manifest.json").write_text(json.dumps(manifest))
    text = render_card(copy)
    assert _yaml(text)["source_datasets"] == expected
    assert shown in text


def test_load_dataset_reads_the_local_folder(copy, tmp_path):
    path = write_card(copy)
    assert path == copy / "README.md"
    ds = datasets.load_dataset(str(copy), "winter", split="train", cache_dir=str(tmp_path / "cache"))
    assert len(ds) == 10
    assert ds.features["jpg_0"] == datasets.Value("binary") and ds.features["label_0"] == datasets.Value("float64")
    assert not list(copy.glob(".README.md.*"))  # written atomically, no temp file left


def test_config_name_and_pretty_name(winter):
    meta = _yaml(render_card(winter, config_name="snow_v2", pretty_name="Snowy pairs"))
    assert meta["configs"][0]["config_name"] == "snow_v2" and meta["pretty_name"] == "Snowy pairs"
    assert _yaml(render_card(winter))["pretty_name"] == "styleprefs: winter style preference pairs"


def test_existing_card_keeps_other_configs_and_hand_written_metadata(winter):
    first = render_card(winter, config_name="alpha", repo_folder="alpha", pretty_name="My prefs", license="mit")
    merged = render_card(winter, config_name="beta", repo_folder="beta", existing_card=first)
    meta = _yaml(merged)
    assert [c["config_name"] for c in meta["configs"]] == ["alpha", "beta"]
    assert [i["config_name"] for i in meta["dataset_info"]] == ["alpha", "beta"]
    assert meta["license"] == "mit" and meta["pretty_name"] == "My prefs"
    assert "<!-- styleprefs-config: alpha -->" in merged and "<!-- styleprefs-config: beta -->" in merged
    assert "`alpha` (10 pairs), `beta` (10 pairs)" in merged
    assert render_card(winter, config_name="alpha", repo_folder="alpha", existing_card=merged) == merged


@pytest.mark.parametrize("existing, message", [
    ("---\nlicense: mit\n---\n# x\n", "already has license 'mit'"),
    ("---\n- a list\n---\n# x\n", "cannot be read as a dataset card"),
    ("---\nconfigs: 3\n---\n# x\n", "cannot be read as a dataset card: Expected configs to be a list"),
])
def test_bad_existing_card(winter, existing, message):
    with pytest.raises(StyleprefsError, match=message):
        render_card(winter, license="cc0-1.0", existing_card=existing)


def test_bad_input(tmp_path, winter):
    with pytest.raises(StyleprefsError, match="no manifest.json"):
        render_card(tmp_path)
    with pytest.raises(StyleprefsError, match="config name 'no spaces'"):
        render_card(winter, config_name="no spaces")


def test_missing_shard(copy):
    next((copy / "data").glob("*.parquet")).unlink()
    with pytest.raises(StyleprefsError, match="missing shard"):
        render_card(copy)


@pytest.mark.parametrize("rows, label", [(0, "n<1K"), (999, "n<1K"), (1000, "1K<n<10K"), (10_000, "10K<n<100K"),
                                         (959_040, "100K<n<1M")])
def test_size_category(rows, label):
    assert size_category(rows) == label
