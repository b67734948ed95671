"""The dataset card: ``README.md`` rendered from ``data_cards/style_dataset.md`` and a dataset's manifest.

One card can describe several configs (one per style) in one repo. Its YAML holds one ``configs`` entry
and one ``dataset_info`` entry per config, exactly one config marked ``default: true`` (the one a client
that passes no config name loads: the first pushed, unless ``default_config`` names another); its body holds one section per config between
``<!-- styleprefs-config: NAME -->`` markers. Rendering with ``existing_card`` (the card already in
the repo) keeps the other configs' YAML entries and body sections and replaces only this config's.

Layout (``repo_folder``): a local dataset folder (``None``) keeps its shards in ``data/`` and
``manifest.json`` beside the card; ``styleprefs push`` puts a config's shards and manifest in the repo
folder ``<config>/`` and passes that name. The card's ``configs`` point at ``<folder>/train-*``.
"""

from __future__ import annotations

import difflib
import importlib.resources
import json
import re
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import yaml
from datasets import Features, SplitDict, SplitInfo
from datasets.info import DatasetInfo, DatasetInfosDict
from datasets.utils.metadata import MetadataConfigs
from huggingface_hub import DatasetCard, DatasetCardData

from styleprefs.editors import OUTPUT_LICENCES
from styleprefs.errors import StyleprefsError
from styleprefs.hub_licenses import HUB_LICENSES
from styleprefs.inspect import read_manifest
from styleprefs.io import write_text

TEMPLATE = "style_dataset.md"
PICKAPIC_HUB = "yuvalkirstain/pickapic_v2"
TASK_CATEGORIES = ["text-to-image"]
BASE_TAGS = ["preference", "dpo", "style-alignment", "pick-a-pic"]
DEFAULT_NAME_PREFIX = "styleprefs:"
# (exclusive upper bound, Hub size category); anything larger is "n>1T"
SIZE_CATEGORIES = tuple((10 ** (3 + i), label) for i, label in enumerate(
    ["n<1K", "1K<n<10K", "10K<n<100K", "100K<n<1M", "1M<n<10M", "10M<n<100M", "100M<n<1B", "1B<n<10B",
     "10B<n<100B", "100B<n<1T"]))
LICENSES_URL = "https://huggingface.co/docs/hub/repositories-licenses"

_CONFIG_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_SECTION = re.compile(r"<!-- styleprefs-config: (?P<name>[\w.-]+) -->.*?<!-- /styleprefs-config: (?P=name) -->", re.S)

COLUMN_MEANINGS = {
    "caption": "the prompt, as written by the source's user",
    "jpg_0": "first image, encoded bytes (JPEG)",
    "jpg_1": "second image, encoded bytes (JPEG)",
    "label_0": "1.0 if `jpg_0` is preferred (the edit), else 0.0",
    "label_1": "1.0 if `jpg_1` is preferred (the edit), else 0.0",
    "image_0_uid": "id of `jpg_0` (the source's id for an original image)",
    "image_1_uid": "id of `jpg_1`",
    "image_0_url": "the source's URL of `jpg_0` when it is an original image with a known URL, else null",
    "image_1_url": "the source's URL of `jpg_1` when it is an original image with a known URL, else null",
    "best_image_uid": "id of the preferred image (the edit)",
    "model_0": "what made `jpg_0`: the source's generator, or the editor's model for the edit",
    "model_1": "what made `jpg_1`",
    "ranking_id": "the source's ranking id (0 when the source has none)",
    "user_id": "the source's user id (0 when the source has none)",
    "num_example_per_prompt": "the source's value (pairs shown for this prompt), 1 when the source has none",
    "has_label": "true: every pair has a preference (never a tie)",
    "are_different": "true: the two images always differ (an edit and its original)",
    "created_at": "when the source pair was created",
    "style": "style name",
    "editor": "editor name",
    "edit_params": "JSON of everything that determined the edit",
    "seed": "the editor's seed for this row",
    "source": "`<source>:<row key>` of the source pair",
    "source_preferred": "which original image the source's user preferred: `jpg_0`, `jpg_1` or `tie`",
    "source_edited": "which of the source's two images (`jpg_0` or `jpg_1`) was edited",
    "clip_direction": "CLIP directional similarity of the edit (null when the quality gate did not run)",
    "clip_image": "CLIP image similarity of edit and original (null when the quality gate did not run)",
    "clip_text_edit": "CLIP similarity of the edit and the styled caption (null when the quality gate did not run)",
    "clip_text_original": "CLIP similarity of the original and the caption (null when the quality gate did not run)",
    "editor_nsfw": "the editor's own safety checker flagged the edit (null when the editor has no checker)",
    "safety_text_score": "the text safety classifier's probability that the caption is unsafe (null if not run)",
    "safety_image_score_0": "the image safety check's score of `jpg_0` (open_nsfw: P(NSFW), flagged above 0.8; "
                            "SD checker: flagged above 0; null if not run)",
    "safety_image_score_1": "the image safety check's score of `jpg_1` (as for `jpg_0`)",
    "original_label_0": "`label_0` before `styleprefs relabel` or `styleprefs review` first changed it "
                        "(the build's label)",
    "original_label_1": "`label_1` before `styleprefs relabel` or `styleprefs review` first changed it",
    "score_0": "the relabelling scorer's score of `jpg_0` (the config's relabelling section names the scorer)",
    "score_1": "the relabelling scorer's score of `jpg_1`",
}
# A relabelled dataset's labels come from a scorer, not from the edit.
RELABELLED_MEANINGS = {
    "label_0": "1.0 if the relabelling scorer scored `jpg_0` higher, 0.0 if lower; a tie follows the config's tie policy",
    "label_1": "1.0 if the relabelling scorer scored `jpg_1` higher, 0.0 if lower; a tie follows the config's tie policy",
    "best_image_uid": "id of the preferred image, null for a tie",
}


def render_card(dataset: Path, *, license: str | None = None, config_name: str | None = None,
                repo_folder: str | None = None, repo_id: str | None = None, pretty_name: str | None = None,
                existing_card: str | None = None, default_config: str | None = None) -> str:
    """The ``README.md`` text for ``dataset``, validated locally; raises StyleprefsError on bad input.

    ``config_name`` defaults to the dataset's style; ``repo_folder`` chooses the layout (module doc).
    ``license=None`` writes no license key (the body says none was chosen) unless ``existing_card``
    already has one. ``repo_id`` only appears in the loading example. ``default_config`` marks that config
    default; otherwise the existing card's default stays (or its first config, or this one in a new card).
    """
    dataset = Path(dataset)
    manifest = read_manifest(dataset)
    name = check_config_name(config_name or manifest["config"]["build"]["style"])
    if license is not None:
        check_license(license)
    existing = _parse_existing(existing_card)
    schema = _shard_schema(dataset, manifest)
    data_dir = repo_folder or "data"
    data = _card_data(existing, manifest, schema, dataset, name=name, data_dir=data_dir,
                      license=license, pretty_name=pretty_name)
    _mark_default(data, _default_config(existing, name, default_config, [n for n, _ in _config_rows(data)]))
    manifest_path = f"{repo_folder}/manifest.json" if repo_folder else "manifest.json"
    sections = _sections(existing, data, _config_facts(dataset, manifest, name, data_dir, manifest_path))
    card = DatasetCard.from_template(
        data,
        template_path=str(importlib.resources.files("styleprefs.data_cards") / TEMPLATE),
        load_path=repo_id or f"path/to/{dataset.resolve().name}",
        config_list=_config_list(data),
        sections=sections,
        columns=_columns(schema, relabelled="relabel" in manifest),
    )
    text = re.sub(r"\n{3,}", "\n\n", card.content)
    check_card(text)
    return text


def write_card(dataset: Path, **kwargs) -> Path:
    """Render the card for a local dataset folder and write it to ``DATASET/README.md`` atomically."""
    path = Path(dataset) / "README.md"
    write_text(render_card(dataset, **kwargs), path)
    return path


def check_card(text: str) -> None:
    """Check a card the way the Hub and ``datasets`` read it, offline.

    ``DatasetCard.validate`` posts to the Hub, so this parses the YAML with ``DatasetCard`` and reads
    ``configs`` and ``dataset_info`` with the parsers ``datasets.load_dataset`` uses.
    """
    data = _read_card(text, "dataset card is invalid").data
    sizes = {label for _, label in SIZE_CATEGORIES} | {"n>1T", "unknown", "other"}  # the Hub's list
    if not set(_as_list(data.size_categories)) <= sizes:
        raise StyleprefsError(f"dataset card is invalid: size_categories {data.size_categories} is not a Hub size category")


def check_license(license: str) -> str:
    """``license`` if it is one of the Hub's license identifiers (an offline copy of its list)."""
    if license not in HUB_LICENSES:
        close = difflib.get_close_matches(license.lower(), sorted(HUB_LICENSES), n=1)
        hint = f"did you mean {close[0]}? " if close else ""
        raise StyleprefsError(f"license {license!r} is not a Hub license identifier: {hint}see {LICENSES_URL} (e.g. "
                              "cc-by-nc-4.0, openrail++; other for a license the Hub does not list)")
    return license


def check_config_name(name: str) -> str:
    if not _CONFIG_NAME.match(name) or ".." in name:
        raise StyleprefsError(f"config name {name!r} must start with a letter or digit and hold only letters, digits, '_', '-' and '.'")
    return name


def size_category(rows: int) -> str:
    return next((label for limit, label in SIZE_CATEGORIES if rows < limit), "n>1T")


def human_size(n: float) -> str:
    if n < 1000:
        return f"{n:.0f} B"
    for unit in ("kB", "MB", "GB"):
        n /= 1000
        if n < 1000:
            break
    return f"{n:.1f} {unit}"


# ------------------------------------------------------------------------------------------ YAML


def _card_data(existing: DatasetCard | None, manifest: dict, schema: pa.Schema, dataset: Path, *, name: str,
               data_dir: str, license: str | None, pretty_name: str | None) -> DatasetCardData:
    old = existing.data if existing else DatasetCardData()
    data = DatasetCardData(**old.to_dict())
    data.license = _merged_license(old.license, license)
    data.task_categories = _union(old.task_categories, TASK_CATEGORIES)
    data.tags = _union(old.get("tags"), BASE_TAGS + [manifest["config"]["build"]["style"]])
    data.source_datasets = _union(old.source_datasets, _source_datasets(manifest["config"]["source"])) or None
    MetadataConfigs({name: {"data_files": [{"split": "train", "path": f"{data_dir}/train-*"}]}}).to_dataset_card_data(data)
    DatasetInfosDict({name: _dataset_info(dataset, manifest, schema)}).to_dataset_card_data(data)
    data.size_categories = [size_category(sum(rows for _, rows in _config_rows(data)))]
    data.pretty_name = _pretty_name(pretty_name, old.pretty_name, [n for n, _ in _config_rows(data)])
    return data


def _default_config(existing: DatasetCard | None, name: str, requested: str | None, names: list[str]) -> str:
    if requested is not None:
        if requested not in names:
            raise StyleprefsError(f"--default-config {requested!r} is not a config of this repo ({', '.join(names)})")
        return requested
    previous = MetadataConfigs.from_dataset_card_data(existing.data) if existing else {}
    return next((n for n, c in previous.items() if c.get("default")), next(iter(previous), name))


def _mark_default(data: DatasetCardData, default: str) -> None:
    """``default: true`` on the ``default`` config's entry, and on no other."""
    for entry in data.configs:
        entry.pop("default", None)
        if entry["config_name"] == default:
            entry["default"] = True


def _merged_license(old: str | list | None, new: str | None) -> str | list | None:
    if new is not None and old is not None and old != new:
        raise StyleprefsError(f"the repo's card already has license {old!r}; a repo has one license, so --license {new!r} would change it for every config")
    return new if new is not None else old


def _union(old: str | list | None, new: list[str]) -> list[str]:
    return list(dict.fromkeys(_as_list(old) + new))


def _as_list(value: str | list | None) -> list:
    if value is None:
        return []
    return [value] if isinstance(value, str) else list(value)


def _source_datasets(source: dict) -> list[str]:
    if source.get("source") == "sample":
        return ["original"]
    if source.get("format") == "hub":
        return [source["location"]]
    return []  # local files: nothing verifiable to name


def _dataset_info(dataset: Path, manifest: dict, schema: pa.Schema) -> DatasetInfo:
    files = [dataset / s["path"] for s in manifest["shards"]]
    num_bytes = sum(_uncompressed_bytes(f) for f in files)
    split = SplitInfo(name="train", num_bytes=num_bytes, num_examples=manifest["counts"]["kept"])
    return DatasetInfo(features=Features.from_arrow_schema(schema), splits=SplitDict({"train": split}),
                       download_size=sum(f.stat().st_size for f in files), dataset_size=num_bytes)


def _uncompressed_bytes(shard: Path) -> int:
    """Arrow-size estimate from Parquet metadata, without reading the images."""
    meta = pq.ParquetFile(shard).metadata
    return sum(meta.row_group(i).total_byte_size for i in range(meta.num_row_groups))


def _config_rows(data: DatasetCardData) -> list[tuple[str, int]]:
    """(config name, train rows) for every config in the card, in the card's order."""
    infos = DatasetInfosDict.from_dataset_card_data(data)
    names = list(MetadataConfigs.from_dataset_card_data(data))
    return [(n, sum(s.num_examples for s in (infos[n].splits or {}).values()) if n in infos else 0) for n in names]


def _pretty_name(given: str | None, old: str | None, names: list[str]) -> str:
    if given:
        return given
    if old and not old.startswith(DEFAULT_NAME_PREFIX):
        return old  # chosen by a person earlier: keep it
    return f"{DEFAULT_NAME_PREFIX} {', '.join(names)} style preference pairs"


# ------------------------------------------------------------------------------------------ body


def _parse_existing(text: str | None) -> DatasetCard | None:
    return _read_card(text, "the repo's README.md cannot be read as a dataset card") if text is not None else None


def _read_card(text: str, problem: str) -> DatasetCard:
    try:
        card = DatasetCard(text)
        MetadataConfigs.from_dataset_card_data(card.data)
        DatasetInfosDict.from_dataset_card_data(card.data)
    except (ValueError, TypeError, KeyError, yaml.YAMLError) as exc:
        raise StyleprefsError(f"{problem}: {_first_line(exc)}") from None
    return card


def _sections(existing: DatasetCard | None, data: DatasetCardData, facts: dict) -> list:
    """Body sections in config order: this config's facts (rendered by the template), others kept as text."""
    kept = {m["name"]: m.group(0) for m in _SECTION.finditer(existing.text)} if existing else {}
    return [facts if n == facts["name"] else kept[n] for n, _ in _config_rows(data) if n == facts["name"] or n in kept]


def _config_facts(dataset: Path, manifest: dict, name: str, data_dir: str, manifest_path: str) -> dict:
    config = manifest["config"]
    build, editor = config["build"], config["editor"]
    files = [dataset / s["path"] for s in manifest["shards"]]
    safety = manifest.get("safety")
    return {
        "name": name,
        "data_dir": data_dir,
        "manifest_path": manifest_path,
        "style": build["style"],
        "style_description": config["style_spec"].get("description", ""),
        "style_spec": json.dumps(config["style_spec"], indent=2, sort_keys=True),
        "source": _describe_source(config["source"]),
        "editor": editor["name"],
        "editor_model": editor["model"],
        "editor_params": json.dumps(editor["params"], indent=2, sort_keys=True),
        "editor_licence": OUTPUT_LICENCES.get(editor["name"]),
        "seed": build["seed"],
        "requested": build["num_pairs"],
        "unique_captions": build["unique_captions"],
        "selection": _describe_selection(config.get("selection")),
        "shard_size": build["shard_size"],
        "styleprefs_version": manifest.get("styleprefs_version", "unknown"),
        "format_version": config.get("format_version", "unknown"),
        "counts": manifest["counts"],
        "kept": manifest["counts"]["kept"],
        "reject_reasons": sorted(manifest.get("reject_reasons", {}).items()),
        "gated": sum(_scored_rows(f) for f in files),
        "safety": _safety(safety) if safety is not None else None,
        "relabel": manifest.get("relabel"),
        "review": manifest.get("review", {}).get("counts"),
        "shards": [{"path": f"{data_dir}/{Path(s['path']).name}", "rows": s["rows"], "sha256": s["sha256"]}
                   for s in manifest["shards"]],
        "size": human_size(sum(f.stat().st_size for f in files)),
    }


def _describe_source(source: dict) -> str:
    if source.get("source") == "sample":
        return "`sample`: styleprefs' bundled synthetic scenes (offline, for testing pipelines)"
    split = f", split `{source['split']}`" if source.get("split") else ""
    if source.get("format") == "hub":
        return f"[`{source['location']}`](https://huggingface.co/datasets/{source['location']}){split}"
    count = len(source.get("files", []))
    return f"{count} local {source.get('format', '')} file{'s' if count != 1 else ''} in Pick-a-Pic v2's schema{split}"


def _describe_selection(selection: dict | None) -> str | None:
    """The build's row selection in words, None for the default (the source's order, no filters)."""
    if selection is None:
        return None
    parts = ["a seeded random sample of the source's Parquet row groups" if selection["sample"] == "random"
             else "the source's order"]
    if selection.get("models"):
        parts.append(f"both models match `{selection['models']}`")
    if selection.get("has_label"):
        parts.append("label_0 is 0 or 1 (no ties)")
    if selection.get("max_per_prompt"):
        parts.append(f"at most {selection['max_per_prompt']} rows per caption")
    return "; ".join(parts)


def _safety(safety: dict) -> dict:
    backends = [b if isinstance(b, str) else json.dumps(b, sort_keys=True) for b in safety.get("backends", [])]
    return {"backends": backends, "by_category": sorted(safety.get("quarantined_by_category", {}).items())}


def _config_list(data: DatasetCardData) -> list[dict]:
    return [{"name": n, "rows": rows} for n, rows in _config_rows(data)]


def _columns(schema: pa.Schema, relabelled: bool) -> list[dict]:
    features = Features.from_arrow_schema(schema)._to_yaml_list()
    meanings = COLUMN_MEANINGS | (RELABELLED_MEANINGS if relabelled else {})
    return [{"name": f["name"], "dtype": f.get("dtype", "struct"), "meaning": meanings.get(f["name"], "")}
            for f in features]


def _shard_schema(dataset: Path, manifest: dict) -> pa.Schema:
    paths = [dataset / s["path"] for s in manifest["shards"]]
    missing = [str(p.relative_to(dataset)) for p in paths if not p.is_file()]
    if missing or not paths:
        raise StyleprefsError(f"{dataset} is missing shard(s) {', '.join(missing) or '(none listed)'}: rebuild it with `styleprefs build`")
    return pq.read_schema(paths[0])


def _scored_rows(shard: Path) -> int:
    column = pq.read_table(shard, columns=["clip_direction"]).column(0)
    return len(column) - column.null_count



def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
